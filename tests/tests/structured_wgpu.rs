//! Structured output on WebGPU (lavapipe here): the masks applied on the device give outputs
//! valid by the oracles, alone and batched with free requests (constrained.rs). No adapter or
//! no model: SKIP with why.

use tandem_tests::constrained;
use tandem_tests::e2e::Skip;
use tandem_wgpu::{WgpuBackend, WgpuOptions};

#[test]
fn stories260k_constrained_outputs_are_valid_alone_and_batched() {
    let b = pollster::block_on(WgpuBackend::new(WgpuOptions::default()))
        .map_err(|e| Skip(e.to_string()));
    if let Err(Skip(why)) = b.and_then(constrained::stories) {
        eprintln!("SKIP stories260k_constrained_outputs_are_valid_alone_and_batched: {why}");
    }
}
