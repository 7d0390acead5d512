//! A model's files into a new engine, pushed chunk by chunk.
use super::choose::{choose_backend, cpu, BackendInfo, EngineInfo};
use super::drive::Shared;
use super::engine::Engine;
use super::options::{EngineOptions, DEFAULT_MAX_SEQS};
use super::{js_error, tandem_yield};
use crate::backend::WebBackend;
use crate::lost::Devices;
use crate::plan::Metadata;
use crate::session::Session;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use tandem_core::memory::{KvSize, MemoryPlan, PlanError, PlanRequest};
use tandem_core::model::{LoraOptions, ModelOptions, ModelStream};
use wasm_bindgen::prelude::*;

/// Loads a model pushed file by file, chunk by chunk: `Loader.create(options, onProgress)`,
/// then per file `begin_file(name, size)`, `push(chunk)` (await what it returns, when it returns
/// something), `end_file()`; then `finish()` gives the `Engine`. Files of an HF checkpoint go
/// config.json and tokenizer files first, `*.safetensors` last.
#[wasm_bindgen]
pub struct Loader {
    stream: ModelStream<WebBackend>,
    backend: BackendInfo,
    on_progress: Option<js_sys::Function>,
    /// Tensors uploaded at the last progress report.
    reported: usize,
    /// Where a chunk is copied into wasm memory; reused, so it is allocated once.
    scratch: Vec<u8>,
    max_seqs: usize,
    lora: Option<LoraOptions>,
    devices: Devices,
    /// What the memory plan starts from: the options as given.
    model_opts: ModelOptions,
    kv: KvSize,
    budget: Option<u64>,
    /// The GPU's largest binding (under any `debug_limits`); none on the CPU.
    max_binding: Option<u64>,
    /// "auto": a GPU buffer too large falls back to the CPU rather than failing.
    auto: bool,
    plan: Option<MemoryPlan>,
}

#[wasm_bindgen]
impl Loader {
    /// Chooses the backend. `options` is JSON (see `EngineOptions`); `on_progress` is called
    /// as `(stage, loaded, total)` with stage "upload" and tensor counts.
    pub async fn create(
        options: String,
        on_progress: Option<js_sys::Function>,
    ) -> Result<Loader, JsValue> {
        let opts: EngineOptions = if options.is_empty() {
            EngineOptions::default()
        } else {
            serde_json::from_str(&options)
                .map_err(|e| js_error(format!("bad engine options: {e}")))?
        };
        let defaults = ModelOptions::default();
        let context = crate::plan::context(opts.context, opts.context_length).map_err(js_error)?;
        let context = context.unwrap_or(defaults.context);
        let max_seqs = opts.max_seqs.unwrap_or(DEFAULT_MAX_SEQS);
        if max_seqs == 0 {
            return Err(js_error("maxSeqs must be at least 1"));
        }
        let kv = crate::plan::kv_size(opts.kv_tokens, opts.kv_cache_memory.as_ref())
            .map_err(js_error)?;
        let budget = match &opts.memory_budget {
            Some(b) => Some(b.bytes("memoryBudget").map_err(js_error)?),
            None => None,
        };
        let lora = opts.lora()?;
        let kv_dtypes = opts.kv_dtypes(defaults.kv_dtypes)?;
        let (backend, info) = choose_backend(&opts).await?;
        let max_binding = match &backend {
            WebBackend::Gpu(gpu) => {
                Some(opts.debug_limits.unwrap_or_default().cap(gpu.max_binding()))
            }
            _ => None,
        };
        let devices = Devices::new(backend.watch());
        // Without a plan (`Loader::plan`), the pool the options ask for.
        let kv_tokens = match kv {
            KvSize::Tokens(n) => n,
            _ => context,
        };
        let model_opts = ModelOptions {
            context,
            kv_dtypes,
            kv_blocks: Some(kv_tokens.div_ceil(defaults.block_size)),
            ..defaults
        };
        Ok(Loader {
            stream: ModelStream::new(backend, &model_opts),
            backend: info,
            on_progress,
            reported: 0,
            scratch: Vec::new(),
            max_seqs,
            lora,
            devices,
            model_opts,
            kv,
            budget,
            max_binding,
            auto: opts.backend.as_deref().unwrap_or("auto") == "auto",
            plan: None,
        })
    }

    /// Plans the model's memory before its weights arrive, from `metadata` (JSON: `{ config,
    /// files: [{ name, size }] }`, see [`Metadata`]): the KV pool and context are shrunk to
    /// fit `memoryBudget` and the GPU's binding limit, a GPU buffer that cannot fit moves an
    /// "auto" engine to the CPU, and what cannot fit at all is refused with the numbers.
    /// Call it before the first weight file begins; `info.memory` tells what was chosen.
    pub fn plan(&mut self, metadata: String) -> Result<(), JsValue> {
        let meta = parse_metadata(&metadata)?;
        // With no weights there is nothing to plan: the load fails naming what is missing.
        let config = match &meta.config {
            Some(text) if !meta.files.is_empty() => {
                Some(tandem_core::ModelConfig::from_hf_json(text).map_err(js_error)?)
            }
            _ => None,
        };
        self.plan_with(meta, config)
    }

    /// Whether the plan needs the model's config before its weights: a `memoryBudget`, a KV
    /// pool given in bytes, or a GPU whose binding limit the KV pool and scratch must fit (a
    /// GGUF file's header is then read ahead of its download).
    #[wasm_bindgen(getter)]
    pub fn plans_ahead(&self) -> bool {
        self.budget.is_some() || matches!(self.kv, KvSize::Bytes(_)) || self.max_binding.is_some()
    }

    /// As [`Loader::plan`] for one GGUF file (`metadata.files` names it), with its config read
    /// from `header`, the file's first bytes: returns how many bytes the header needs when
    /// `header` is too short (nothing is planned then: call again with at least that many), or
    /// undefined once planned. Headers over 64 MiB (a corrupt file) are refused.
    pub fn plan_gguf(&mut self, metadata: String, header: &[u8]) -> Result<Option<f64>, JsValue> {
        use tandem_core::loader::gguf_scan::{config_from_prefix, PrefixConfig};
        let meta = parse_metadata(&metadata)?;
        let [file] = meta.files.as_slice() else {
            return Err(js_error("plan_gguf plans one GGUF file"));
        };
        let len = file.size.filter(|s| s.is_finite() && *s >= 0.0).map(|s| s as u64);
        let config = match config_from_prefix(&file.name, header, len, GGUF_HEADER_LIMIT)
            .map_err(js_error)?
        {
            PrefixConfig::Need(n) => return Ok(Some(n as f64)),
            PrefixConfig::Config(c) => *c,
        };
        self.plan_with(meta, Some(config)).map(|()| None)
    }
}

/// The largest GGUF header [`Loader::plan_gguf`] reads: a vocabulary of a few hundred thousand
/// tokens takes a few MiB; tens of MiB is a corrupt file.
const GGUF_HEADER_LIMIT: usize = 64 << 20;

fn parse_metadata(text: &str) -> Result<Metadata, JsValue> {
    serde_json::from_str(text).map_err(|e| js_error(format!("bad model metadata: {e}")))
}

impl Loader {
    fn plan_with(
        &mut self,
        meta: Metadata,
        config: Option<tandem_core::ModelConfig>,
    ) -> Result<(), JsValue> {
        if config.is_none() && !meta.files.is_empty() && matches!(self.kv, KvSize::Bytes(_)) {
            let why = meta.notes.iter().map(|n| format!(" ({n})")).collect::<String>();
            return Err(js_error(format!("kvCacheMemory needs the model's config before its weights: config.json, or a GGUF file's header{why}; else use kvTokens")));
        }
        // Without a budget the sizes are not asked for (no request just for them): the
        // weights are counted as they load (see `finish`).
        let weights_bytes = match meta.weights_bytes() {
            Ok(n) => n,
            Err(_) if self.budget.is_none() => 0,
            Err(e) => return Err(js_error(e)),
        };
        let o = &self.model_opts;
        let request = PlanRequest {
            config: config.as_ref(),
            weights_bytes,
            context: o.context,
            kv: self.kv,
            kv_dtypes: o.kv_dtypes,
            block_size: o.block_size,
            max_step_tokens: o.max_step_tokens,
            max_seqs: self.max_seqs,
            budget: self.budget,
            max_binding: self.max_binding,
        };
        let fits = |e: PlanError| js_error(format!("the model does not fit: {e}"));
        let mut plan = match tandem_core::memory::plan(&request) {
            Ok(plan) => plan,
            Err(e @ PlanError::BufferTooLarge { .. }) if self.auto => {
                let mut plan =
                    tandem_core::memory::plan(&PlanRequest { max_binding: None, ..request })
                        .map_err(fits)?;
                let reason = format!("{e}; running on the CPU");
                plan.notes.push(reason.clone());
                let (backend, info) = cpu(Some(reason));
                self.devices = Devices::new(backend.watch());
                // The GPU backend goes with the old stream: nothing was uploaded to it yet.
                self.stream = ModelStream::new(backend, &self.model_opts);
                self.backend = info;
                self.max_binding = None;
                plan
            }
            Err(e) => return Err(fits(e)),
        };
        plan.notes.extend(meta.notes);
        if let (Some(context), Some(blocks)) = (plan.context, plan.kv_blocks) {
            self.model_opts.context = context;
            self.model_opts.kv_blocks = Some(blocks);
        }
        self.stream.set_options(&self.model_opts).map_err(js_error)?;
        self.plan = Some(plan);
        Ok(())
    }
}

#[wasm_bindgen]
impl Loader {
    /// Starts the file `name` (a File's name, a URL's last segment), of `size` bytes when
    /// known (pass `undefined` otherwise).
    pub fn begin_file(&mut self, name: String, size: Option<f64>) -> Result<(), JsValue> {
        let size = size.filter(|s| s.is_finite() && *s >= 0.0).map(|s| s as u64);
        self.stream.begin_file(&name, size).map_err(js_error)
    }

    /// The next bytes of the open file. Returns a Promise when tensors were uploaded (await it:
    /// it lets the event loop run, so progress and other messages get through), else undefined.
    pub fn push(&mut self, chunk: &js_sys::Uint8Array) -> Result<JsValue, JsValue> {
        self.scratch.resize(chunk.length() as usize, 0);
        chunk.copy_to(&mut self.scratch);
        self.stream.push(&self.scratch).map_err(js_error)?;
        match self.stream.progress() {
            Some((done, total)) if done > self.reported => {
                self.reported = done;
                if let Some(f) = &self.on_progress {
                    let _ = f.call3(
                        &JsValue::NULL,
                        &"upload".into(),
                        &(done as f64).into(),
                        &(total as f64).into(),
                    );
                }
                Ok(tandem_yield().into())
            }
            _ => Ok(JsValue::UNDEFINED),
        }
    }

    /// The open file has ended: every tensor it lists must have arrived.
    pub fn end_file(&mut self) -> Result<(), JsValue> {
        self.stream.end_file().map_err(js_error)
    }

    /// The engine, once every file is in. Errors name what is missing.
    pub fn finish(self) -> Result<Engine, JsValue> {
        let Loader { stream, backend, max_seqs, lora, devices, plan, kv, budget, .. } = self;
        if plan.is_none() && (budget.is_some() || matches!(kv, KvSize::Bytes(_))) {
            return Err(js_error(
                "memoryBudget and kvCacheMemory need Loader.plan before the weights",
            ));
        }
        let session =
            Session::new(stream.finish().map_err(js_error)?, max_seqs, lora).map_err(js_error)?;
        let model = &session.info;
        let mut plan = plan;
        if let Some(p) = plan.as_mut().filter(|p| p.weights_bytes == 0) {
            p.weights_bytes = model.weight_bytes as u64;
            p.total_bytes += p.weights_bytes;
        }
        let memory = plan.as_ref();
        let info = serde_json::to_string(&EngineInfo { backend: &backend, model, memory })
            .map_err(js_error)?;
        let memory = Cell::new(session.memory());
        let shared = Shared {
            session: RefCell::new(Some(session)),
            inbox: RefCell::new(VecDeque::new()),
            pending: RefCell::new(HashMap::new()),
            driving: Cell::new(false),
            unloaded: Cell::new(false),
            devices: RefCell::new(devices),
            lost: RefCell::new(None),
            memory,
        };
        Ok(Engine { shared: Rc::new(shared), info })
    }
}
