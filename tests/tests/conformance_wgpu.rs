//! The WebGPU backend against the CPU reference: with native shader-f16 where the adapter has
//! it, with the packed-u32 f16 path browsers without shader-f16 run, and with the matrix-vector
//! kernel a GPU takes (lanes per row) where the adapter is a CPU rasterizer that would take
//! the row-per-invocation one. No adapter: SKIP.

use tandem_wgpu::{WgpuBackend, WgpuOptions};

fn make(allow_f16: bool, row_matvec: Option<bool>) -> Result<WgpuBackend, String> {
    pollster::block_on(WgpuBackend::new(WgpuOptions {
        allow_f16,
        row_matvec,
        ..Default::default()
    }))
    .map_err(|e| e.to_string())
}

tandem_tests::conformance_suite!(wgpu_f16, || make(true, None));
tandem_tests::conformance_suite!(wgpu_packed, || make(false, None));
tandem_tests::conformance_suite!(wgpu_lanes, || make(false, Some(false)));
