//! LoRA adapters on an NVIDIA GPU against PEFT (see `tandem_tests::lora`). No GPU, driver or
//! NVRTC: SKIP with the reason.

use tandem_cuda::{CudaBackend, CudaOptions};
use tandem_tests::lora_smollm::Depth;

tandem_tests::lora_suite!(cuda, || CudaBackend::new(CudaOptions::default())
    .map_err(|e| e.to_string()));

/// SmolLM2 with two PEFT adapters against PEFT (see `tandem_tests::lora_smollm`).
#[test]
fn smollm2_against_peft() {
    tandem_tests::lora_smollm::run("smollm2_against_peft", Depth::Full, || {
        CudaBackend::new(CudaOptions::default()).map_err(|e| e.to_string())
    });
}
