//! Continuous batching on WebGPU (lavapipe here): concurrent requests equal their solo runs,
//! under preemption, prefix-cache hits and aborts. No adapter or no model: SKIP with why.

use tandem_tests::batch;
use tandem_tests::e2e::Skip;
use tandem_wgpu::{WgpuBackend, WgpuOptions};

fn backend(allow_f16: bool) -> Result<WgpuBackend, Skip> {
    pollster::block_on(WgpuBackend::new(WgpuOptions { allow_f16, ..Default::default() }))
        .map_err(|e| Skip(e.to_string()))
}

fn report(name: &str, r: Result<(), Skip>) {
    if let Err(Skip(why)) = r {
        eprintln!("SKIP {name}: {why}");
    }
}

#[test]
fn stories260k_batched_equals_solo_f16() {
    report(
        "stories260k_batched_equals_solo_f16",
        backend(true).and_then(|b| batch::stories_battery(b, 16, 23, 40, 40)),
    );
}

#[test]
fn stories260k_batched_equals_solo_packed() {
    report(
        "stories260k_batched_equals_solo_packed",
        backend(false).and_then(|b| batch::stories_battery(b, 16, 23, 40, 40)),
    );
}

/// Fewer requests than on the CPU: lavapipe runs SmolLM2 slowly.
#[test]
fn smollm2_batched_equals_solo() {
    report(
        "smollm2_batched_equals_solo",
        backend(false).and_then(|b| batch::smollm_battery(b, 5, 24, 8)),
    );
}
