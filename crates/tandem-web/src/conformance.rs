//! The shared conformance cases (`tandem-tests`) in the page: the WebGPU backend and the CPU
//! fallback (fast mode, simd128) against the CPU reference, compared exactly as the native
//! harness compares them. Built only with `--features conformance` (scripts/build-conformance.sh),
//! for tests/browser/conformance.test.mjs and tests/browser/cpu-fallback.test.mjs.

use tandem_core::Backend;
use tandem_cpu::CpuBackend;
use tandem_tests::{check_backend_op, check_batch_invariance};
use tandem_wgpu::{WgpuBackend, WgpuOptions};
use wasm_bindgen::prelude::*;

/// Runs the cases of `op` (all of them, or those whose names contain one of the
/// comma-separated substrings in `filter`) on a fresh WebGPU backend with default options
/// against `CpuBackend::reference()`. Resolves to a JSON summary
/// `{"op","backend","cases","worst_nmse"}`; rejects with every failing case listed.
#[wasm_bindgen]
pub async fn run_conformance(op: String, filter: Option<String>) -> Result<String, JsError> {
    let mut backend = WgpuBackend::new(WgpuOptions::default())
        .await
        .map_err(|e| JsError::new(&format!("WebGPU backend: {e}")))?;
    check(&mut backend, op, filter).await
}

/// [`run_conformance`] on the browser's CPU fallback: the CPU backend's fast mode on one
/// thread, whose simd128 kernels exist only in the wasm build, so only the page tests them.
#[wasm_bindgen]
pub async fn run_conformance_cpu(op: String, filter: Option<String>) -> Result<String, JsError> {
    let mut backend =
        CpuBackend::fast(1).map_err(|e| JsError::new(&format!("CPU backend: {e}")))?;
    check(&mut backend, op, filter).await
}

/// Batch invariance of `op` ("matmul" or "attention") on the browser's CPU fallback: every
/// request's rows inside a batch equal, bit for bit, its rows alone. Resolves to
/// `{"op","backend","batches"}`; rejects with every difference listed.
#[wasm_bindgen]
pub async fn run_invariance_cpu(op: String) -> Result<String, JsError> {
    let mut backend =
        CpuBackend::fast(1).map_err(|e| JsError::new(&format!("CPU backend: {e}")))?;
    let name = backend.name().to_string();
    let batches = check_batch_invariance(&mut backend, &op).await.map_err(|e| JsError::new(&e))?;
    Ok(format!("{{\"op\":\"{op}\",\"backend\":\"{name}\",\"batches\":{batches}}}"))
}

/// The CPU fallback's self-check of kernel parts the cases cannot reach
/// (`tandem_cpu::wasm_self_check`): `{"f16_patterns":65536}`, or rejects with the first
/// difference.
#[wasm_bindgen]
pub fn run_self_check_cpu() -> Result<String, JsError> {
    tandem_cpu::wasm_self_check().map_err(|e| JsError::new(&e))?;
    Ok("{\"f16_patterns\":65536}".into())
}

async fn check<B: Backend>(
    backend: &mut B,
    op: String,
    filter: Option<String>,
) -> Result<String, JsError> {
    let name = backend.name().to_string();
    let wanted: Vec<String> = filter
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let keep = |case: &str| wanted.is_empty() || wanted.iter().any(|w| case.contains(w.as_str()));
    let summary =
        check_backend_op(backend, "browser", &op, keep).await.map_err(|e| JsError::new(&e))?;
    Ok(format!(
        "{{\"op\":\"{op}\",\"backend\":\"{name}\",\"cases\":{},\"worst_nmse\":{:e}}}",
        summary.cases, summary.worst_nmse
    ))
}

/// The names of `op`'s conformance cases, one per line: what `filter` can pick from.
#[wasm_bindgen]
pub fn conformance_cases(op: String) -> String {
    tandem_tests::cases_for(&op).iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join("\n")
}
