//! The model families against Hugging Face transformers: tiny random-weight models of each
//! family's real config (`tests/fixtures/families`, made by `scripts/fixtures/families.py`),
//! with transformers' f32 logits for a 200-token prompt and its 32 greedy tokens. tandem must
//! give the same logits within the f32 tolerance and the same tokens, from the safetensors
//! and from the GGUF llama.cpp's converter made of them.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tandem_core::loader;
use tandem_core::model::{Model, ModelOptions, ModelStream, Output, Want};
use tandem_core::Backend;

use crate::e2e::{ids, read_json};

/// Every family with a fixture.
pub const FAMILIES: [&str; 7] =
    ["qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3", "mistral", "mixtral"];

/// The largest NMSE of a logit row against transformers': f32 arithmetic in another order
/// (the reference measures ~1e-13; fast kernels and GPUs more), far below what a wrong
/// feature gives (the fixtures' `checks`: 1e-2 and above).
pub const LOGITS_NMSE: f64 = 1e-9;

pub fn dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/families").join(family)
}

/// Which files of a fixture to load, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The HF directory, memory-mapped.
    Safetensors,
    /// llama.cpp's GGUF, memory-mapped.
    Gguf,
    /// The HF files pushed in small chunks, as a browser download feeds them.
    SafetensorsStream,
    /// The GGUF pushed in small chunks.
    GgufStream,
}

impl Format {
    pub const ALL: [Format; 4] =
        [Format::Safetensors, Format::Gguf, Format::SafetensorsStream, Format::GgufStream];

    fn gguf(self) -> bool {
        matches!(self, Format::Gguf | Format::GgufStream)
    }
}

/// `files` of `dir` pushed through a [`ModelStream`] in chunks of 1000 bytes.
fn stream<B: Backend>(
    backend: B,
    dir: &Path,
    files: &[&str],
    opts: &ModelOptions,
) -> tandem_core::Result<Model<B>> {
    let mut s = ModelStream::new(backend, opts);
    for f in files {
        let bytes =
            std::fs::read(dir.join(f)).map_err(|e| tandem_core::Error::io(dir.join(f), e))?;
        s.begin_file(f, Some(bytes.len() as u64))?;
        for chunk in bytes.chunks(1000) {
            s.push(chunk)?;
        }
        s.end_file()?;
    }
    Ok(s.finish()?.model)
}

/// Loads `family`'s fixture on `backend`, checks its prompt logits and greedy tokens against
/// the reference, and returns a one-line summary; `Err` says what differs.
pub fn check<B: Backend>(backend: B, family: &str, format: Format) -> Result<String, String> {
    let dir = dir(family);
    let mut reference = read_json(&dir.join("reference.json"));
    // Where the GGUF cannot say what config.json does (Mistral's window under arch `llama`,
    // Gemma 2's query_pre_attn_scalar), the fixture has the reference of what it says.
    if format.gguf() {
        if let Some(g) = reference.get("gguf_reference").cloned() {
            reference = g;
        }
    }
    let opts = ModelOptions { context: 512, ..ModelOptions::default() };
    let hf_files = ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"];
    let loaded = match format {
        Format::Safetensors | Format::Gguf => {
            let path = if format.gguf() { dir.join("model.gguf") } else { dir.clone() };
            loader::open(&path)
                .and_then(|source| Model::load(backend, &source, &opts, &mut |_, _| {}))
        }
        Format::SafetensorsStream => stream(backend, &dir, &hf_files, &opts),
        Format::GgufStream => stream(backend, &dir, &["model.gguf"], &opts),
    };
    let mut model = loaded.map_err(|e| format!("{family} ({format:?}): loading: {e}"))?;
    let prompt = ids(&read_json(&dir.join("reference.json"))["prompt"]);
    let worst = check_logits(&mut model, &prompt, &reference)
        .map_err(|e| format!("{family} ({format:?}): {e}"))?;
    let want = ids(&reference["greedy"]);
    let got = greedy(&mut model, &prompt, want.len())?;
    if got != want {
        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!(
            "{family} ({format:?}): greedy token {i} is {} where transformers says {}\n  got  {got:?}\n  want {want:?}",
            got[i], want[i]
        ));
    }
    Ok(format!(
        "{family} ({format:?}) on {}: logits NMSE <= {worst:.1e}, {} greedy tokens equal",
        model.backend.name(),
        want.len()
    ))
}

/// The prompt's logits at the reference's rows; returns the worst row's NMSE.
fn check_logits<B: Backend>(
    model: &mut Model<B>,
    prompt: &[u32],
    reference: &Value,
) -> Result<f64, String> {
    prompt_logits(model, prompt, reference, None, LOGITS_NMSE)
}

/// [`check_logits`] through the LoRA adapter in slot `adapter`, with `tolerance`.
pub fn prompt_logits<B: Backend>(
    model: &mut Model<B>,
    prompt: &[u32],
    reference: &Value,
    adapter: Option<usize>,
    tolerance: f64,
) -> Result<f64, String> {
    let mut seq = model.new_sequence();
    let out = pollster::block_on(model.forward_adapter(&mut seq, prompt, Want::AllLogits, adapter))
        .map_err(|e| format!("forward: {e}"))?;
    model.release(&mut seq);
    let Output::Logits(all) = out else { return Err("forward gave no logits".into()) };
    let vocab = model.config.vocab_size;
    let rows = reference["logit_rows"].as_array().expect("logit_rows");
    let mut worst = 0f64;
    for (r, want) in rows.iter().zip(reference["logits"].as_array().expect("logits")) {
        let r = r.as_u64().expect("row") as usize;
        let want: Vec<f64> =
            want.as_array().expect("a row").iter().map(|x| x.as_f64().expect("logit")).collect();
        let got = &all[r * vocab..(r + 1) * vocab];
        let (mut err, mut norm) = (0f64, 0f64);
        for (&g, &w) in got.iter().zip(&want) {
            err += (g as f64 - w).powi(2);
            norm += w * w;
        }
        let nmse = err / norm.max(f64::MIN_POSITIVE);
        // NaN fails too.
        if nmse.is_nan() || nmse > tolerance {
            return Err(format!("row {r}: logits NMSE {nmse:.3e} > {tolerance:.0e}"));
        }
        worst = worst.max(nmse);
    }
    Ok(worst)
}

/// `steps` greedy tokens after `prompt`, each chosen on the backend.
fn greedy<B: Backend>(
    model: &mut Model<B>,
    prompt: &[u32],
    steps: usize,
) -> Result<Vec<u32>, String> {
    greedy_through(model, prompt, steps, None)
}

/// [`greedy`] through the LoRA adapter in slot `adapter`.
pub fn greedy_through<B: Backend>(
    model: &mut Model<B>,
    prompt: &[u32],
    steps: usize,
    adapter: Option<usize>,
) -> Result<Vec<u32>, String> {
    let mut seq = model.new_sequence();
    let mut feed = prompt.to_vec();
    let mut out = vec![];
    for _ in 0..steps {
        match pollster::block_on(model.forward_adapter(&mut seq, &feed, Want::argmax(), adapter)) {
            Ok(Output::Token(t)) => {
                out.push(t);
                feed = vec![t];
            }
            Ok(other) => return Err(format!("forward gave {other:?}, not a token")),
            Err(e) => return Err(format!("forward: {e}")),
        }
    }
    model.release(&mut seq);
    Ok(out)
}
