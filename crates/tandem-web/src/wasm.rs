//! The JavaScript face of the engine (wasm32 only). The npm package's worker (`js/worker.js`)
//! is its one caller; requests and results cross as JSON strings, text pieces as callbacks.
//!
//! A model arrives through a [`Loader`]: the backend is chosen first, then each file's bytes
//! are pushed chunk by chunk (only the chunk is copied into wasm memory) and every tensor goes
//! to the backend (a GPU buffer, on WebGPU) as soon as its bytes are in. So no model file is
//! ever one ArrayBuffer, and the weights never sit whole in wasm memory on WebGPU.
//!
//! `generate` returns a Promise and holds no borrow of the `Engine` while it runs, so
//! `interrupt()` and `unload()` can be called from the worker's message handler meanwhile: the
//! state lives in an `Rc` the running generation shares, never behind `&mut self`.

use crate::backend::WebBackend;
use crate::session::{Request, Session};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use tandem_core::model::{ModelOptions, ModelStream};
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
    /// Tokens of context to allocate KV cache for (capped at the model's own).
    context: Option<usize>,
    /// Use `shader-f16` where the adapter has it (default true).
    allow_f16: Option<bool>,
}

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
}

struct Shared {
    session: RefCell<Option<Session>>,
    interrupt: Cell<bool>,
    busy: Cell<bool>,
    /// `unload()` came while a generation held the session: drop it when that ends.
    unload_pending: Cell<bool>,
}

#[wasm_bindgen]
pub struct Engine {
    shared: Rc<Shared>,
    info: String,
}

fn navigator_gpu() -> Option<JsValue> {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let gpu = js_sys::Reflect::get(&navigator, &"gpu".into()).ok()?;
    (!gpu.is_undefined() && !gpu.is_null()).then_some(gpu)
}

async fn choose_backend(opts: &EngineOptions) -> Result<(WebBackend, BackendInfo), JsValue> {
    let want = opts.backend.as_deref().unwrap_or("auto");
    let cpu = |reason: Option<String>| {
        // The fast mode on one thread: it runs every op on the calling thread and starts no
        // pool (wasm32-unknown-unknown cannot start threads). It cannot fail; the reference
        // mode is the fallback should that ever change.
        (WebBackend::Cpu(CpuBackend::fast(1).unwrap_or_else(|_| CpuBackend::reference())), BackendInfo { kind: "cpu", adapter: "cpu".into(), software: true, shader_f16: false, fallback_reason: reason })
    };
    match want {
        "cpu" => return Ok(cpu(None)),
        "auto" | "webgpu" => {}
        other => return Err(js_error(format!("unknown backend '{other}' (use 'auto', 'webgpu' or 'cpu')"))),
    }
    let gpu = match navigator_gpu() {
        None => Err("navigator.gpu is missing: this browser (or this context) has no WebGPU".to_string()),
        Some(_) => {
            let wopts = WgpuOptions { allow_f16: opts.allow_f16.unwrap_or(true), ..WgpuOptions::default() };
            WgpuBackend::new(wopts).await.map_err(|e| e.to_string())
        }
    };
    match gpu {
        Ok(gpu) => {
            let adapter = gpu.adapter_info();
            let adapter = adapter.strip_suffix(" (BrowserWebGpu)").unwrap_or(&adapter).trim().to_string();
            let info = BackendInfo { kind: "webgpu", adapter, software: gpu.is_software(), shader_f16: gpu.uses_f16(), fallback_reason: None };
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
}

#[wasm_bindgen]
impl Loader {
    /// Chooses the backend. `options` is JSON (see `EngineOptions`); `on_progress` is called
    /// as `(stage, loaded, total)` with stage "upload" and tensor counts.
    pub async fn create(options: String, on_progress: Option<js_sys::Function>) -> Result<Loader, JsValue> {
        let opts: EngineOptions = if options.is_empty() {
            EngineOptions::default()
        } else {
            serde_json::from_str(&options).map_err(|e| js_error(format!("bad engine options: {e}")))?
        };
        let (backend, info) = choose_backend(&opts).await?;
        let model_opts = ModelOptions { context: opts.context.unwrap_or(ModelOptions::default().context), ..ModelOptions::default() };
        Ok(Loader { stream: ModelStream::new(backend, &model_opts), backend: info, on_progress, reported: 0, scratch: Vec::new() })
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
                    let _ = f.call3(&JsValue::NULL, &"upload".into(), &(done as f64).into(), &(total as f64).into());
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
        let Loader { stream, backend, .. } = self;
        let session = Session::new(stream.finish().map_err(js_error)?).map_err(js_error)?;
        let info = serde_json::to_string(&EngineInfo { backend: &backend, model: &session.info }).map_err(js_error)?;
        let shared = Shared { session: RefCell::new(Some(session)), interrupt: Cell::new(false), busy: Cell::new(false), unload_pending: Cell::new(false) };
        Ok(Engine { shared: Rc::new(shared), info })
    }
}

#[wasm_bindgen]
impl Engine {
    /// JSON: `{ backend: { kind, adapter, software, shader_f16, fallback_reason }, model: {...} }`.
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> String {
        self.info.clone()
    }

    /// Runs one request (JSON, see `Request`), calling `on_text(piece)` for each piece of text.
    /// Resolves to the usage as JSON; rejects with an Error. One generation at a time.
    pub fn generate(&self, request: String, on_text: js_sys::Function) -> js_sys::Promise {
        let shared = self.shared.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let req: Request = serde_json::from_str(&request).map_err(|e| js_error(format!("bad request: {e}")))?;
            if shared.busy.get() {
                return Err(js_error("a generation is already running on this engine"));
            }
            let mut session = shared.session.borrow_mut().take().ok_or_else(|| js_error("the engine was unloaded"))?;
            shared.busy.set(true);
            shared.interrupt.set(false);
            let callback_error: RefCell<Option<JsValue>> = RefCell::new(None);
            let mut emit = |text: &str| {
                if callback_error.borrow().is_none() {
                    if let Err(e) = on_text.call1(&JsValue::NULL, &JsValue::from_str(text)) {
                        *callback_error.borrow_mut() = Some(e);
                    }
                }
            };
            let stop = || shared.interrupt.get() || callback_error.borrow().is_some();
            let result = session.generate(&req, &mut emit, &stop).await;
            shared.busy.set(false);
            if shared.unload_pending.replace(false) {
                drop(session);
            } else {
                *shared.session.borrow_mut() = Some(session);
            }
            if let Some(e) = callback_error.into_inner() {
                return Err(e);
            }
            let usage = result.map_err(js_error)?;
            Ok(JsValue::from_str(&serde_json::to_string(&usage).map_err(js_error)?))
        })
    }

    /// Asks a running generation to stop after the current token; it then resolves with
    /// finish_reason "interrupted". Does nothing when none runs.
    pub fn interrupt(&self) {
        self.shared.interrupt.set(true);
    }

    /// Frees the model (GPU buffers included). A running generation is interrupted and the
    /// model freed when it returns. Later calls to `generate` reject.
    pub fn unload(&self) {
        if self.shared.busy.get() {
            self.shared.interrupt.set(true);
            self.shared.unload_pending.set(true);
        } else {
            self.shared.session.borrow_mut().take();
        }
    }
}
