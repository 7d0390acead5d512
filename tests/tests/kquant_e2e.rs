//! End to end on llama.cpp's K-quant files (issue #12): SmolLM2-135M-Instruct quantized by
//! llama.cpp's own quantizer to Q4_K_M (which mixes Q4_K, Q5_0, Q6_K and Q8_0, since its
//! 576-wide rows are not whole 256-element blocks), to Q5_K_M (Q5_K, Q5_1, Q6_K, Q8_0) and
//! to Q6_K. For each file, tandem's greedy chat answers on the CPU must equal tandem's answers
//! on the same weights dequantized to F32 by llama.cpp's Python dequantizer
//! (`gguf.quants.dequantize`, written out by tests/fixtures/kquants/dequant_gguf.py): this
//! checks the block decoders and kernels against llama.cpp's definition of the format on a
//! real model. Every file also runs on WebGPU (its
//! WGSL block kernels), which must give the CPU's tokens.
//!
//! Needs llama.cpp's `llama-quantize` (`bench/build-llamacpp.sh` builds it into the cache;
//! or `$TANDEM_LLAMA_QUANTIZE`) and a Python with `gguf` and `numpy` (`$TANDEM_GGUF_PYTHON`,
//! else `python3`); prints SKIP with the reason when either is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_core::loader;
use tandem_core::model::ModelOptions;
use tandem_core::tokenizer::{ChatMessage, Tokenizer};
use tandem_core::Backend;
use tandem_cpu::CpuBackend;
use tandem_wgpu::{WgpuBackend, WgpuOptions};
use tandem_tests::e2e::{self, Skip};

const PROMPTS: [&str; 3] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
];
const TOKENS: usize = 24;

fn quantizer() -> Result<PathBuf, Skip> {
    let path = match std::env::var_os("TANDEM_LLAMA_QUANTIZE") {
        Some(p) => PathBuf::from(p),
        None => tandem_core::default_model::cache_dir()
            .map_err(|e| Skip(format!("no cache directory: {e}")))?
            .join("llamacpp/0.3.36/build/bin/llama-quantize"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Skip(format!("llama-quantize not found at {} (run bench/build-llamacpp.sh or set TANDEM_LLAMA_QUANTIZE)", path.display())))
    }
}

fn python() -> Result<String, Skip> {
    let py = std::env::var("TANDEM_GGUF_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&py).args(["-c", "import gguf, numpy"]).output() {
        Ok(o) if o.status.success() => Ok(py),
        _ => Err(Skip(format!("'{py}' cannot import gguf and numpy (pip install gguf==0.19.0 numpy; or set TANDEM_GGUF_PYTHON)"))),
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// Removes the files when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Greedy chat answers (TOKENS tokens each, EOS ignored) to every prompt, on the CPU.
fn answers(path: &Path) -> (Vec<Vec<u32>>, Vec<String>) {
    answers_on(CpuBackend::fast(2).expect("cpu"), path)
}

fn answers_on<B: Backend>(backend: B, path: &Path) -> (Vec<Vec<u32>>, Vec<String>) {
    let source = loader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let types: std::collections::BTreeSet<String> = source.tensors.infos().iter().map(|i| i.file_dtype.clone()).collect();
    eprintln!("{}: tensor types {types:?}", path.display());
    let tokenizer = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let mut model = e2e::load(backend, &source, &ModelOptions { context: 256, ..Default::default() });
    let mut ids = vec![];
    let mut texts = vec![];
    for p in PROMPTS {
        let messages = [ChatMessage { role: "user".into(), content: p.into() }];
        let prompt = tokenizer.encode(&tokenizer.apply_chat_template(&messages, true).expect("template")).expect("encode");
        let got = e2e::greedy(&mut model, &tokenizer, &prompt, TOKENS);
        texts.push(tokenizer.decode(&got, false).unwrap_or_default());
        ids.push(got);
    }
    (ids, texts)
}

fn kquant_files_match_their_f32_dequantization() -> Result<(), Skip> {
    let quantize = quantizer()?;
    let py = python()?;
    let src = e2e::smollm_gguf()?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = TempDir(std::env::temp_dir().join(format!("tandem-kquant-e2e-{}-{nanos}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kquants/dequant_gguf.py");
    for ftype in ["Q4_K_M", "Q5_K_M", "Q6_K"] {
        let q = dir.0.join(format!("smollm2-{ftype}.gguf"));
        let f = dir.0.join(format!("smollm2-{ftype}.f32.gguf"));
        // The default model is Q4_1: requantizing it is lossy, but both files hold the very
        // same values afterwards, which is all this test compares.
        run(Command::new(&quantize).arg("--allow-requantize").arg(&src).arg(&q).arg(ftype).arg("2"), "llama-quantize");
        run(Command::new(&py).arg(&script).arg(&q).arg(&f), "dequant_gguf.py");
        let (qi, qt) = answers(&q);
        let (fi, ft) = answers(&f);
        for (i, p) in PROMPTS.iter().enumerate() {
            eprintln!("{ftype} [{p}]: {:?}", qt[i]);
            assert_eq!(qi[i], fi[i], "{ftype}: prompt {p:?}: tokens differ from the F32 dequantization\n  {ftype}: {:?}\n  f32: {:?}", qt[i], ft[i]);
        }
        // WebGPU reads every type these files hold (Q4_K, Q5_K, Q5_0, Q5_1, Q6_K, Q8_0): the
        // same tokens as the CPU's there too.
        {
            match pollster::block_on(WgpuBackend::new(WgpuOptions::default())) {
                Ok(b) => {
                    let (wi, wt) = answers_on(b, &q);
                    for (i, p) in PROMPTS.iter().enumerate() {
                        assert_eq!(wi[i], qi[i], "{ftype} on wgpu: prompt {p:?}: tokens differ from the CPU's\n  wgpu: {:?}\n  cpu: {:?}", wt[i], qt[i]);
                    }
                }
                Err(e) => eprintln!("SKIP kquant e2e on wgpu: {e}"),
            }
        }
        let _ = std::fs::remove_file(&f);
    }
    Ok(())
}

#[test]
fn kquant_gguf_greedy_equals_f32_dequantized() {
    if let Err(Skip(why)) = kquant_files_match_their_f32_dequantization() {
        eprintln!("SKIP kquant_gguf_greedy_equals_f32_dequantized: {why}");
    }
}
