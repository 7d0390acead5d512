//! Continuous batching on the CPU backend: concurrent requests equal their solo runs, under
//! preemption, prefix-cache hits and aborts, on stories260K and SmolLM2-135M-Instruct.

use tandem_core::loader;
use tandem_core::model::ModelOptions;
use tandem_core::tokenizer::Tokenizer;
use tandem_cpu::CpuBackend;
use tandem_tests::{batch, e2e};

#[test]
fn stories260k_batched_equals_solo() {
    let dir = match e2e::stories_dir() {
        Ok(d) => d,
        Err(e2e::Skip(why)) => return eprintln!("SKIP stories260k_batched_equals_solo: {why}"),
    };
    let source = loader::open(&dir).expect("open");
    let tok = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    // 40 blocks of 4 positions: a few requests' worth, so 16 at once must preempt.
    let opts = ModelOptions { block_size: 4, kv_blocks: Some(40), ..Default::default() };
    let mut model = e2e::load(CpuBackend::fast(2).unwrap(), &source, &opts);
    batch::battery(&mut model, &tok);
}

#[test]
fn smollm2_batched_equals_solo() {
    let gguf = match e2e::smollm_gguf() {
        Ok(p) => p,
        Err(e2e::Skip(why)) => return eprintln!("SKIP smollm2_batched_equals_solo: {why}"),
    };
    let source = loader::open(&gguf).expect("open");
    let tok = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let opts = ModelOptions { context: 512, block_size: 8, kv_blocks: Some(24), ..Default::default() };
    let mut model = e2e::load(CpuBackend::fast(2).unwrap(), &source, &opts);
    batch::battery(&mut model, &tok);
}
