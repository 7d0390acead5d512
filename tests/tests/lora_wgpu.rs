//! LoRA adapters on WebGPU against PEFT (see `tandem_tests::lora`). No adapter: SKIP with the
//! reason.

use tandem_wgpu::{WgpuBackend, WgpuOptions};

tandem_tests::lora_suite!(wgpu, || pollster::block_on(WgpuBackend::new(WgpuOptions::default()))
    .map_err(|e| e.to_string()));
