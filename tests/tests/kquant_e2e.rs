//! End to end on llama.cpp's K-quant files: SmolLM2-135M-Instruct quantized by
//! llama.cpp's own quantizer to Q4_K_M (which mixes Q4_K, Q5_0, Q6_K and Q8_0, since its
//! 576-wide rows are not whole 256-element blocks), Q5_K_M (Q5_K, Q5_1, Q6_K, Q8_0), Q6_K,
//! Q3_K_M and Q2_K (Q4_0 for the 576-wide rows, Q3_K / Q2_K for ffn_down: see
//! `tandem_tests::kquant::FTYPES`). For each file, tandem's
//! greedy chat answers on the CPU must equal tandem's answers on the same weights dequantized
//! to F32 by llama.cpp's Python dequantizer (`gguf.quants.dequantize`, written out by
//! tests/fixtures/kquants/dequant_gguf.py): this checks the block decoders and kernels against
//! llama.cpp's definition of the format on a real model. Every file also runs on WebGPU (its
//! WGSL block kernels), which must give the CPU's tokens; with no adapter that half prints SKIP.
//!
//! Needs llama.cpp's `llama-quantize` and a Python with `gguf` and `numpy` (see
//! `tandem_tests::kquant`); prints SKIP with the reason when either is missing, except in CI
//! (`TANDEM_REQUIRE_LLAMACPP`), where that fails. Quantized files are cached between runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_core::generate::{generate, GenerateParams};
use tandem_core::model::{Model, ModelOptions};
use tandem_core::tokenizer::{ChatMessage, Tokenizer};
use tandem_core::{loader, Backend, Error};
use tandem_cpu::CpuBackend;
use tandem_tests::e2e::Skip;
use tandem_tests::kquant::{self, FTYPES};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

const PROMPTS: [&str; 3] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
];
const TOKENS: usize = 24;

/// Removes the files when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Answers = (Vec<Vec<u32>>, Vec<String>);

/// Greedy chat answers (TOKENS tokens each, EOS ignored) to every prompt, on the CPU.
fn answers(path: &Path) -> Answers {
    answers_on(CpuBackend::fast(2).expect("cpu"), path)
        .unwrap_or_else(|e| panic!("{} on the CPU: {e}", path.display()))
}

/// The same on any backend; an error (a block type the backend does not run) comes back.
fn answers_on<B: Backend>(backend: B, path: &Path) -> Result<Answers, Error> {
    let source = loader::open(path)?;
    let tokenizer = Tokenizer::load(&source.tokenizer)?;
    let mut model = Model::load(
        backend,
        &source,
        &ModelOptions { context: 256, ..Default::default() },
        &mut |_, _| {},
    )?;
    let mut ids = vec![];
    let mut texts = vec![];
    for p in PROMPTS {
        let messages = [ChatMessage::new("user", p.to_string())];
        let prompt = tokenizer.encode(&tokenizer.apply_chat_template(&messages, true)?)?;
        // As e2e::greedy, with the error returned: a backend may refuse an op at its first step.
        let params = GenerateParams { max_tokens: TOKENS, ignore_eos: true, ..Default::default() };
        let got =
            pollster::block_on(generate(&mut model, &tokenizer, &prompt, &params, &mut |_| {}))?
                .tokens;
        texts.push(tokenizer.decode(&got, false).unwrap_or_default());
        ids.push(got);
    }
    Ok((ids, texts))
}

fn kquant_files_match_their_f32_dequantization() -> Result<(), Skip> {
    let py = kquant::python()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = TempDir(
        std::env::temp_dir().join(format!("tandem-kquant-e2e-{}-{nanos}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kquants/dequant_gguf.py");
    let mut summary = vec![];
    for ftype in FTYPES {
        let started = std::time::Instant::now();
        let q = kquant::quantized_with_own_blocks(ftype)?;
        let types = kquant::tensor_types(&q);
        eprintln!("{ftype}: {} holds {types:?}", q.display());
        // The F32 copy is 4 bytes a weight (~540 MB): made for the comparison, then removed.
        let f = dir.0.join(format!("smollm2-{ftype}.f32.gguf"));
        kquant::run(Command::new(&py).arg(&script).arg(&q).arg(&f), "dequant_gguf.py");
        let (qi, qt) = answers(&q);
        let (fi, ft) = answers(&f);
        let _ = std::fs::remove_file(&f);
        for (i, p) in PROMPTS.iter().enumerate() {
            eprintln!("{ftype} [{p}]: {:?}", qt[i]);
            assert_eq!(qi[i], fi[i], "{ftype}: prompt {p:?}: tokens differ from the F32 dequantization\n  {ftype}: {:?}\n  f32: {:?}", qt[i], ft[i]);
        }
        let ran;
        match pollster::block_on(WgpuBackend::new(WgpuOptions::default())) {
            Ok(b) => match answers_on(b, &q) {
                Ok((wi, wt)) => {
                    for (i, p) in PROMPTS.iter().enumerate() {
                        assert_eq!(wi[i], qi[i], "{ftype} on wgpu: prompt {p:?}: tokens differ from the CPU's\n  wgpu: {:?}\n  cpu: {:?}", wt[i], qt[i]);
                    }
                    ran = "cpu, wgpu";
                }
                // WebGPU runs every GGUF block type: an unsupported one is a failure.
                Err(e) => panic!("{ftype} on wgpu: {e}"),
            },
            Err(e) => {
                eprintln!("SKIP kquant e2e {ftype} on wgpu: {e}");
                ran = "cpu (wgpu: SKIP, no adapter)";
            }
        }
        summary.push(format!(
            "{ftype}: same tokens as F32 on {ran} ({:.0}s)",
            started.elapsed().as_secs_f64()
        ));
    }
    eprintln!("kquant e2e:\n  {}", summary.join("\n  "));
    Ok(())
}

#[test]
fn kquant_gguf_greedy_equals_f32_dequantized() {
    if let Err(Skip(why)) = kquant_files_match_their_f32_dequantization() {
        eprintln!("SKIP kquant_gguf_greedy_equals_f32_dequantized: {why}");
    }
}
