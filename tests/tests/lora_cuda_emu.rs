//! LoRA adapters through the CUDA kernels without a GPU (tandem-cuda's emulator, see
//! conformance_cuda_emu.rs): whole prompt steps recorded by the CUDA backend's code, with
//! PEFT adapters on every projection (Qwen3, Phi-3's fused projections, Mistral), give PEFT's
//! logits at the prompt's first row. The emulator runs each CUDA thread as an OS thread, so
//! one token (18 take a minute a family); the LoRA kernels' multi-row cases are in the
//! conformance suite. No C++ compiler: SKIP.

use tandem_cuda::emu::EmuBackend;

#[test]
fn peft_adapters_on_the_emulated_cuda_kernels() {
    for (family, adapter) in [("qwen3", "r8"), ("phi3", "r64-rslora"), ("mistral", "r16")] {
        let backend = match EmuBackend::new() {
            Ok(b) => b,
            Err(why) => return eprintln!("SKIP peft_adapters_on_the_emulated_cuda_kernels: {why}"),
        };
        match tandem_tests::lora::first_rows(backend, family, adapter, 0) {
            Ok(line) => eprintln!("{line}"),
            Err(e) => panic!("{e}"),
        }
    }
}
