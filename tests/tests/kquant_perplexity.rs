//! Perplexity against llama.cpp (issue #12): on SmolLM2-135M-Instruct as shipped (Q4_1) and
//! requantized by llama.cpp to each K-quant type, tandem's perplexity (the very function
//! `tandem perplexity` runs, on the CPU with 2 threads) must be within 1% of
//! `llama-perplexity`'s (1.5% for Q3_K_M, see its constant) over the same text, context and
//! chunks. Both tokenize the text, cut it into chunks and score the second half of each the
//! same way; what may differ is arithmetic
//! (llama.cpp rounds activations to 8 bits for its quantized dot products and keeps the KV
//! cache in F16), which moves perplexity by a fraction of a percent, while a wrong block
//! decoder, tokenizer or attention mask moves it by far more.
//!
//! Measured (2026-11-27, ctx 512, 3 chunks): tandem is 0.07% to 0.85% below llama.cpp on
//! these files, and llama.cpp itself on the same weights dequantized to F32 (no 8-bit
//! activations) gives tandem's value within 0.01% (Q4_1: 23.8333 vs tandem 23.8337; Q3_K_M:
//! 26.0535 vs 26.0525): the gap is llama.cpp's rounding, not tandem's.
//!
//! The text is tests/fixtures/perplexity.txt (original prose written for this test). Needs
//! llama.cpp's llama-quantize and llama-perplexity (see `tandem_tests::kquant`); prints SKIP
//! without them, except in CI, where that fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_core::model::{Model, ModelOptions};
use tandem_core::perplexity;
use tandem_core::tokenizer::Tokenizer;
use tandem_cpu::CpuBackend;
use tandem_tests::e2e::{self, Skip};
use tandem_tests::kquant::{self, FTYPES};

/// 3 chunks of 512 tokens (the default context) score 765 tokens per file: enough for the
/// mean to settle well inside 1% (both engines see the same tokens, so sampling noise
/// cancels), small enough to keep the test to seconds per file.
const CTX: usize = 512;
const CHUNKS: usize = 3;
const THREADS: usize = 2;
const TOLERANCE: f64 = 0.01;
/// Q3_K_M's own: its 3-bit weights leave llama.cpp's 8-bit activation rounding the most room,
/// and which SIMD path llama.cpp's `-march=native` build takes moves its figure. Measured
/// 2026-12-06 with llama.cpp built on this project's machine: tandem 26.0523 (unchanged since
/// 2026-11-27, 0.01% from llama.cpp on the same weights dequantized to F32) against
/// llama.cpp's 26.3182, -1.010%. A wrong block decoder moves it by far more.
const Q3_K_M_TOLERANCE: f64 = 0.015;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/perplexity.txt")
}

fn llama_ppl(tool: &Path, model: &Path) -> f64 {
    // -b CTX: one chunk per batch, as tandem runs them (the result does not depend on it).
    // Passive OpenMP waits: spinning threads cost llama.cpp many times its speed on busy cores.
    let (out, err) = kquant::run(
        Command::new(tool)
            .env("OMP_WAIT_POLICY", "passive")
            .arg("-m")
            .arg(model)
            .arg("-f")
            .arg(fixture())
            .args([
                "-c",
                &CTX.to_string(),
                "-b",
                &CTX.to_string(),
                "--chunks",
                &CHUNKS.to_string(),
                "-t",
                &THREADS.to_string(),
            ]),
        "llama-perplexity",
    );
    kquant::parse_final_ppl(&format!("{out}\n{err}")).unwrap_or_else(|| {
        panic!("no 'Final estimate: PPL = ...' line in llama-perplexity's output:\n{out}\n{err}")
    })
}

fn tandem_ppl(model_path: &Path) -> f64 {
    let text = std::fs::read_to_string(fixture()).expect("fixture");
    let source = tandem_core::loader::open(model_path)
        .unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
    let tokenizer = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let opts = ModelOptions { context: CTX, max_step_tokens: CTX, ..Default::default() };
    let mut model =
        Model::load(CpuBackend::fast(THREADS).expect("cpu"), &source, &opts, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("loading {}: {e}", model_path.display()));
    let report = pollster::block_on(perplexity::run(
        &mut model,
        &tokenizer,
        &text,
        CTX,
        Some(CHUNKS),
        &mut |_| {},
    ))
    .unwrap_or_else(|e| panic!("perplexity of {}: {e}", model_path.display()));
    assert_eq!(report.chunks, CHUNKS, "the fixture is long enough for {CHUNKS} chunks of {CTX}");
    report.ppl
}

fn perplexity_matches_llamacpp() -> Result<(), Skip> {
    let tool = kquant::perplexity_tool()?;
    let mut files = vec![("Q4_1 (as shipped)".to_string(), e2e::smollm_gguf()?)];
    for ftype in FTYPES {
        files.push((ftype.to_string(), kquant::quantized(ftype)?));
    }
    let mut rows = vec![];
    let mut failures = vec![];
    for (name, path) in &files {
        let t0 = std::time::Instant::now();
        let llama = llama_ppl(&tool, path);
        let t1 = std::time::Instant::now();
        let tandem = tandem_ppl(path);
        let t2 = std::time::Instant::now();
        let diff = tandem / llama - 1.0;
        rows.push(format!(
            "{name:<18} {llama:>10.4} {tandem:>10.4} {:>+8.3}%   {:>5.1}s {:>5.1}s",
            100.0 * diff,
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64()
        ));
        let tolerance = if name.starts_with("Q3_K_M") { Q3_K_M_TOLERANCE } else { TOLERANCE };
        if diff.abs() >= tolerance {
            failures.push(format!(
                "{name}: tandem {tandem:.4} vs llama.cpp {llama:.4} ({:+.3}%)",
                100.0 * diff
            ));
        }
    }
    eprintln!(
        "perplexity of {} (ctx {CTX}, {CHUNKS} chunks, CPU, {THREADS} threads)\n{:<18} {:>10} {:>10} {:>9}   {:>6} {:>6}\n{}",
        fixture().display(),
        "file",
        "llama.cpp",
        "tandem",
        "diff",
        "llama",
        "tandem",
        rows.join("\n")
    );
    assert!(
        failures.is_empty(),
        "perplexity not within {}% of llama.cpp's ({}% for Q3_K_M):\n{}",
        100.0 * TOLERANCE,
        100.0 * Q3_K_M_TOLERANCE,
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn perplexity_within_one_percent_of_llamacpp() {
    if let Err(Skip(why)) = perplexity_matches_llamacpp() {
        eprintln!("SKIP perplexity_within_one_percent_of_llamacpp: {why}");
    }
}
