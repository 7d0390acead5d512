//! `tandem bench`: prefill and decode speed of a model on a backend, with the weight traffic
//! that bounds decode (every weight byte is read once per token) and what each token costs in
//! backend calls and readback. `--synthetic CONFIG.json` measures a model's shape with random
//! weights (see `tandem_tools::synthetic`), where the real weights cannot be brought.

use crate::alloc_count::allocations;
use crate::backend::{dispatch, BackendArgs, WithBackend};
use crate::bench_batch::{self, Mode, RunStats, Workload};
use crate::bench_verify;
use crate::run::{load_model, peak_memory, FloatDtype, KvArgs, WeightDtype};
use clap::Args;
use std::path::PathBuf;
use tandem_core::model::ModelOptions;
use tandem_core::tokenizer::Tokenizer;
use tandem_core::{Backend, Error, Result};
use tandem_tools::synthetic::{self, SyntheticOptions};

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
    /// Write the --synthetic model to this GGUF file and exit, without measuring: llama
    /// metadata, weights in --dtype (q4 is ggml's Q4_1, q8 Q8_0, q4k Q4_K, q6k Q6_K), a
    /// placeholder SentencePiece vocabulary. tandem (`--model PATH`) and llama.cpp both load it, so the two engines can
    /// be measured on the same bytes (bench/vs-llamacpp.sh).
    #[arg(long, value_name = "PATH", requires = "synthetic")]
    write_gguf: Option<PathBuf>,
    /// Seed of the --synthetic weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    kv: KvArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time for each decode measurement.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Contexts at which decode is measured (comma-separated): the sequence is prefilled so
    /// that its decode tokens sit around each; by default right after the --prompt-tokens prompt.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    contexts: Vec<usize>,
    /// Runs; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Serve --requests requests this many at a time through the continuous-batching
    /// scheduler, and the same requests sequentially and in static batches, for comparison.
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Requests of the --concurrency workload (default: 2 x N).
    #[arg(long, value_name = "R")]
    requests: Option<usize>,
    /// Mean output length of the --concurrency workload's requests (they vary from 1/4 to
    /// 7/4 of it; prompts vary from 1/2 to 3/2 of --prompt-tokens).
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// The scheduler's token budget per step.
    #[arg(long, default_value_t = 512)]
    pub max_batched_tokens: usize,
    /// With --speculate or --draft-model: decode a summary of a built-in text greedily with
    /// and without speculation (--decode-tokens tokens at most, best of --repeat) and report
    /// both speeds, the speed-up and the acceptance rate.
    #[command(flatten)]
    spec: crate::speculate::SpecArgs,
    /// With --speculate or --draft-model: what the workload asks of the model about its
    /// built-in text.
    #[arg(long, value_enum, default_value_t = crate::speculate::SpecTask::Summarize)]
    spec_task: crate::speculate::SpecTask,
    /// Structured output: decode speed with and without the JSON schema in FILE (at batch 1,
    /// and with --concurrency N half the requests constrained) and the masks' cost per token.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json_object", "regex", "grammar"])]
    json_schema: Option<std::path::PathBuf>,
    /// As --json-schema, with any JSON object.
    #[arg(long, conflicts_with_all = ["regex", "grammar"])]
    json_object: bool,
    /// As --json-schema, with this regular expression.
    #[arg(long, value_name = "RE", conflicts_with = "grammar")]
    regex: Option<String>,
    /// As --json-schema, with the grammar in FILE (Lark if it ends in .lark, else GBNF).
    #[arg(long, value_name = "FILE")]
    grammar: Option<std::path::PathBuf>,
    /// As --json-schema, with a forced call of a built-in weather/time tool in the model's own
    /// tool syntax.
    #[arg(long)]
    tool_call: bool,
    /// Also time steps that score this many tokens of one sequence as a speculative
    /// verification does (comma-separated), against a one-token step, at each decode context:
    /// the cost speculation must beat, on any model shape (random weights included).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    verify_tokens: Vec<usize>,
    /// LoRA: with --concurrency N, the continuous workload with its requests spread over this
    /// many random adapters (comma-separated, e.g. 1,4,16), against the same workload with
    /// none; also each adapter's memory and the time to load one into a slot.
    #[arg(long, value_delimiter = ',', value_name = "K,...", requires = "concurrency")]
    pub lora_adapters: Vec<usize>,
    /// Rank of those adapters (every projection of every layer).
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// How the adapters are stored on the backend.
    #[arg(long, value_enum, default_value = "f32")]
    pub lora_dtype: FloatDtype,
    /// With --concurrency: the KV cache in this many bytes (e.g. 64MiB), as `serve` sizes it,
    /// instead of room for N requests; shows how many sequences run at once in it.
    #[arg(long, value_name = "SIZE", value_parser = crate::run::parse_size, requires = "concurrency")]
    kv_cache_memory: Option<u64>,
}

/// The largest verify step `--verify-tokens` times (a step's token budget).
const MAX_VERIFY_TOKENS: usize = 512;

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.decode_tokens == 0 || args.repeat == 0 {
        return Err(Error::InvalidParameter(
            "--prompt-tokens, --decode-tokens and --repeat must be at least 1".into(),
        ));
    }
    let (source, weight_dtype) = match (&args.synthetic, &args.model) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidParameter(
                "--model and --synthetic exclude each other: real weights or random ones".into(),
            ))
        }
        (Some(config), None) => {
            let dtype = args.dtype.unwrap_or(WeightDtype::Q4).dtype();
            let opts =
                SyntheticOptions { dtype, seed: args.seed, max_weight_bytes: memory_bytes() };
            (synthetic::open(config, &opts)?, Some(dtype))
        }
        (None, model) => {
            let path = crate::model_path(model.clone())?;
            (tandem_core::loader::open(&path)?, args.dtype.map(WeightDtype::dtype))
        }
    };
    if let Some(path) = &args.write_gguf {
        return write_gguf(&source, path);
    }
    let tokenizer = match &source.tokenizer {
        tandem_core::loader::TokenizerSource::None(_) => {
            Tokenizer::placeholder(source.config.vocab_size)?
        }
        t => Tokenizer::load(t)?,
    };
    if args.verify_tokens.iter().any(|&n| n == 0 || n > MAX_VERIFY_TOKENS) {
        return Err(Error::InvalidParameter(format!(
            "--verify-tokens: each size must be 1 to {MAX_VERIFY_TOKENS}"
        )));
    }
    if !args.verify_tokens.is_empty()
        && (args.concurrency.is_some()
            || args.spec.speculate.is_some()
            || args.spec.draft_model.is_some())
    {
        return Err(Error::InvalidParameter("--verify-tokens times single steps of the plain benchmark: not with --concurrency, --speculate or --draft-model".into()));
    }
    let constraint = crate::run::ConstraintArgs {
        json_schema: args.json_schema.clone(),
        json: args.json_object,
        regex: args.regex.clone(),
        grammar: args.grammar.clone(),
    };
    let grammar = match (constraint.grammar()?, args.tool_call) {
        (Some(_), true) => {
            return Err(Error::InvalidParameter(
                "--tool-call is a constraint of its own: not with --json-schema, --json-object, --regex or --grammar".into(),
            ))
        }
        (g, true) => g.or(Some(crate::bench_structured::tool_call_grammar(&tokenizer))),
        (g, false) => g,
    };
    if let Some(grammar) = grammar {
        if args.synthetic.is_some() || args.spec.speculate.is_some() {
            return Err(Error::InvalidParameter("a constraint is measured on a real model's tokenizer, without speculation: not with --synthetic, --speculate or --draft-model".into()));
        }
        let n = args.concurrency.unwrap_or(1);
        let block_size = ModelOptions::default().block_size;
        let context = 1024.min(source.config.max_position);
        let opts = ModelOptions {
            weight_dtype,
            kv_dtypes: args.kv.dtypes(),
            context,
            kv_blocks: Some(n * context.div_ceil(block_size)),
            ..ModelOptions::default()
        };
        let bench = crate::bench_structured::StructuredBench {
            tok: &tokenizer,
            grammar,
            tokens: args.decode_tokens,
            repeat: args.repeat,
            concurrency: args.concurrency,
            json: args.json,
        };
        return dispatch(&args.backend, Structured { source: &source, opts: &opts, bench });
    }
    if let Some(spec) = args.spec.open(&tokenizer)? {
        if args.concurrency.is_some() || args.synthetic.is_some() {
            return Err(Error::InvalidParameter("--speculate / --draft-model measure one real model's decoding: not with --concurrency or --synthetic".into()));
        }
        let opts = ModelOptions {
            weight_dtype,
            kv_dtypes: args.kv.dtypes(),
            context: 1024,
            ..ModelOptions::default()
        };
        return dispatch(
            &args.backend,
            SpecBench { args: &args, source: &source, tok: &tokenizer, opts: &opts, spec: &spec },
        );
    }
    if let Some(n) = args.concurrency {
        let requests = args.requests.unwrap_or(2 * n);
        if n == 0 || requests == 0 || args.gen_tokens == 0 || args.max_batched_tokens == 0 {
            return Err(Error::InvalidParameter("--concurrency, --requests, --gen-tokens and --max-batched-tokens must be at least 1".into()));
        }
        let work = Workload::mixed(
            requests,
            args.prompt_tokens,
            args.gen_tokens,
            source.config.vocab_size,
        );
        let context = work.longest();
        if context > source.config.max_position {
            return Err(Error::PromptTooLong {
                prompt: context,
                context: source.config.max_position,
            });
        }
        let block_size = ModelOptions::default().block_size;
        let opts = ModelOptions {
            weight_dtype,
            kv_dtypes: args.kv.dtypes(),
            context,
            max_step_tokens: args.max_batched_tokens,
            // Room for N requests of the longest kind (preemption stays the exception), or what
            // --kv-cache-memory holds.
            kv_blocks: Some(match args.kv_cache_memory {
                Some(bytes) => crate::run::kv_blocks_in(bytes, &source.config, args.kv.dtypes())?,
                None => n * context.div_ceil(block_size),
            }),
            ..ModelOptions::default()
        };
        if !args.lora_adapters.is_empty() {
            let job = crate::bench_lora::LoraBench {
                args: &args,
                source: &source,
                tok: &tokenizer,
                opts: &opts,
                work: &work,
                n,
            };
            return dispatch(&args.backend, job);
        }
        let concurrent = Concurrent {
            args: &args,
            source: &source,
            tok: &tokenizer,
            opts: &opts,
            work: &work,
            n,
        };
        return dispatch(&args.backend, concurrent);
    }
    let decode_at = decode_starts(&args);
    // Verify steps (--verify-tokens) score up to their size after each decode start, in one step.
    let verify = args.verify_tokens.iter().copied().max().unwrap_or(0);
    let context = decode_at
        .iter()
        .map(|s| s + (args.decode_tokens + 1).max(verify))
        .chain([args.prompt_tokens + 1])
        .max()
        .unwrap_or(0);
    if context > source.config.max_position {
        return Err(Error::PromptTooLong { prompt: context, context: source.config.max_position });
    }
    let opts = ModelOptions {
        weight_dtype,
        kv_dtypes: args.kv.dtypes(),
        context,
        max_step_tokens: args.prompt_tokens.min(512).max(verify),
        ..ModelOptions::default()
    };
    dispatch(
        &args.backend,
        Bench { args: &args, source: &source, tok: &tokenizer, opts: &opts, decode_at: &decode_at },
    )
}

/// `--write-gguf`: the model through a temporary file beside `path`, renamed when complete, so
/// an interrupted write never leaves a truncated model behind.
fn write_gguf(source: &tandem_core::loader::ModelSource, path: &std::path::Path) -> Result<()> {
    use tandem_tools::gguf_writer::{placeholder_vocab, write_llama_gguf};
    let start = std::time::Instant::now();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let written = write_llama_gguf(source, placeholder_vocab(source.config.vocab_size), &tmp);
    let bytes = written.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    eprintln!(
        "wrote {}: {bytes} bytes ({:.1} MiB) in {:.1} s",
        path.display(),
        bytes as f64 / 1048576.0,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Where each decode measurement starts: the prompt's end by default, else so that the
/// decoded tokens straddle each asked-for context.
fn decode_starts(args: &BenchArgs) -> Vec<usize> {
    if args.contexts.is_empty() {
        return vec![args.prompt_tokens];
    }
    args.contexts.iter().map(|&c| c.saturating_sub(args.decode_tokens / 2).max(1)).collect()
}

struct Bench<'a> {
    args: &'a BenchArgs,
    source: &'a tandem_core::loader::ModelSource,
    tok: &'a Tokenizer,
    opts: &'a ModelOptions,
    decode_at: &'a [usize],
}

/// One decode measurement: tokens decoded from a context of `start`.
struct Decode {
    start: usize,
    tok_s: f64,
    /// Weight plus KV bytes read per token, at the average context of the measurement.
    bytes_per_token: f64,
    steps_per_token: f64,
    readback_per_token: f64,
    /// Heap allocations a decoded token makes (the whole process: engine and backend).
    allocs_per_token: f64,
}

impl WithBackend for Bench<'_> {
    fn call<B: Backend>(self, mut backend: B, _another: &dyn Fn() -> Result<B>) -> Result<()> {
        // Measured before the weights are loaded, so the copy's 2 GiB are free again for them.
        let copy_bw = backend.copy_bandwidth().transpose()?;
        let mut model = load_model(backend, self.source, self.opts)?;
        let vocab = model.config.vocab_size as u32;
        // Any valid ids do: speed does not depend on which tokens flow through.
        let ids =
            |n: usize| -> Vec<u32> { (0..n as u32).map(|i| (i * 7919 + 13) % vocab).collect() };
        let prompt = ids(self.args.prompt_tokens);
        // Every measurement is one request through the scheduler, as `tandem run` makes it.
        let mut best_prefill = f64::MAX;
        for _ in 0..self.args.repeat {
            best_prefill = best_prefill.min(bench_batch::one(&mut model, self.tok, &prompt, 1)?.0);
        }
        let n = self.args.decode_tokens as f64;
        let top_k = model.config.features.moe.as_ref().map_or(0, |m| m.top_k);
        let weights = model.weights.bytes_per_token(top_k) as f64;
        let kv_per_pos = model.config.kv_bytes_per_token(model.kv.dtypes) as f64;
        let mut decodes = Vec::new();
        for &start in self.decode_at {
            let mut best = f64::MAX;
            let mut per_token = Default::default();
            for _ in 0..self.args.repeat {
                // What the prompt's own steps cost, to take out of the decode's counts.
                let (s0, a0) = (model.stats, allocations());
                bench_batch::one(&mut model, self.tok, &ids(start), 1)?;
                let (s1, a1) = (model.stats, allocations());
                let (_, secs, tokens) = bench_batch::one(
                    &mut model,
                    self.tok,
                    &ids(start),
                    self.args.decode_tokens + 1,
                )?;
                debug_assert_eq!(tokens, self.args.decode_tokens + 1);
                best = best.min(secs);
                let (s2, a2) = (model.stats, allocations());
                let prompt_cost = (s1.steps - s0.steps, s1.read_bytes - s0.read_bytes, a1 - a0);
                per_token = (
                    (s2.steps - s1.steps) - prompt_cost.0,
                    (s2.read_bytes - s1.read_bytes) - prompt_cost.1,
                    (a2 - a1).saturating_sub(prompt_cost.2),
                );
            }
            decodes.push(Decode {
                start,
                tok_s: n / best,
                bytes_per_token: weights + kv_per_pos * (start as f64 + n / 2.0),
                steps_per_token: per_token.0 as f64 / n,
                readback_per_token: per_token.1 as f64 / n,
                allocs_per_token: per_token.2 as f64 / n,
            });
        }
        let mut verify = Vec::new();
        if !self.args.verify_tokens.is_empty() {
            for &start in self.decode_at {
                verify.push(bench_verify::measure(
                    &mut model,
                    start,
                    &self.args.verify_tokens,
                    self.args.decode_tokens,
                    self.args.repeat,
                )?);
            }
        }
        let c = &model.config;
        let model_desc = match (&self.args.synthetic, self.opts.weight_dtype) {
            (Some(_), Some(dtype)) => {
                format!(
                    "synthetic weights ({dtype}, seed {}) in the shape of {}",
                    self.args.seed,
                    self.source.path.display()
                )
            }
            _ => self.source.path.display().to_string(),
        };
        let prefill_tok_s = self.args.prompt_tokens as f64 / best_prefill;
        if self.args.json {
            let report = serde_json::json!({
                "backend": model.backend.name(),
                "model": model_desc,
                "dtype": self.opts.weight_dtype.map(|d| d.to_string()),
                "kv_dtype": model.kv.dtypes.to_string(),
                "weight_bytes": model.weights.bytes,
                "copy_bandwidth_gb_s": copy_bw.map(|b| b / 1e9),
                "prefill": { "tokens": self.args.prompt_tokens, "ms": best_prefill * 1e3, "tok_s": prefill_tok_s },
                "decode": decodes.iter().map(|d| serde_json::json!({
                    "context": d.start as f64 + n / 2.0,
                    "tokens": self.args.decode_tokens,
                    "tok_s": d.tok_s,
                    "bytes_per_token": d.bytes_per_token,
                    "gb_s": d.bytes_per_token * d.tok_s / 1e9,
                    "share_of_copy": copy_bw.map(|b| d.bytes_per_token * d.tok_s / b),
                    "steps_per_token": d.steps_per_token,
                    "readback_bytes_per_token": d.readback_per_token,
                    "allocations_per_token": d.allocs_per_token,
                })).collect::<Vec<_>>(),
                "verify": verify.iter().flatten().map(|v| serde_json::json!({
                    "context": v.context,
                    "tokens": v.tokens,
                    "ms": v.ms,
                    "vs_one_token": v.ms / verify.iter().flatten().find(|o| o.context == v.context && o.tokens == 1).map_or(f64::NAN, |o| o.ms),
                })).collect::<Vec<_>>(),
                "peak_memory": peak_memory(),
            });
            println!("{report}");
            return Ok(());
        }
        println!("backend:        {}", model.backend.name());
        println!("model:          {model_desc}");
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
        println!(
            "weights:        {} bytes ({:.1} MiB), {:.1} MiB read per token",
            model.weights.bytes,
            model.weights.bytes as f64 / 1048576.0,
            weights / 1048576.0
        );
        let kv = model.kv.dtypes;
        println!("kv cache:       {kv}, {} bytes a token", c.kv_bytes_per_token(kv));
        if let Some(b) = copy_bw {
            println!("copy bandwidth: {:.1} GB/s (device-to-device, read + write)", b / 1e9);
        }
        println!(
            "prefill:        {} tokens in {:.1} ms: {:.1} tok/s",
            self.args.prompt_tokens,
            best_prefill * 1e3,
            prefill_tok_s
        );
        for d in &decodes {
            let gb_s = d.bytes_per_token * d.tok_s / 1e9;
            let share = copy_bw
                .map(|b| format!(", {:.0}% of copy", 100.0 * d.bytes_per_token * d.tok_s / b))
                .unwrap_or_default();
            println!(
                "decode:         {} tokens at context {:.0}: {:.1} tok/s, {:.2} ms/token; {:.2} GB/s of weights + KV{share}",
                self.args.decode_tokens,
                d.start as f64 + n / 2.0,
                d.tok_s,
                1e3 / d.tok_s,
                gb_s
            );
            println!(
                "per token:      {:.2} steps, {:.1} bytes read back, {:.1} heap allocations",
                d.steps_per_token, d.readback_per_token, d.allocs_per_token
            );
        }
        for costs in &verify {
            println!("{}", bench_verify::describe(costs));
        }
        println!("peak memory:    {}", peak_memory());
        Ok(())
    }
}

/// The structured-output comparison.
struct Structured<'a> {
    source: &'a tandem_core::loader::ModelSource,
    opts: &'a ModelOptions,
    bench: crate::bench_structured::StructuredBench<'a>,
}

impl WithBackend for Structured<'_> {
    fn call<B: Backend>(self, backend: B, _another: &dyn Fn() -> Result<B>) -> Result<()> {
        let mut model = load_model(backend, self.source, self.opts)?;
        self.bench.measure(&mut model)
    }
}

/// The speculative decoding comparison.
struct SpecBench<'a> {
    args: &'a BenchArgs,
    source: &'a tandem_core::loader::ModelSource,
    tok: &'a Tokenizer,
    opts: &'a ModelOptions,
    spec: &'a crate::speculate::SpecSource,
}

impl WithBackend for SpecBench<'_> {
    fn call<B: Backend>(self, backend: B, another: &dyn Fn() -> Result<B>) -> Result<()> {
        let mut model = load_model(backend, self.source, self.opts)?;
        let spec = self.spec.build(another, self.opts)?;
        let a = self.args;
        pollster::block_on(crate::speculate::bench(
            &mut model,
            self.tok,
            spec,
            &self.spec.describe(),
            a.spec_task,
            a.decode_tokens,
            a.repeat,
            a.json,
        ))
    }
}

/// The --concurrency benchmark.
struct Concurrent<'a> {
    args: &'a BenchArgs,
    source: &'a tandem_core::loader::ModelSource,
    tok: &'a Tokenizer,
    opts: &'a ModelOptions,
    work: &'a Workload,
    n: usize,
}

impl WithBackend for Concurrent<'_> {
    fn call<B: Backend>(self, backend: B, _another: &dyn Fn() -> Result<B>) -> Result<()> {
        let mut model = load_model(backend, self.source, self.opts)?;
        let budget = self.args.max_batched_tokens;
        let runs = [
            (
                "continuous",
                bench_batch::run(
                    &mut model,
                    self.tok,
                    self.work,
                    self.n,
                    Mode::Continuous,
                    budget,
                    &[],
                )?,
            ),
            (
                "static",
                bench_batch::run(
                    &mut model,
                    self.tok,
                    self.work,
                    self.n,
                    Mode::Static,
                    budget,
                    &[],
                )?,
            ),
            (
                "sequential",
                bench_batch::run(
                    &mut model,
                    self.tok,
                    self.work,
                    1,
                    Mode::Continuous,
                    budget,
                    &[],
                )?,
            ),
        ];
        let ms = |v: &[f64], p: f64| bench_batch::percentile(v, p) * 1e3;
        let cont = runs[0].1.tok_s();
        let prompt_tokens: usize = self.work.requests.iter().map(|r| r.0.len()).sum();
        if self.args.json {
            let json = |(name, r): &(&str, RunStats)| {
                serde_json::json!({
                    "mode": name,
                    "seconds": r.secs,
                    "output_tokens": r.output_tokens,
                    "output_tok_s": r.tok_s(),
                    "ttft_ms": { "p50": ms(&r.ttft, 50.0), "p99": ms(&r.ttft, 99.0) },
                    "itl_ms": { "p50": ms(&r.itl, 50.0), "p99": ms(&r.itl, 99.0) },
                    "peak_kv_blocks": r.peak_blocks,
                    "peak_running": r.peak_running,
                    "preemptions": r.preemptions,
                    "cached_prompt_tokens": r.cached_prompt_tokens,
                })
            };
            let report = serde_json::json!({
                "backend": model.backend.name(),
                "model": self.source.path.display().to_string(),
                "concurrency": self.n,
                "requests": self.work.requests.len(),
                "prompt_tokens": prompt_tokens,
                "max_batched_tokens": budget,
                "kv_blocks": model.kv.total_blocks(),
                "kv_dtype": model.kv.dtypes.to_string(),
                "kv_bytes_per_token": model.config.kv_bytes_per_token(model.kv.dtypes),
                "runs": runs.iter().map(json).collect::<Vec<_>>(),
                "continuous_vs_sequential": cont / runs[2].1.tok_s(),
                "continuous_vs_static": cont / runs[1].1.tok_s(),
                "peak_memory": peak_memory(),
            });
            println!("{report}");
            return Ok(());
        }
        println!("backend:      {}", model.backend.name());
        println!("model:        {}", self.source.path.display());
        println!(
            "workload:     {} requests, {} at a time; {prompt_tokens} prompt tokens in all; budget {budget} tokens/step; {} KV blocks of {} ({}, {} bytes a token)",
            self.work.requests.len(),
            self.n,
            model.kv.total_blocks(),
            model.kv.block_size,
            model.kv.dtypes,
            model.config.kv_bytes_per_token(model.kv.dtypes)
        );
        for (name, r) in &runs {
            println!(
                "{name:<12}  {:>5} tokens in {:>7.2} s: {:>8.1} tok/s | TTFT p50 {:>7.1} ms p99 {:>7.1} ms | ITL p50 {:>6.1} ms p99 {:>6.1} ms | peak {} blocks, {} seqs, {} preemptions",
                r.output_tokens,
                r.secs,
                r.tok_s(),
                ms(&r.ttft, 50.0),
                ms(&r.ttft, 99.0),
                ms(&r.itl, 50.0),
                ms(&r.itl, 99.0),
                r.peak_blocks,
                r.peak_running,
                r.preemptions
            );
        }
        println!(
            "continuous:   {:.2}x sequential, {:.2}x static batching",
            cont / runs[2].1.tok_s(),
            cont / runs[1].1.tok_s()
        );
        println!("peak memory:  {}", peak_memory());
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
            let kb: u64 =
                line["MemTotal:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
            kb.checked_mul(1024)
        })
        .unwrap_or(64 << 30)
}
