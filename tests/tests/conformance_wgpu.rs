//! The WebGPU backend against the CPU reference: with native shader-f16 where the adapter has
//! it, and with the packed-u32 f16 path browsers without shader-f16 run. No adapter: SKIP.

use tandem_wgpu::{WgpuBackend, WgpuOptions};

fn make(allow_f16: bool) -> Result<WgpuBackend, String> {
    pollster::block_on(WgpuBackend::new(WgpuOptions {
        allow_f16,
        ..Default::default()
    }))
    .map_err(|e| e.to_string())
}

tandem_tests::conformance_suite!(wgpu_f16, || make(true));
tandem_tests::conformance_suite!(wgpu_packed, || make(false));
