//! `tandem run`: stdout carries only the generated text; stderr the progress and the summary.

use crate::backend::{dispatch, BackendArgs, WithBackend};
use crate::speculate::{SpecArgs, SpecSource};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tandem_core::constraint::Grammar;
use tandem_core::generate::{generate_speculative, GenerateParams};
use tandem_core::lora::Adapter;
use tandem_core::model::{LoraOptions, Model, ModelOptions};
use tandem_core::sampling::SamplingParams;
use tandem_core::tokenizer::{ChatMessage, ChatTemplateKwargs, Tokenizer};
use tandem_core::{Backend, DType, Error, KvDtypes, Result};
use web_time::Instant;

#[derive(Clone, Copy, ValueEnum)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
    Q8,
    Q4,
    /// GGUF Q4_K blocks (4.5 bits/weight); matrices whose rows are not multiples of 256 get Q5_0.
    Q4k,
    /// GGUF Q6_K blocks (6.6 bits/weight); matrices whose rows are not multiples of 256 get Q8_0.
    Q6k,
}

impl WeightDtype {
    pub fn dtype(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F16 => DType::F16,
            WeightDtype::Bf16 => DType::BF16,
            WeightDtype::Q8 => DType::Q8_0,
            WeightDtype::Q4 => DType::Q4_1,
            WeightDtype::Q4k => DType::Q4_K,
            WeightDtype::Q6k => DType::Q6_K,
        }
    }
}

/// How the KV cache stores keys and values: floats, blocks of 32 with an f16 scale (q8_0:
/// 8.5 bits a value, q4_0: 4.5), or fp8 e4m3 with an f32 scale a head (8.5 bits a value at
/// 64-value heads), quantized as they are written and read as they are.
#[derive(Clone, Copy, ValueEnum)]
pub enum KvDtype {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    Fp8,
}

impl KvDtype {
    pub fn dtype(self) -> DType {
        match self {
            KvDtype::F32 => DType::F32,
            KvDtype::F16 => DType::F16,
            KvDtype::Q8_0 => DType::Q8_0,
            KvDtype::Q4_0 => DType::Q4_0,
            KvDtype::Fp8 => DType::F8E4M3,
        }
    }
}

/// The KV cache's storage, for keys and values alike or each its own.
#[derive(Args, Clone, Copy)]
pub struct KvArgs {
    /// KV cache storage: f32, f16, q8_0 / q4_0 blocks or fp8 heads (about 2x / 4x / 2x the
    /// tokens of f16 in the same memory, attention reading them as they are).
    #[arg(long, value_enum, default_value = "f32")]
    kv_dtype: KvDtype,
    /// Keys' storage, overriding --kv-dtype (keys set every score: they want the finer type).
    #[arg(long, value_enum)]
    k_dtype: Option<KvDtype>,
    /// Values' storage, overriding --kv-dtype (e.g. --k-dtype f16 --v-dtype q4_0).
    #[arg(long, value_enum)]
    v_dtype: Option<KvDtype>,
}

impl KvArgs {
    pub fn dtypes(self) -> KvDtypes {
        let k = self.k_dtype.unwrap_or(self.kv_dtype).dtype();
        KvDtypes { k, v: self.v_dtype.unwrap_or(self.kv_dtype).dtype() }
    }
}

/// A float storage type (LoRA adapters).
#[derive(Clone, Copy, ValueEnum)]
pub enum FloatDtype {
    F32,
    F16,
}

impl FloatDtype {
    pub fn dtype(self) -> DType {
        match self {
            FloatDtype::F32 => DType::F32,
            FloatDtype::F16 => DType::F16,
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// A directory with config.json + *.safetensors + tokenizer.json, or a .gguf file.
    /// Defaults to SmolLM2-135M-Instruct, fetched on first use.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Convert weight matrices at load time (bf16 and f16: 16 bits/weight, q8: 8.5, q4: 5,
    /// q6k: 6.6, q4k: 4.5); by default the file's own types are kept (bf16 files load as f32).
    /// q4k and q6k are GGUF K-quant blocks of 256: a matrix whose rows are not a multiple of
    /// 256 falls back to q5_0 (6 bits) for q4k and q8_0 for q6k. From a GGUF file, tensors of
    /// another type are dequantized and quantized again.
    #[arg(long, value_enum)]
    dtype: Option<WeightDtype>,
    #[command(flatten)]
    kv: KvArgs,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Subtracted from the logit of each token already generated (-2 to 2).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Subtracted from a token's logit per time it was generated (-2 to 2).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    constraint: ConstraintArgs,
    /// Keep generating past end-of-sequence tokens (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Tokens of context to reserve KV cache for (capped at the model's own).
    #[arg(long, default_value_t = 2048)]
    ctx: usize,
    /// Wrap PROMPT as one user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    spec: SpecArgs,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Run through this LoRA adapter, applied unmerged: a PEFT directory
    /// (adapter_config.json and adapter_model.safetensors) or llama.cpp's LoRA GGUF.
    #[arg(long, value_name = "PATH")]
    lora: Option<PathBuf>,
    /// Multiply the adapter's effect by S (1: as trained).
    #[arg(long, value_name = "S", default_value_t = 1.0, requires = "lora")]
    lora_scale: f32,
    /// Extra chat template variables for --chat, a JSON object (Qwen3's thinking off:
    /// '{"enable_thinking": false}').
    #[arg(long, requires = "chat", value_name = "JSON", value_parser = parse_template_kwargs)]
    chat_template_kwargs: Option<ChatTemplateKwargs>,
    /// The prompt; empty starts from BOS alone.
    #[arg(default_value = "")]
    prompt: String,
}

pub fn run(args: RunArgs) -> Result<()> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        logprobs: None,
        seed: args.seed,
    };
    sampling.validate()?;
    let path = crate::model_path(args.model.clone())?;
    let source = tandem_core::loader::open(&path)?;
    let tokenizer = Tokenizer::load(&source.tokenizer)?;
    let prompt = prompt_ids(&args, &tokenizer)?;
    let opts = ModelOptions {
        weight_dtype: args.dtype.map(WeightDtype::dtype),
        kv_dtypes: args.kv.dtypes(),
        context: args.ctx,
        ..ModelOptions::default()
    };
    if prompt.len() > opts.context.min(source.config.max_position) {
        return Err(Error::PromptTooLong {
            prompt: prompt.len(),
            context: opts.context.min(source.config.max_position),
        });
    }
    let constraint = match args.constraint.grammar()? {
        Some(g) => Some(tokenizer.constrainer(source.config.vocab_size)?.compile(&g)?),
        None => None,
    };
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        constraint,
        adapter: None,
    };
    params.validate()?;
    let adapter = match &args.lora {
        Some(dir) => Some(Arc::new(Adapter::open(dir, &source.config)?.scaled(args.lora_scale)?)),
        None => None,
    };
    let spec = args.spec.open(&tokenizer)?;
    let job = RunJob {
        source: &source,
        opts: &opts,
        tokenizer: &tokenizer,
        prompt: &prompt,
        params: &params,
        spec: spec.as_ref(),
        adapter,
    };
    dispatch(&args.backend, job)
}

struct RunJob<'a> {
    source: &'a tandem_core::loader::ModelSource,
    opts: &'a ModelOptions,
    tokenizer: &'a Tokenizer,
    prompt: &'a [u32],
    params: &'a GenerateParams,
    spec: Option<&'a SpecSource>,
    adapter: Option<Arc<Adapter>>,
}

impl WithBackend for RunJob<'_> {
    fn call<B: Backend>(self, backend: B, another: &dyn Fn() -> Result<B>) -> Result<()> {
        let mut model = load_model(backend, self.source, self.opts)?;
        if let Some(a) = &self.adapter {
            // One slot, as large as the adapter.
            model.enable_lora(LoraOptions { slots: 1, rank: a.rank(), dtype: DType::F32 })?;
            eprintln!(
                "LoRA adapter: rank {}, {} projections, {:.1} MiB on the backend",
                a.rank(),
                a.modules.len(),
                model.lora_slot_bytes() as f64 / (1 << 20) as f64
            );
        }
        let mut spec = self.spec.map(|s| s.build(another, self.opts)).transpose()?;
        pollster::block_on(run_with(
            &mut model,
            self.tokenizer,
            self.prompt,
            self.params,
            &mut spec,
            self.adapter,
        ))
    }
}

/// Structured output: at most one of these holds the output to a shape.
#[derive(Args, Default)]
pub struct ConstraintArgs {
    /// Hold the output to the JSON schema in FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "regex", "grammar"])]
    pub json_schema: Option<PathBuf>,
    /// Hold the output to a JSON object.
    #[arg(long, conflicts_with_all = ["regex", "grammar"])]
    pub json: bool,
    /// Hold the output to this regular expression (the whole output matches it).
    #[arg(long, value_name = "RE", conflicts_with = "grammar")]
    pub regex: Option<String>,
    /// Hold the output to the grammar in FILE: Lark if FILE ends in .lark, else GBNF.
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
}

impl ConstraintArgs {
    /// The grammar asked for, read from its file.
    pub fn grammar(&self) -> Result<Option<Grammar>> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .map_err(|e| Error::InvalidParameter(format!("reading {}: {e}", p.display())))
        };
        Ok(if let Some(p) = &self.json_schema {
            let schema = serde_json::from_str(&read(p)?)
                .map_err(|e| Error::InvalidParameter(format!("{}: not JSON: {e}", p.display())))?;
            Some(Grammar::JsonSchema(schema))
        } else if self.json {
            Some(Grammar::JsonObject)
        } else if let Some(rx) = &self.regex {
            Some(Grammar::Regex(rx.clone()))
        } else if let Some(p) = &self.grammar {
            let text = read(p)?;
            Some(match p.extension().and_then(|e| e.to_str()) {
                Some("lark") => Grammar::Lark(text),
                _ => Grammar::Gbnf(text),
            })
        } else {
            None
        })
    }
}

fn parse_template_kwargs(json: &str) -> std::result::Result<ChatTemplateKwargs, String> {
    match serde_json::from_str(json) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("a JSON object is needed, such as '{\"enable_thinking\": false}'".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn prompt_ids(args: &RunArgs, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.clone()));
        }
        messages.push(ChatMessage::new("user", args.prompt.clone()));
        let kwargs = args.chat_template_kwargs.clone().unwrap_or_default();
        let text = tokenizer.apply_chat_template_with(&messages, true, &kwargs)?;
        return tokenizer.encode(&text);
    }
    let mut ids = Vec::new();
    if args.prompt.is_empty() || tokenizer.add_bos() {
        ids.push(
            tokenizer.bos_id().ok_or_else(|| {
                Error::Tokenizer("the model has no BOS token to start from".into())
            })?,
        );
    }
    ids.extend(tokenizer.encode(&args.prompt)?);
    Ok(ids)
}

async fn run_with<B: Backend>(
    model: &mut Model<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    spec: &mut Option<tandem_core::scheduler::Speculation<B>>,
    adapter: Option<Arc<Adapter>>,
) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    let mut write = |text: &str| {
        // A closed pipe (e.g. `| head`) is not worth an error mid-stream.
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    };
    let gen =
        generate_speculative(model, tokenizer, prompt, params, spec, adapter, &mut write, &|| {
            false
        })
        .await?;
    let speculated = spec
        .as_ref()
        .map(|_| format!(" | speculative: {}", crate::speculate::acceptance(&gen)))
        .unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout);
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s ({:?}){speculated} | weights {:.1} GB/s | peak memory {}",
        gen.prompt_tokens,
        gen.prefill_tok_per_sec(),
        gen.tokens.len(),
        gen.decode_tok_per_sec(),
        gen.finish,
        model.weights.bytes as f64 * gen.decode_tok_per_sec() / 1e9,
        peak_memory(),
    );
    Ok(())
}

/// Loads a model with a progress bar on stderr, then says what was loaded where.
pub fn load_model<B: Backend>(
    backend: B,
    source: &tandem_core::loader::ModelSource,
    opts: &ModelOptions,
) -> Result<Model<B>> {
    let name = backend.name();
    let loading = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {msg} {bar:30} {pos}/{len} tensors")
            .expect("static template"),
    );
    bar.set_message(source.path.display().to_string());
    let model = Model::load(backend, source, opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    eprintln!(
        "loaded {} on {name} in {:.2}s: {:.1} MiB of weights",
        source.path.display(),
        loading.elapsed().as_secs_f64(),
        model.weights.bytes as f64 / 1048576.0
    );
    Ok(model)
}

/// Peak resident memory of this process, from the kernel's high-water mark.
pub fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .map(|kb| match kb.trim_end_matches(" kB").parse::<f64>() {
            Ok(kb) => format!("{:.1} MiB", kb / 1024.0),
            Err(_) => kb,
        })
        .unwrap_or_else(|| "unknown".into())
}

/// KV blocks (of the default block size, every layer's K and V) that `bytes` hold in `dtype`.
pub fn kv_blocks_in(bytes: u64, c: &tandem_core::ModelConfig, dtype: KvDtypes) -> Result<usize> {
    let block_size = ModelOptions::default().block_size;
    let (block_bytes, _) = tandem_core::memory::kv_block_bytes(c, dtype, block_size);
    match (bytes / block_bytes.max(1)) as usize {
        0 => Err(Error::InvalidParameter(format!(
            "--kv-cache-memory is smaller than one KV block ({block_bytes} bytes at {dtype})"
        ))),
        n => Ok(n),
    }
}

/// "512MiB", "2G", "1.5GB", "1000000": decimal (KB, MB, GB) or binary (K, M, G, KiB, ...).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    tandem_core::memory::parse_size(s)
}
