//! LoRA adapters on the CPU, reference and fast, against PEFT (see `tandem_tests::lora`).

use tandem_cpu::CpuBackend;
use tandem_tests::lora_smollm::Depth;

tandem_tests::lora_suite!(cpu_reference, || Ok::<_, String>(CpuBackend::reference()));
tandem_tests::lora_suite!(cpu_fast, || CpuBackend::fast(2).map_err(|e| e.to_string()));

#[test]
fn refusals_leave_the_model_as_it_was() {
    tandem_tests::lora::refusals(CpuBackend::reference()).unwrap();
}

#[test]
fn adapters_take_turns_in_one_slot_through_the_scheduler() {
    for family in ["qwen3", "phi3"] {
        let line = tandem_tests::lora::scheduled(CpuBackend::fast(2).unwrap(), family).unwrap();
        eprintln!("{line}");
    }
}

/// SmolLM2 with two PEFT adapters against PEFT (see `tandem_tests::lora_smollm`).
#[test]
fn smollm2_against_peft() {
    tandem_tests::lora_smollm::run("smollm2_against_peft", Depth::Full, || {
        CpuBackend::fast(2).map_err(|e| e.to_string())
    });
}
