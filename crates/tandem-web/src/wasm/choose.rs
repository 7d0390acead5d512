//! Which backend a model runs on: WebGPU when the browser has it (and the options allow), else
//! the CPU backend.
use super::js_error;
use super::options::EngineOptions;
use crate::backend::WebBackend;
use serde::Serialize;
use tandem_core::memory::MemoryPlan;
use tandem_cpu::CpuBackend;
use tandem_wgpu::{WgpuBackend, WgpuOptions};
use wasm_bindgen::prelude::*;

/// Which backend runs the model and why (JSON from `Engine.info`).
#[derive(Serialize)]
pub(super) struct BackendInfo {
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
pub(super) struct EngineInfo<'a> {
    pub(super) backend: &'a BackendInfo,
    pub(super) model: &'a crate::ModelInfo,
    /// What the memory plan chose and why (none when no plan was made).
    pub(super) memory: Option<&'a MemoryPlan>,
}

fn navigator_gpu() -> Option<JsValue> {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let gpu = js_sys::Reflect::get(&navigator, &"gpu".into()).ok()?;
    (!gpu.is_undefined() && !gpu.is_null()).then_some(gpu)
}

/// The CPU backend, warmed up; `reason`: why it stands in for WebGPU.
pub(super) fn cpu(reason: Option<String>) -> (WebBackend, BackendInfo) {
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

pub(super) async fn choose_backend(
    opts: &EngineOptions,
) -> Result<(WebBackend, BackendInfo), JsValue> {
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
