//! The JavaScript face of the engine (wasm32 only). The npm package's worker (`js/worker.js`)
//! is its one caller; requests and results cross as JSON strings, text pieces as callbacks.
//!
//! A model arrives through a [`Loader`]: the backend is chosen first, then each file's bytes
//! are pushed chunk by chunk (only the chunk is copied into wasm memory) and every tensor goes
//! to the backend (a GPU buffer, on WebGPU) as soon as its bytes are in. So no model file is
//! ever one ArrayBuffer, and the weights never sit whole in wasm memory on WebGPU.
//!
//! An [`Engine`] runs every request it is given at once, batched by the one scheduler its
//! [`Session`] holds. `generate` only queues a command and returns a Promise; one drive loop
//! (a future on the worker's event loop, started when there is work and ending when there is
//! none) owns the session while it runs: it applies the queued commands (adds, aborts) between
//! steps, steps, and routes each request's text and usage to its callback and Promise. The
//! loop never holds a borrow that the message handler needs, so requests and aborts that
//! arrive while a step runs join the next one.
//!
//! A lost GPU device ends the engine: see [`crate::lost`].
use crate::backend::WebBackend;
use crate::lost::{device_lost_error, first, Devices, Either};
use crate::plan::{DebugLimits, Metadata, Size};
use crate::session::{Added, MemoryStats, Output, Request, Session};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use tandem_core::memory::{KvSize, MemoryPlan, PlanError, PlanRequest};
use tandem_core::model::{LoraOptions, ModelOptions, ModelStream};
use tandem_core::scheduler::RequestId;
use tandem_core::{DType, Error, KvDtypes};
use tandem_cpu::CpuBackend;
use tandem_wgpu::{WgpuBackend, WgpuOptions};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen(inline_js = "
export function tandem_yield() {
    // A message through a channel is a new task without setTimeout's 4 ms clamp.
    return new Promise((resolve) => {
        const channel = new MessageChannel();
        channel.port1.onmessage = () => { channel.port1.close(); resolve(); };
        channel.port2.postMessage(null);
    });
}
")]
extern "C" {
    fn tandem_yield() -> js_sys::Promise;
}

/// Lets the event loop run one turn (pending messages, such as an interrupt, are handled).
pub(crate) async fn yield_to_event_loop() {
    let _ = JsFuture::from(tandem_yield()).await;
}

fn js_error(msg: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&msg.to_string()).into()
}

/// What `Loader.create` accepts (JSON). Every field is optional.
#[derive(Deserialize, Default)]
#[serde(default)]
struct EngineOptions {
    /// "auto" (WebGPU when present, else the CPU), "webgpu" (an error without it) or "cpu".
    backend: Option<String>,
    /// Most tokens one request may reach (capped at the model's own); `context_length` is
    /// its newer name.
    context: Option<usize>,
    context_length: Option<usize>,
    /// Most requests generating in one step (default [`DEFAULT_MAX_SEQS`]).
    max_seqs: Option<usize>,
    /// Tokens the KV cache holds across all requests. Default: as many as `context` (the
    /// memory one request at that context needs alone, shared: room for four requests of 512
    /// tokens at the default 2048). A request that finds it full waits, or is
    /// preempted and recomputed later, so only speed depends on it.
    kv_tokens: Option<usize>,
    /// The KV pool in bytes instead (as many whole blocks as fit), like the CLI's
    /// `--kv-cache-memory`.
    kv_cache_memory: Option<Size>,
    /// Most bytes the weights, KV pool and activations may take: the KV pool is shrunk to
    /// fit, or the model refused before its weights download (see [`Loader::plan`]).
    memory_budget: Option<Size>,
    /// TESTING ONLY: GPU limits smaller than the adapter's.
    debug_limits: Option<DebugLimits>,
    /// How the KV cache stores keys and values: "f32" (the default), "f16", or "q8_0" /
    /// "q4_0" blocks (about a half / a quarter of f16's memory a token).
    kv_dtype: Option<String>,
    /// The keys' and the values' storage each, overriding `kv_dtype` (e.g. keys "f16",
    /// values "q4_0"; the pairs are [`tandem_core::quant::kv::KV_PAIRS`]).
    k_dtype: Option<String>,
    v_dtype: Option<String>,
    /// Use `shader-f16` where the adapter has it (default true).
    allow_f16: Option<bool>,
    /// LoRA adapters held on the backend at once (default 0: adapters off), their largest
    /// rank (default 16) and their dtype ("f32", the default, or "f16": half the memory).
    max_loras: Option<usize>,
    max_lora_rank: Option<usize>,
    lora_dtype: Option<String>,
}

impl EngineOptions {
    /// The cache's K/V dtypes, `default`'s where the options name none.
    fn kv_dtypes(&self, default: KvDtypes) -> Result<KvDtypes, JsValue> {
        let parse = |option: &str, name: Option<&str>| {
            let Some(name) = name else { return Ok(None) };
            let kinds = tandem_core::quant::kv::KV_DTYPES;
            match kinds.iter().find(|d| d.name() == name) {
                Some(&d) => Ok(Some(d)),
                None => {
                    let names: Vec<&str> = kinds.iter().map(|d| d.name()).collect();
                    let names = names.join(", ");
                    Err(js_error(format!("{option} must be one of {names}, not '{name}'")))
                }
            }
        };
        let both = parse("kvDtype", self.kv_dtype.as_deref())?;
        let k = parse("kDtype", self.k_dtype.as_deref())?.or(both).unwrap_or(default.k);
        let v = parse("vDtype", self.v_dtype.as_deref())?.or(both).unwrap_or(default.v);
        Ok(KvDtypes { k, v })
    }

    fn lora(&self) -> Result<Option<LoraOptions>, JsValue> {
        let slots = self.max_loras.unwrap_or(0);
        let dtype = match self.lora_dtype.as_deref() {
            None | Some("f32") => DType::F32,
            Some("f16") => DType::F16,
            Some(other) => {
                return Err(js_error(format!("loraDtype must be 'f32' or 'f16', not '{other}'")))
            }
        };
        if slots == 0 {
            return match self.max_lora_rank.is_some() || self.lora_dtype.is_some() {
                true => {
                    Err(js_error("maxLoraRank and loraDtype need maxLoras (adapters held at once)"))
                }
                false => Ok(None),
            };
        }
        let rank = self.max_lora_rank.unwrap_or(16);
        if slots > LoraOptions::MAX_SLOTS || rank == 0 || rank > LoraOptions::MAX_RANK {
            return Err(js_error(format!(
                "maxLoras must be 1 to {} and maxLoraRank 1 to {} (got {slots} and {rank})",
                LoraOptions::MAX_SLOTS,
                LoraOptions::MAX_RANK
            )));
        }
        Ok(Some(LoraOptions { slots, rank, dtype }))
    }
}

const DEFAULT_MAX_SEQS: usize = 4;

/// Which backend runs the model and why (JSON from `Engine.info`).
#[derive(Serialize)]
struct BackendInfo {
    /// "webgpu" or "cpu".
    kind: &'static str,
    /// The adapter's description as the browser gives it (often empty), or "cpu".
    adapter: String,
    /// WebGPU on a software rasterizer (SwiftShader, WARP).
    software: bool,
    shader_f16: bool,
    /// Why the CPU was used under "auto" (no navigator.gpu, no adapter, ...).
    fallback_reason: Option<String>,
}

#[derive(Serialize)]
struct EngineInfo<'a> {
    backend: &'a BackendInfo,
    model: &'a crate::ModelInfo,
    /// What the memory plan chose and why (none when no plan was made).
    memory: Option<&'a MemoryPlan>,
}

fn navigator_gpu() -> Option<JsValue> {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let gpu = js_sys::Reflect::get(&navigator, &"gpu".into()).ok()?;
    (!gpu.is_undefined() && !gpu.is_null()).then_some(gpu)
}

/// The CPU backend, warmed up; `reason`: why it stands in for WebGPU.
fn cpu(reason: Option<String>) -> (WebBackend, BackendInfo) {
    // The fast mode on one thread: it runs every op on the calling thread and starts no
    // pool (wasm32-unknown-unknown cannot start threads). It cannot fail; the reference
    // mode is the fallback should that ever change.
    let mut cpu = CpuBackend::fast(1).unwrap_or_else(|_| CpuBackend::reference());
    // Only speed depends on it (see `warm`): a failure here would fail the load later.
    let _ = crate::warm::warm_up(&mut cpu);
    let info = BackendInfo {
        kind: "cpu",
        adapter: "cpu".into(),
        software: true,
        shader_f16: false,
        fallback_reason: reason,
    };
    (WebBackend::Cpu(cpu), info)
}

async fn choose_backend(opts: &EngineOptions) -> Result<(WebBackend, BackendInfo), JsValue> {
    let want = opts.backend.as_deref().unwrap_or("auto");
    match want {
        "cpu" => return Ok(cpu(None)),
        "auto" | "webgpu" => {}
        other => {
            return Err(js_error(format!(
                "unknown backend '{other}' (use 'auto', 'webgpu' or 'cpu')"
            )))
        }
    }
    let gpu =
        match navigator_gpu() {
            None => Err("navigator.gpu is missing: this browser (or this context) has no WebGPU"
                .to_string()),
            Some(_) => {
                let debug = opts.debug_limits.unwrap_or_default();
                let wopts = WgpuOptions {
                    allow_f16: opts.allow_f16.unwrap_or(true),
                    // Weights split under the simulated limit, as under a real one.
                    max_binding_override: debug.is_set().then(|| debug.cap(u64::MAX)),
                    ..WgpuOptions::default()
                };
                WgpuBackend::new(wopts).await.map_err(|e| e.to_string())
            }
        };
    match gpu {
        Ok(gpu) => {
            let adapter = gpu.adapter_info();
            let adapter =
                adapter.strip_suffix(" (BrowserWebGpu)").unwrap_or(&adapter).trim().to_string();
            let info = BackendInfo {
                kind: "webgpu",
                adapter,
                software: gpu.is_software(),
                shader_f16: gpu.uses_f16(),
                fallback_reason: None,
            };
            Ok((WebBackend::Gpu(gpu), info))
        }
        Err(reason) if want == "auto" => Ok(cpu(Some(reason))),
        Err(reason) => Err(js_error(format!("WebGPU unavailable: {reason}"))),
    }
}

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
        let meta: Metadata = serde_json::from_str(&metadata)
            .map_err(|e| js_error(format!("bad model metadata: {e}")))?;
        // With no weights there is nothing to plan: the load fails naming what is missing.
        let config = match &meta.config {
            Some(text) if !meta.files.is_empty() => {
                Some(tandem_core::ModelConfig::from_hf_json(text).map_err(js_error)?)
            }
            _ => None,
        };
        if config.is_none() && !meta.files.is_empty() && matches!(self.kv, KvSize::Bytes(_)) {
            return Err(js_error("kvCacheMemory needs the model's config.json before its weights; a GGUF file's config comes with its weights: use kvTokens"));
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
        let plan = match tandem_core::memory::plan(&request) {
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
        if let (Some(context), Some(blocks)) = (plan.context, plan.kv_blocks) {
            self.model_opts.context = context;
            self.model_opts.kv_blocks = Some(blocks);
        }
        self.stream.set_options(&self.model_opts).map_err(js_error)?;
        self.plan = Some(plan);
        Ok(())
    }

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

/// What the message handler asks of the drive loop, applied in order between steps.
enum Command {
    Add(u32, Request),
    Abort(u32),
    AbortAll,
    /// An adapter's files (PEFT's config text with its safetensors bytes, or a LoRA GGUF's
    /// bytes) to read and register under a name; then the Promise settles.
    LoadAdapter {
        name: String,
        config: Option<String>,
        weights: Vec<u8>,
        settle: Settle,
    },
    UnloadAdapter {
        name: String,
        settle: Settle,
    },
}

/// A Promise's resolve and reject, for a command that answers.
struct Settle {
    resolve: js_sys::Function,
    reject: js_sys::Function,
}

impl Settle {
    fn with(self, result: tandem_core::Result<()>) {
        match result {
            Ok(()) => drop(self.resolve.call0(&JsValue::NULL)),
            Err(e) => self.reject(js_error(e)),
        }
    }

    fn reject(self, error: JsValue) {
        let _ = self.reject.call1(&JsValue::NULL, &error);
    }
}

/// One request's way back to JavaScript.
struct Pending {
    on_text: js_sys::Function,
    resolve: js_sys::Function,
    reject: js_sys::Function,
    /// `on_text` threw: the request was aborted and rejects with this when it ends.
    error: Option<JsValue>,
}

struct Shared {
    /// Out (owned by the drive loop) while the loop runs; gone for good after `unload()`.
    session: RefCell<Option<Session>>,
    inbox: RefCell<VecDeque<Command>>,
    /// Every request not yet resolved or rejected, by the worker's id.
    pending: RefCell<HashMap<u32, Pending>>,
    driving: Cell<bool>,
    unloaded: Cell<bool>,
    /// The GPU devices the session runs on (none on the CPU).
    devices: RefCell<Devices>,
    /// Set when the drive loop found a device lost and dropped the session.
    lost: RefCell<Option<String>>,
    /// The session's memory after the last step (the drive loop owns the session meanwhile).
    memory: Cell<MemoryStats>,
}

impl Shared {
    /// Why the engine's GPU device was lost, once it has been: nothing runs any more.
    fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone().or_else(|| self.devices.borrow().reason())
    }

    /// The device is gone, and the session's buffers with it: every request and command the
    /// engine holds ends with the loss, and the session is dropped.
    fn lose(&self, session: Session, reason: &str) {
        *self.lost.borrow_mut() = Some(reason.to_string());
        drop(session);
        let commands: Vec<Command> = self.inbox.borrow_mut().drain(..).collect();
        for command in commands {
            match command {
                Command::LoadAdapter { settle, .. } | Command::UnloadAdapter { settle, .. } => {
                    settle.reject(device_lost_error(reason))
                }
                Command::Add(..) | Command::Abort(_) | Command::AbortAll => {}
            }
        }
        let ids: Vec<u32> = self.pending.borrow().keys().copied().collect();
        for js in ids {
            self.settle(js, Err(device_lost_error(reason)));
        }
        self.driving.set(false);
    }

    /// Takes request `js` out and settles its Promise: resolved with `usage`, or rejected with
    /// `error` (or with what its `on_text` threw).
    fn settle(&self, js: u32, result: Result<String, JsValue>) {
        let Some(p) = self.pending.borrow_mut().remove(&js) else { return };
        let _ = match p.error.map_or(result, Err) {
            Ok(usage) => p.resolve.call1(&JsValue::NULL, &JsValue::from_str(&usage)),
            Err(e) => p.reject.call1(&JsValue::NULL, &e),
        };
    }

    /// Hands `text` to request `js`'s callback; false if the callback threw (the request is to
    /// be aborted).
    fn emit(&self, js: u32, text: &str) -> bool {
        let Some(on_text) =
            self.pending.borrow().get(&js).filter(|p| p.error.is_none()).map(|p| p.on_text.clone())
        else {
            return true;
        };
        match on_text.call1(&JsValue::NULL, &JsValue::from_str(text)) {
            Ok(_) => true,
            Err(e) => {
                if let Some(p) = self.pending.borrow_mut().get_mut(&js) {
                    p.error = Some(e);
                }
                false
            }
        }
    }
}

fn usage_json(usage: &crate::Usage) -> Result<String, JsValue> {
    serde_json::to_string(usage).map_err(js_error)
}

/// The drive loop: owns the session while any request runs, applies the inbox before every
/// step, and gives the session back (or drops it, after `unload()`) when nothing is left.
async fn drive(shared: Rc<Shared>) {
    let Some(mut session) = shared.session.borrow_mut().take() else {
        shared.driving.set(false);
        return;
    };
    let devices = shared.devices.borrow().clone();
    // The session's id of each running request -> the worker's.
    let mut ids: HashMap<RequestId, u32> = HashMap::new();
    loop {
        loop {
            let Some(command) = shared.inbox.borrow_mut().pop_front() else { break };
            match command {
                Command::Add(js, req) => match session.add(&req) {
                    Ok(Added::Queued(id)) => {
                        ids.insert(id, js);
                    }
                    Ok(Added::Done(usage)) => shared.settle(js, usage_json(&usage)),
                    Err(e) => shared.settle(js, Err(js_error(e))),
                },
                Command::Abort(js) => {
                    if let Some((&id, _)) = ids.iter().find(|(_, &j)| j == js) {
                        session.abort(id);
                    }
                }
                Command::AbortAll => session.abort_all(),
                Command::LoadAdapter { name, config, weights, settle } => settle.with(
                    session
                        .read_adapter(config.as_deref(), weights)
                        .and_then(|a| session.add_adapter(&name, a)),
                ),
                Command::UnloadAdapter { name, settle } => {
                    settle.with(session.remove_adapter(&name))
                }
            }
        }
        if !session.has_work() {
            break;
        }
        if let Some(reason) = devices.reason() {
            return shared.lose(session, &reason);
        }
        // A read on a lost device may never settle: the loss ends the step unfinished.
        let outputs = match first(session.step(), devices.lost()).await {
            Either::Left(outputs) => outputs,
            Either::Right(reason) => return shared.lose(session, &reason),
        };
        // A step that failed as a whole (its read was refused) may be the loss, not yet
        // reported.
        let step_failed = outputs.iter().any(|(_, o)| match o {
            Output::Failed(Error::Backend { backend, .. }) => backend == "step",
            Output::Failed(Error::DeviceLost { .. }) => true,
            _ => false,
        });
        if step_failed {
            if let Some(reason) = devices.loss_behind_failure().await {
                return shared.lose(session, &reason);
            }
        }
        shared.memory.set(session.memory());
        for (id, output) in outputs {
            let Some(&js) = ids.get(&id) else { continue };
            match output {
                Output::Text(text) => {
                    if !shared.emit(js, &text) {
                        session.abort(id);
                    }
                }
                Output::Done(usage) => {
                    ids.remove(&id);
                    shared.settle(js, usage_json(&usage));
                }
                Output::Failed(e) => {
                    ids.remove(&id);
                    shared.settle(js, Err(js_error(e)));
                }
            }
        }
    }
    shared.memory.set(session.memory());
    // No await since the inbox was found empty: nothing can have been queued meanwhile.
    shared.driving.set(false);
    if !shared.unloaded.get() {
        *shared.session.borrow_mut() = Some(session);
    }
}

#[wasm_bindgen]
pub struct Engine {
    shared: Rc<Shared>,
    info: String,
}

#[wasm_bindgen]
impl Engine {
    /// JSON: `{ backend: { kind, adapter, software, shader_f16, fallback_reason }, model: {...} }`.
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> String {
        self.info.clone()
    }

    /// Runs request `id` (the worker's, unique among those in flight; `request` is JSON, see
    /// `Request`) alongside any others, calling `on_text(piece)` for each piece of its text.
    /// Resolves to its usage as JSON; rejects with an Error.
    pub fn generate(&self, id: u32, request: String, on_text: js_sys::Function) -> js_sys::Promise {
        let shared = &self.shared;
        let req: Request = match serde_json::from_str(&request) {
            Ok(req) => req,
            Err(e) => return js_sys::Promise::reject(&js_error(format!("bad request: {e}"))),
        };
        if shared.unloaded.get() {
            return js_sys::Promise::reject(&js_error("the engine was unloaded"));
        }
        if let Some(reason) = shared.lost_reason() {
            return js_sys::Promise::reject(&device_lost_error(&reason));
        }
        if shared.pending.borrow().contains_key(&id) {
            return js_sys::Promise::reject(&js_error(format!(
                "request id {id} is already in flight"
            )));
        }
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            shared
                .pending
                .borrow_mut()
                .insert(id, Pending { on_text: on_text.clone(), resolve, reject, error: None });
        });
        self.send(Command::Add(id, req));
        promise
    }

    /// JSON: the model's memory now (see [`MemoryStats`]): weights, the KV pool's bytes in
    /// total, in use (blocks held by requests x bytes a block) and free, and activations.
    pub fn stats(&self) -> Result<String, JsValue> {
        if self.shared.unloaded.get() {
            return Err(js_error("the engine was unloaded"));
        }
        if let Some(session) = self.shared.session.borrow().as_ref() {
            self.shared.memory.set(session.memory());
        }
        serde_json::to_string(&self.shared.memory.get()).map_err(js_error)
    }

    /// Resolves with the reason (a string) when the GPU device the engine runs on is lost;
    /// never on the CPU. The engine then runs nothing more: load the model again.
    pub fn device_lost(&self) -> js_sys::Promise {
        let devices = self.shared.devices.borrow().clone();
        wasm_bindgen_futures::future_to_promise(async move {
            Ok(JsValue::from_str(&devices.lost().await))
        })
    }

    /// TESTING ONLY: destroys the engine's GPU device, as a driver reset would take it away
    /// (`device.destroy()`). An error on the CPU backend, which has no device.
    pub fn debug_lose_device(&self) -> Result<(), JsValue> {
        match self.shared.devices.borrow().destroy_for_testing() {
            true => Ok(()),
            false => Err(js_error("the engine runs on the CPU: it has no GPU device to lose")),
        }
    }

    /// Asks request `id` to stop after its current step; it then resolves with finish_reason
    /// "interrupted". The others run on. Does nothing when it is not in flight.
    pub fn abort(&self, id: u32) {
        if self.shared.pending.borrow().contains_key(&id) {
            self.send(Command::Abort(id));
        }
    }

    /// [`Engine::abort`] for every request in flight.
    pub fn interrupt(&self) {
        if self.shared.driving.get() {
            self.send(Command::AbortAll);
        }
    }

    /// Frees the model (GPU buffers included). Requests in flight are interrupted and the
    /// model freed once they have ended. Later calls to `generate` reject.
    pub fn unload(&self) {
        self.shared.unloaded.set(true);
        if self.shared.driving.get() {
            self.send(Command::AbortAll);
        } else {
            self.shared.session.borrow_mut().take();
        }
    }

    /// Speculative decoding for the requests that start from now on: `draft` (another engine,
    /// freshly loaded with the same tokenizer, which this one takes over) proposes up to
    /// `tokens` tokens a step, or without it n-gram drafting from each request's own text.
    /// The output stays this model's own.
    pub fn speculate(&self, draft: Option<Engine>, tokens: u32) -> Result<(), JsValue> {
        if self.shared.driving.get() {
            return Err(js_error("speculation can only be set while no request is in flight"));
        }
        let draft = match draft {
            Some(d) => {
                if d.shared.driving.get() {
                    return Err(js_error("the draft engine has requests in flight"));
                }
                d.shared.unloaded.set(true);
                self.shared.devices.borrow_mut().join(&d.shared.devices.borrow());
                let taken = d.shared.session.borrow_mut().take();
                Some(taken.ok_or_else(|| js_error("the draft engine was unloaded"))?)
            }
            None => None,
        };
        let mut session = self.shared.session.borrow_mut();
        let session = session.as_mut().ok_or_else(|| js_error("the engine was unloaded"))?;
        session.speculate(draft, tokens as usize).map_err(js_error)
    }

    /// Reads a LoRA adapter and registers it under `name`, between two steps (requests in
    /// flight go on): `config` is PEFT's `adapter_config.json` text with `weights` its
    /// `adapter_model.safetensors`, or without `config` `weights` is a LoRA GGUF. Requests
    /// then name it in `adapter` or `model`. Resolves once it is registered.
    pub fn load_adapter(
        &self,
        name: String,
        config: Option<String>,
        weights: &js_sys::Uint8Array,
    ) -> js_sys::Promise {
        self.answer(|settle| Command::LoadAdapter {
            name,
            config,
            weights: weights.to_vec(),
            settle,
        })
    }

    /// Unregisters adapter `name`: new requests naming it are refused; those running finish.
    pub fn unload_adapter(&self, name: String) -> js_sys::Promise {
        self.answer(|settle| Command::UnloadAdapter { name, settle })
    }

    /// A Promise settled by the drive loop when it applies the command `make` builds.
    fn answer(&self, make: impl FnOnce(Settle) -> Command) -> js_sys::Promise {
        if self.shared.unloaded.get() {
            return js_sys::Promise::reject(&js_error("the engine was unloaded"));
        }
        if let Some(reason) = self.shared.lost_reason() {
            return js_sys::Promise::reject(&device_lost_error(&reason));
        }
        let mut settle = None;
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            settle = Some(Settle { resolve, reject });
        });
        if let Some(settle) = settle {
            self.send(make(settle));
        }
        promise
    }

    /// Queues `command` for the drive loop, starting the loop if it is not running.
    fn send(&self, command: Command) {
        self.shared.inbox.borrow_mut().push_back(command);
        if !self.shared.driving.replace(true) {
            wasm_bindgen_futures::spawn_local(drive(self.shared.clone()));
        }
    }
}
