//! Greedy generation on the WebGPU backend: prefill and decode tokens/s, weight traffic, and
//! what crossed the bus per decoded token.
//!
//! cargo run --release -p tandem-wgpu --example bench -- <model dir or .gguf> [prompt tokens] [new tokens] [--packed]

use std::path::PathBuf;

use tandem_core::generate::{generate, GenerateParams};
use tandem_core::model::{Model, ModelOptions};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::{loader, Backend};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let packed = args.iter().any(|a| a == "--packed");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(path) = pos.first().map(PathBuf::from) else {
        eprintln!("usage: bench <model dir or .gguf> [prompt tokens] [new tokens] [--packed]");
        std::process::exit(2);
    };
    let prompt_len: usize = pos.get(1).map_or(32, |s| s.parse().expect("prompt tokens"));
    let new_tokens: usize = pos.get(2).map_or(64, |s| s.parse().expect("new tokens"));

    let backend = match pollster::block_on(WgpuBackend::new(WgpuOptions {
        allow_f16: !packed,
        ..Default::default()
    })) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("no WebGPU backend: {e}");
            std::process::exit(1);
        }
    };
    println!("adapter: {}  native f16: {}", backend.adapter_info(), backend.uses_f16());
    let source = loader::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tokenizer = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let opts =
        ModelOptions { context: (prompt_len + new_tokens + 8).max(64), ..Default::default() };
    let t = std::time::Instant::now();
    let mut model = Model::load(backend, &source, &opts, &mut |_, _| {}).expect("load");
    let weight_bytes = model.weights.bytes;
    println!(
        "loaded in {:.2} s: {:.1} MiB of weights, {:.1} MiB on the device in all",
        t.elapsed().as_secs_f64(),
        weight_bytes as f64 / 1048576.0,
        model.backend.allocated_bytes() as f64 / 1048576.0
    );

    // A deterministic prompt of ordinary token ids (BOS first where the model has one).
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| if i == 0 { 1 } else { 300 + (i * 7919) % (vocab - 400) })
        .collect();
    let params = GenerateParams { max_tokens: new_tokens, ignore_eos: true, ..Default::default() };
    // Warm-up: pipelines and bind groups get created here, not in the timed run.
    pollster::block_on(generate(
        &mut model,
        &tokenizer,
        &prompt,
        &GenerateParams { max_tokens: 4, ..params.clone() },
        &mut |_| {},
    ))
    .expect("warm-up");
    let before = model.backend.stats();
    let gen = pollster::block_on(generate(&mut model, &tokenizer, &prompt, &params, &mut |_| {}))
        .expect("generate");
    let after = model.backend.stats();
    let decoded = gen.tokens.len().saturating_sub(1).max(1) as u64;
    // Submissions and readbacks of the whole run, prefill's included, per generated token.
    let per = |a: u64, b: u64| (a - b) as f64 / gen.tokens.len() as f64;
    println!(
        "prefill: {} tokens in {:.3} s = {:.1} tok/s",
        gen.prompt_tokens,
        gen.prefill_secs,
        gen.prefill_tok_per_sec()
    );
    println!(
        "decode:  {} tokens in {:.3} s = {:.2} tok/s, {:.2} GB/s of weights",
        decoded,
        gen.decode_secs,
        gen.decode_tok_per_sec(),
        weight_bytes as f64 * gen.decode_tok_per_sec() / 1e9
    );
    println!(
        "per generated token: {:.2} submissions, {:.1} readback bytes, {:.1} dispatches; created during the run: {} pipelines, {} bind groups",
        per(after.submissions, before.submissions),
        per(after.readback_bytes, before.readback_bytes),
        per(after.dispatches, before.dispatches),
        after.pipelines_created - before.pipelines_created,
        after.bind_groups_created - before.bind_groups_created
    );
}
