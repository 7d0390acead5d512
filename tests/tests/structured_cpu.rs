//! Structured output on the CPU backend (fast and reference): every constrained output that
//! finishes is valid by the oracles, alone and batched with free requests (constrained.rs).

use tandem_cpu::CpuBackend;
use tandem_tests::constrained;
use tandem_tests::e2e::Skip;

fn report(name: &str, r: Result<(), Skip>) {
    if let Err(Skip(why)) = r {
        eprintln!("SKIP {name}: {why}");
    }
}

#[test]
fn smollm2_constrained_outputs_are_valid_alone_and_batched() {
    report(
        "smollm2_constrained_outputs_are_valid_alone_and_batched",
        constrained::smollm(CpuBackend::fast(2).unwrap()),
    );
}

#[test]
fn stories260k_constrained_outputs_are_valid_on_the_reference() {
    report(
        "stories260k_constrained_outputs_are_valid_on_the_reference",
        constrained::stories(CpuBackend::reference()),
    );
}

#[test]
fn a_dormant_constraint_wakes_at_its_trigger() {
    report(
        "a_dormant_constraint_wakes_at_its_trigger",
        constrained::lazy_wakes_at_its_trigger(CpuBackend::fast(2).unwrap()),
    );
}

#[test]
fn an_auto_tool_call_is_held_from_a_split_opening() {
    report(
        "an_auto_tool_call_is_held_from_a_split_opening",
        constrained::lazy_call_wakes_on_a_split_opening(),
    );
}
