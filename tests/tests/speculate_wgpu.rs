//! Speculative decoding on WebGPU (lavapipe here), through the same engine code as the CPU:
//! prompt lookup and a draft model give plain decoding's tokens, greedy and seeded sampling,
//! alone (blocks checked after every step) and 8 at once, with and without preemption. No
//! adapter or no model: SKIP with why.

use tandem_tests::e2e::Skip;
use tandem_tests::speculate;
use tandem_wgpu::{WgpuBackend, WgpuOptions};

fn backend() -> Result<WgpuBackend, Skip> {
    pollster::block_on(WgpuBackend::new(WgpuOptions { allow_f16: false, ..Default::default() }))
        .map_err(|e| Skip(e.to_string()))
}

#[test]
fn stories260k_speculation_equals_plain() {
    // Each model (target, draft, a tight-pool target) gets its own device, as the CLI does.
    let r = backend().and_then(|_| {
        speculate::stories_battery(&|| {
            backend().unwrap_or_else(|Skip(e)| panic!("second adapter: {e}"))
        })
    });
    if let Err(Skip(why)) = r {
        eprintln!("SKIP stories260k_speculation_equals_plain: {why}");
    }
}
