//! Structured output on an NVIDIA GPU: the masks applied by kernels/mask_logits.cu give outputs
//! valid by the oracles, alone and batched with free requests (constrained.rs). No GPU, driver
//! or NVRTC: SKIP with the reason.

use tandem_cuda::{CudaBackend, CudaOptions};
use tandem_tests::constrained;
use tandem_tests::e2e::Skip;

#[test]
fn smollm2_constrained_outputs_are_valid_alone_and_batched() {
    let b = CudaBackend::new(CudaOptions::default()).map_err(|e| Skip(e.to_string()));
    if let Err(Skip(why)) = b.and_then(constrained::smollm) {
        eprintln!("SKIP smollm2_constrained_outputs_are_valid_alone_and_batched: {why}");
    }
}
