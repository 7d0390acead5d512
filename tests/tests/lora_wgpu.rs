//! LoRA adapters on WebGPU against PEFT (see `tandem_tests::lora`). No adapter: SKIP with the
//! reason.

use tandem_tests::lora_smollm::Depth;
use tandem_wgpu::{WgpuBackend, WgpuOptions};

tandem_tests::lora_suite!(wgpu, || pollster::block_on(WgpuBackend::new(WgpuOptions::default()))
    .map_err(|e| e.to_string()));

/// SmolLM2 with two PEFT adapters against PEFT (see `tandem_tests::lora_smollm`): logits and
/// the first tokens (lavapipe takes 6 minutes for the whole check; the batch is the families').
#[test]
fn smollm2_against_peft() {
    tandem_tests::lora_smollm::run("smollm2_against_peft", Depth::Tokens(6), || {
        pollster::block_on(WgpuBackend::new(WgpuOptions::default())).map_err(|e| e.to_string())
    });
}
