//! The shared conformance cases (`tandem-tests`) in the page: the WebGPU backend against the
//! CPU reference, compared exactly as the native harness compares them. Built only with
//! `--features conformance` (scripts/build-conformance.sh), for tests/browser/conformance.test.mjs.

use tandem_core::Backend;
use tandem_tests::check_backend_op;
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
    let summary = check_backend_op(&mut backend, "browser", &op, keep)
        .await
        .map_err(|e| JsError::new(&e))?;
    Ok(format!(
        "{{\"op\":\"{op}\",\"backend\":\"{name}\",\"cases\":{},\"worst_nmse\":{:e}}}",
        summary.cases, summary.worst_nmse
    ))
}

/// The names of `op`'s conformance cases, one per line: what `filter` can pick from.
#[wasm_bindgen]
pub fn conformance_cases(op: String) -> String {
    tandem_tests::cases_for(&op)
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}
