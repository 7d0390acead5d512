//! `tandem perplexity`: a model's perplexity over a text file, by llama.cpp's default method
//! (see `tandem_core::perplexity`), so that a number here compares with `llama-perplexity -f`
//! on the same file and context. Progress goes to stderr, the result to stdout (one JSON
//! object with --json).

use crate::backend::{dispatch, BackendArgs, WithBackend};
use crate::run::{load_model, KvArgs, WeightDtype};
use clap::Args;
use std::path::PathBuf;
use tandem_core::model::ModelOptions;
use tandem_core::perplexity::{self, ChunkDone, Report};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::{Backend, Error, Result};
use web_time::Instant;

#[derive(Args)]
pub struct PerplexityArgs {
    /// A directory with config.json + *.safetensors + tokenizer.json, or a .gguf file.
    /// Defaults to SmolLM2-135M-Instruct, fetched on first use.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The text to score (UTF-8).
    #[arg(long)]
    file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored (llama-perplexity's -c).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score at most this many chunks (default: every whole chunk of the text).
    #[arg(long)]
    chunks: Option<usize>,
    /// Print one JSON object on stdout instead of the text summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
    /// Convert weight matrices at load time (as `tandem run --dtype`).
    #[arg(long, value_enum)]
    dtype: Option<WeightDtype>,
    #[command(flatten)]
    kv: KvArgs,
}

pub fn perplexity(args: PerplexityArgs) -> Result<()> {
    let text = std::fs::read(&args.file).map_err(|e| {
        Error::InvalidParameter(format!("cannot read --file {}: {e}", args.file.display()))
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        Error::InvalidParameter(format!("--file {} is not UTF-8 text: {e}", args.file.display()))
    })?;
    let path = crate::model_path(args.model.clone())?;
    let source = tandem_core::loader::open(&path)?;
    let tokenizer = Tokenizer::load(&source.tokenizer)?;
    // Everything that can be checked before the (slow) model load is checked here.
    if args.ctx > source.config.max_position {
        return Err(Error::InvalidParameter(format!(
            "--ctx {} exceeds the model's context of {} tokens",
            args.ctx, source.config.max_position
        )));
    }
    let tokens = perplexity::tokenize(&tokenizer, &text)?;
    let chunks = perplexity::chunk_count(tokens.len(), args.ctx, args.chunks)?;
    let bos = if tokenizer.add_bos() { tokenizer.bos_id() } else { None };
    if !args.json {
        eprintln!(
            "perplexity: {} tokens, {chunks} chunks of {} (scoring the last {} of each){}",
            tokens.len(),
            args.ctx,
            args.ctx - 1 - args.ctx / 2,
            if bos.is_some() { ", BOS first in each" } else { "" }
        );
    }
    let opts = ModelOptions {
        weight_dtype: args.dtype.map(WeightDtype::dtype),
        kv_dtypes: args.kv.dtypes(),
        context: args.ctx,
        // A chunk in as few steps as the activations allow (all its logits come back).
        max_step_tokens: args.ctx.min(512),
        ..ModelOptions::default()
    };
    let job = Job { args: &args, source: &source, opts: &opts, tokens: &tokens, bos };
    dispatch(&args.backend, job)
}

struct Job<'a> {
    args: &'a PerplexityArgs,
    source: &'a tandem_core::loader::ModelSource,
    opts: &'a ModelOptions,
    tokens: &'a [u32],
    bos: Option<u32>,
}

impl WithBackend for Job<'_> {
    fn call<B: Backend>(self, backend: B, _another: &dyn Fn() -> Result<B>) -> Result<()> {
        let mut model = load_model(backend, self.source, self.opts)?;
        let started = Instant::now();
        let json = self.args.json;
        let mut progress = |d: ChunkDone| {
            if !json {
                eprintln!("[{}/{}] PPL {:.4}", d.chunk, d.chunks, d.ppl);
            }
        };
        let report = pollster::block_on(perplexity::measure(
            &mut model,
            self.tokens,
            self.args.ctx,
            self.args.chunks,
            self.bos,
            &mut progress,
        ))?;
        let seconds = started.elapsed().as_secs_f64();
        if json {
            println!(
                "{}",
                to_json(
                    &report,
                    &self.source.path,
                    &self.args.file,
                    &model.backend.name(),
                    seconds
                )
            );
        } else {
            let plus_minus = report.uncertainty.map(|u| format!(" +/- {u:.5}")).unwrap_or_default();
            println!("PPL = {:.4}{plus_minus}", report.ppl);
            eprintln!(
                "{} chunks of {} tokens, {} tokens scored, in {seconds:.1}s ({:.0} tok/s) on {}",
                report.chunks,
                report.ctx,
                report.scored,
                (report.chunks * report.ctx) as f64 / seconds.max(1e-9),
                model.backend.name()
            );
        }
        Ok(())
    }
}

fn to_json(
    r: &Report,
    model: &std::path::Path,
    file: &std::path::Path,
    backend: &str,
    seconds: f64,
) -> serde_json::Value {
    serde_json::json!({
        "model": model.display().to_string(),
        "file": file.display().to_string(),
        "backend": backend,
        "ctx": r.ctx,
        "chunks": r.chunks,
        "text_tokens": r.text_tokens,
        "scored_tokens": r.scored,
        "ppl": r.ppl,
        "uncertainty": r.uncertainty,
        "running": r.running,
        "seconds": seconds,
    })
}
