//! Every model family on WebGPU, against transformers (see `tandem_tests::families`), with
//! native f16 allowed and with the packed f16 path. No adapter: SKIP with the reason.

use tandem_wgpu::{WgpuBackend, WgpuOptions};

fn backend(allow_f16: bool) -> Result<WgpuBackend, String> {
    pollster::block_on(WgpuBackend::new(WgpuOptions { allow_f16, ..Default::default() }))
        .map_err(|e| e.to_string())
}

tandem_tests::families_suite!(wgpu_f16, || backend(true));
tandem_tests::families_suite!(wgpu_packed, || backend(false));
