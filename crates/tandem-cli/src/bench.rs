//! `tandem bench`: prefill and decode speed of a model on a backend, with the weight traffic
//! that bounds decode (every weight byte is read once per token) and what each token costs in
//! backend calls and readback. `--synthetic CONFIG.json` measures a model's shape with random
//! weights (see `tandem_core::loader::synthetic`), where the real weights cannot be brought.

use crate::backend::{dispatch, BackendArgs, WithBackend};
use crate::run::{load_model, peak_memory, KvDtype, WeightDtype};
use clap::Args;
use std::path::PathBuf;
use tandem_core::loader::synthetic::{self, SyntheticOptions};
use tandem_core::model::{ModelOptions, Want};
use tandem_core::{Backend, DType, Error, Result};
use web_time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// A directory with config.json + *.safetensors + tokenizer.json, or a .gguf file.
    /// Defaults to SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Random weights in the shape of this HF config.json (or a directory holding one),
    /// instead of a model's own: same bytes, same kernels, so the same speed.
    #[arg(long, value_name = "CONFIG")]
    synthetic: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Weight matrices' type; by default the file's own, and q4 with --synthetic.
    #[arg(long, value_enum)]
    dtype: Option<WeightDtype>,
    /// Seed of the --synthetic weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value = "f32")]
    kv_dtype: KvDtype,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time after the prompt.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Runs; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.decode_tokens == 0 || args.repeat == 0 {
        return Err(Error::InvalidParameter("--prompt-tokens, --decode-tokens and --repeat must be at least 1".into()));
    }
    let (source, weight_dtype) = match (&args.synthetic, &args.model) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidParameter("--model and --synthetic exclude each other: real weights or random ones".into()))
        }
        (Some(config), None) => {
            let dtype = args.dtype.unwrap_or(WeightDtype::Q4).dtype();
            let opts = SyntheticOptions { dtype, seed: args.seed, max_weight_bytes: memory_bytes() };
            (synthetic::open(config, &opts)?, Some(dtype))
        }
        (None, model) => {
            let path = crate::model_path(model.clone())?;
            (tandem_core::loader::open(&path)?, args.dtype.map(WeightDtype::dtype))
        }
    };
    let context = args.prompt_tokens + args.decode_tokens;
    if context > source.config.max_position {
        return Err(Error::PromptTooLong { prompt: context, context: source.config.max_position });
    }
    let opts = ModelOptions {
        weight_dtype,
        kv_dtype: args.kv_dtype.dtype(),
        context,
        max_step_tokens: args.prompt_tokens.min(512),
        ..ModelOptions::default()
    };
    dispatch(&args.backend, Bench { args: &args, source: &source, opts: &opts })
}

struct Bench<'a> {
    args: &'a BenchArgs,
    source: &'a tandem_core::loader::ModelSource,
    opts: &'a ModelOptions,
}

impl WithBackend for Bench<'_> {
    fn call<B: Backend>(self, backend: B) -> Result<()> {
        let mut model = load_model(backend, self.source, self.opts)?;
        let vocab = model.config.vocab_size as u32;
        // Any valid ids do: speed does not depend on which tokens flow through.
        let prompt: Vec<u32> = (0..self.args.prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let (mut best_prefill, mut best_decode) = (f64::MAX, f64::MAX);
        let mut per_token = Default::default();
        for _ in 0..self.args.repeat {
            let mut seq = model.new_sequence();
            let t = Instant::now();
            let mut next = match pollster::block_on(model.forward(&mut seq, &prompt, Want::Argmax))? {
                tandem_core::model::Output::Token(t) => t,
                _ => unreachable!("asked for a token"),
            };
            best_prefill = best_prefill.min(t.elapsed().as_secs_f64());
            let before = model.stats;
            let t = Instant::now();
            for _ in 0..self.args.decode_tokens {
                next = match pollster::block_on(model.forward(&mut seq, &[next], Want::Argmax))? {
                    tandem_core::model::Output::Token(t) => t,
                    _ => unreachable!("asked for a token"),
                };
            }
            best_decode = best_decode.min(t.elapsed().as_secs_f64());
            per_token = (model.stats.steps - before.steps, model.stats.read_bytes - before.read_bytes);
            model.release(&mut seq);
        }
        let n = self.args.decode_tokens as f64;
        let decode_tps = n / best_decode;
        let weights = model.weights.bytes as f64;
        // Average context during decode, for the KV bytes each token reads.
        let kv_elem = if model.kv.dtype == DType::F16 { 2 } else { 4 };
        let avg_ctx = self.args.prompt_tokens as f64 + n / 2.0;
        let kv = model.config.kv_bytes_per_token(kv_elem) as f64 * avg_ctx;
        println!("backend:        {}", model.backend.name());
        let c = &model.config;
        match (&self.args.synthetic, self.opts.weight_dtype) {
            (Some(_), Some(dtype)) => println!(
                "model:          synthetic weights ({dtype}, seed {}) in the shape of {}",
                self.args.seed,
                self.source.path.display()
            ),
            _ => println!("model:          {}", self.source.path.display()),
        }
        println!(
            "shape:          {} layers, dim {}, {} heads ({} kv heads, head_dim {}), ffn {}, vocab {}{}",
            c.n_layers,
            c.dim,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.ffn_dim,
            c.vocab_size,
            if c.tie_embeddings { ", tied embeddings" } else { "" }
        );
        println!("weights:        {} bytes ({:.1} MiB)", model.weights.bytes, weights / 1048576.0);
        println!("prefill:        {} tokens in {:.1} ms: {:.1} tok/s", self.args.prompt_tokens, best_prefill * 1e3, self.args.prompt_tokens as f64 / best_prefill);
        println!("decode:         {} tokens: {:.1} tok/s, {:.2} ms/token", self.args.decode_tokens, decode_tps, 1e3 / decode_tps);
        println!("bandwidth:      {:.2} GB/s of weights, {:.2} GB/s with KV reads", weights * decode_tps / 1e9, (weights + kv) * decode_tps / 1e9);
        println!("per token:      {:.2} steps, {:.1} bytes read back", per_token.0 as f64 / n, per_token.1 as f64 / n);
        println!("peak memory:    {}", peak_memory());
        Ok(())
    }
}

/// The memory synthetic weights must fit in: this machine's RAM (where the CPU backend keeps
/// them; a GPU's own memory is rarely larger). 64 GiB where the kernel does not say.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: u64 = line["MemTotal:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
            kb.checked_mul(1024)
        })
        .unwrap_or(64 << 30)
}
