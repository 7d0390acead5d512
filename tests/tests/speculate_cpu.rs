//! Speculative decoding on the CPU backend: prompt lookup and draft models give plain
//! decoding's tokens (greedy and seeded sampling), alone and batched, with the KV blocks of a
//! plain run and no leaks; the sampled distribution is plain sampling's.

use tandem_cpu::CpuBackend;
use tandem_tests::e2e::Skip;
use tandem_tests::speculate;

fn report(name: &str, r: Result<(), Skip>) {
    if let Err(Skip(why)) = r {
        eprintln!("SKIP {name}: {why}");
    }
}

#[test]
fn stories260k_speculation_equals_plain() {
    report(
        "stories260k_speculation_equals_plain",
        speculate::stories_battery(&|| CpuBackend::fast(2).unwrap()),
    );
}

#[test]
fn stories260k_speculation_equals_plain_reference() {
    report(
        "stories260k_speculation_equals_plain_reference",
        speculate::stories_battery(&CpuBackend::reference),
    );
}

#[test]
fn stories260k_sampling_distribution() {
    report(
        "stories260k_sampling_distribution",
        speculate::stories_sampling_distribution(CpuBackend::fast(2).unwrap()),
    );
}

#[test]
fn smollm2_speculation_greedy_equals_plain() {
    report(
        "smollm2_speculation_greedy_equals_plain",
        speculate::smollm_greedy(&|| CpuBackend::fast(2).unwrap()),
    );
}
