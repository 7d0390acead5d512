//! Continuous batching on the CPU backend: concurrent requests equal their solo runs, under
//! preemption, prefix-cache hits and aborts, on stories260K and SmolLM2-135M-Instruct.

use tandem_cpu::CpuBackend;
use tandem_tests::batch;
use tandem_tests::e2e::Skip;

fn report(name: &str, r: Result<(), Skip>) {
    if let Err(Skip(why)) = r {
        eprintln!("SKIP {name}: {why}");
    }
}

#[test]
fn stories260k_batched_equals_solo() {
    report(
        "stories260k_batched_equals_solo",
        batch::stories_battery(CpuBackend::fast(2).unwrap(), 16, 23, 40, 40),
    );
}

#[test]
fn stories260k_batched_equals_solo_reference() {
    report(
        "stories260k_batched_equals_solo_reference",
        batch::stories_battery(CpuBackend::reference(), 16, 23, 40, 40),
    );
}

#[test]
fn smollm2_batched_equals_solo() {
    report(
        "smollm2_batched_equals_solo",
        batch::smollm_battery(CpuBackend::fast(2).unwrap(), 16, 40, 24),
    );
}

/// The lavapipe test's smaller battery, here where it is quick: scheduling depends only on
/// lengths, so this shows its pool really forces preemption.
#[test]
fn smollm2_small_battery() {
    report("smollm2_small_battery", batch::smollm_battery(CpuBackend::fast(2).unwrap(), 5, 24, 8));
}
