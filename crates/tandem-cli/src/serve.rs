//! `tandem serve`: an OpenAI-compatible HTTP server (tandem-server). Each `--model` gets a
//! thread of its own that creates the backend, loads the model and drives its scheduler; the
//! HTTP side starts at once and answers /health with 503 until every model is loaded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tandem_core::lora::Adapter;
use tandem_core::model::{LoraOptions, ModelOptions};
use tandem_core::scheduler::SchedulerConfig;
use tandem_core::tokenizer::Tokenizer;
use tandem_core::{Backend, DType, Error, Result};
use tandem_server::{EngineSeat, Server, ServerConfig};

use crate::backend::{dispatch, BackendArgs, WithBackend};
use crate::run::{load_model, FloatDtype, KvArgs, WeightDtype};

#[derive(Args)]
pub struct ServeArgs {
    /// A model to serve, as PATH or NAME=PATH (repeatable; the first is the default for
    /// requests that name none). The name defaults to the file or directory name. With none,
    /// SmolLM2-135M-Instruct, fetched on first use.
    #[arg(long = "model", value_name = "[NAME=]PATH")]
    models: Vec<String>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Convert weight matrices at load time (as `tandem run --dtype`).
    #[arg(long, value_enum)]
    dtype: Option<WeightDtype>,
    #[command(flatten)]
    kv: KvArgs,
    /// Address to listen on; loopback unless you mean to serve other machines.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Longest context of one request, prompt and output (capped at the model's own).
    #[arg(long, default_value_t = 2048)]
    ctx: usize,
    /// Most sequences in one step.
    #[arg(long, default_value_t = 64)]
    max_seqs: usize,
    /// Most tokens in one step (decodes plus prompt chunks).
    #[arg(long, default_value_t = 512)]
    max_batched_tokens: usize,
    /// KV cache size per model, e.g. 512MiB, 2G; default: room for 4 requests at the full
    /// context.
    #[arg(long, value_name = "SIZE", value_parser = crate::run::parse_size)]
    kv_cache_memory: Option<u64>,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long)]
    api_key: Option<String>,
    /// Most requests waiting per model; more get 429.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// Seconds running requests may go on after SIGINT/SIGTERM before they are aborted.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    /// Speculative decoding for every request (each --model gets its own draft model).
    #[command(flatten)]
    spec: crate::speculate::SpecArgs,
    #[command(flatten)]
    lora: LoraArgs,
}

/// LoRA adapters of the first --model, served unmerged: a request names one as its model.
#[derive(Args, Clone)]
struct LoraArgs {
    /// A LoRA adapter to serve as model NAME (repeatable): a PEFT directory or llama.cpp's
    /// LoRA GGUF.
    #[arg(long = "lora", value_name = "NAME=PATH")]
    loras: Vec<String>,
    /// Adapters held on the backend at once; the others wait in host memory and are swapped
    /// in as requests need them (least recently used out).
    #[arg(long, default_value_t = 4)]
    max_loras: usize,
    /// The largest adapter rank (default: the largest of --lora's, at least 16).
    #[arg(long)]
    max_lora_rank: Option<usize>,
    /// How the adapters are stored on the backend.
    #[arg(long, value_enum, default_value = "f32")]
    lora_dtype: FloatDtype,
    /// Let clients load and unload adapters (POST /v1/load_lora_adapter with a path on this
    /// machine, /v1/unload_lora_adapter).
    #[arg(long)]
    allow_runtime_lora: bool,
}

/// An adapter with the model name requests give it.
type Named = (String, Arc<Adapter>);

impl LoraArgs {
    fn wanted(&self) -> bool {
        !self.loras.is_empty() || self.allow_runtime_lora
    }

    /// The adapters, read for a base model of config `c`, and the pools they need.
    fn open(&self, c: &tandem_core::ModelConfig) -> Result<(Vec<Named>, LoraOptions)> {
        let mut adapters = vec![];
        for spec in &self.loras {
            let (name, dir) = spec.split_once('=').ok_or_else(|| {
                Error::InvalidParameter(format!("--lora {spec}: NAME=PATH expected"))
            })?;
            let a = Adapter::open(std::path::Path::new(dir), c)?;
            adapters.push((name.to_string(), Arc::new(a)));
        }
        let largest = adapters.iter().map(|(_, a)| a.rank()).max().unwrap_or(0);
        let rank = self.max_lora_rank.unwrap_or(largest.max(16));
        let opts = LoraOptions { slots: self.max_loras, rank, dtype: self.lora_dtype.dtype() };
        Ok((adapters, opts))
    }
}

pub fn serve(args: ServeArgs) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let specs = if args.models.is_empty() {
        vec![model_spec(None)?]
    } else {
        args.models.iter().map(|m| model_spec(Some(m))).collect::<Result<_>>()?
    };
    let config = ServerConfig {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        max_waiting: args.max_waiting,
        allow_runtime_lora: args.lora.allow_runtime_lora,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        ..ServerConfig::default()
    };
    let (server, seats) =
        Server::new(config, specs.iter().map(|(name, _)| name.clone()).collect())?;
    let mut engines = Vec::new();
    for (i, (seat, (_, path))) in seats.into_iter().zip(specs).enumerate() {
        let (backend, mut settings) = (args.backend.clone(), Settings::from(&args));
        // Adapters are the first model's.
        settings.lora = (i == 0 && args.lora.wanted()).then(|| args.lora.clone());
        let thread = std::thread::Builder::new()
            .name(format!("engine {}", seat.model_name()))
            .spawn(move || {
                if let Err(e) = dispatch(&backend, Engine { seat: &seat, path, settings }) {
                    seat.fail(e.to_string());
                }
            })?;
        engines.push(thread);
    }
    let served = server.run();
    for e in engines {
        // A panicking engine thread already printed its message.
        let _ = e.join();
    }
    Ok(served?)
}

/// `NAME=PATH` or `PATH` (named after its file or directory), or the default model.
fn model_spec(arg: Option<&str>) -> Result<(String, PathBuf)> {
    let (name, path) = match arg.map(|a| a.split_once('=').map_or((None, a), |(n, p)| (Some(n), p)))
    {
        Some((name, path)) => (name.map(str::to_string), PathBuf::from(path)),
        None => (None, crate::model_path(None)?),
    };
    let name = name.unwrap_or_else(|| {
        let stem = path.file_stem().or(path.file_name()).map(|s| s.to_string_lossy().into_owned());
        stem.unwrap_or_else(|| path.display().to_string())
    });
    if name.is_empty() {
        return Err(Error::InvalidParameter(format!(
            "--model {}: the name is empty",
            arg.unwrap_or("")
        )));
    }
    Ok((name, path))
}

/// The engine settings every model gets.
#[derive(Clone)]
struct Settings {
    dtype: Option<DType>,
    kv_dtypes: tandem_core::KvDtypes,
    ctx: usize,
    kv_bytes: Option<u64>,
    sched: SchedulerConfig,
    spec: crate::speculate::SpecArgs,
    lora: Option<LoraArgs>,
}

impl From<&ServeArgs> for Settings {
    fn from(a: &ServeArgs) -> Self {
        Settings {
            dtype: a.dtype.map(WeightDtype::dtype),
            kv_dtypes: a.kv.dtypes(),
            ctx: a.ctx,
            kv_bytes: a.kv_cache_memory,
            sched: SchedulerConfig {
                max_seqs: a.max_seqs,
                max_batched_tokens: a.max_batched_tokens,
            },
            spec: a.spec.clone(),
            lora: None,
        }
    }
}

struct Engine<'a> {
    seat: &'a EngineSeat,
    path: PathBuf,
    settings: Settings,
}

impl WithBackend for Engine<'_> {
    fn call<B: Backend>(self, backend: B, another: &dyn Fn() -> Result<B>) -> Result<()> {
        let s = self.settings;
        let source = tandem_core::loader::open(&self.path)?;
        let tokenizer = Tokenizer::load(&source.tokenizer)?;
        let c = &source.config;
        let defaults = ModelOptions::default();
        let context = s.ctx.min(c.max_position);
        let kv_blocks = match s.kv_bytes {
            Some(bytes) => crate::run::kv_blocks_in(bytes, c, s.kv_dtypes)?,
            None => 4 * context.div_ceil(defaults.block_size),
        };
        let opts = ModelOptions {
            weight_dtype: s.dtype,
            kv_dtypes: s.kv_dtypes,
            context,
            kv_blocks: Some(kv_blocks),
            max_step_tokens: s.sched.max_batched_tokens.max(1),
            ..defaults
        };
        let spec = s.spec.open(&tokenizer)?;
        let adapters = s.lora.as_ref().map(|l| l.open(&source.config)).transpose()?;
        let mut model = load_model(backend, &source, &opts)?;
        let adapters = match adapters {
            Some((adapters, lora)) => {
                model.enable_lora(lora)?;
                eprintln!(
                    "LoRA: {} adapters, {} slots of rank {} ({:.1} MiB each)",
                    adapters.len(),
                    lora.slots,
                    model.lora_options().map_or(0, |o| o.rank),
                    model.lora_slot_bytes() as f64 / (1 << 20) as f64
                );
                adapters
            }
            None => vec![],
        };
        let spec = spec.map(|sp| sp.build(another, &opts)).transpose()?;
        eprintln!(
            "serving {} as '{}': context {}, KV pool {} blocks ({} tokens, {} at {} bytes a token)",
            self.path.display(),
            self.seat.model_name(),
            model.context(),
            model.kv.total_blocks(),
            model.kv.capacity(),
            model.kv.dtypes,
            model.config.kv_bytes_per_token(model.kv.dtypes)
        );
        self.seat.serve_adapters(model, tokenizer, s.sched, spec, adapters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn model_specs_name_themselves() {
        assert_eq!(
            model_spec(Some("a=/m/x.gguf")).unwrap(),
            ("a".to_string(), PathBuf::from("/m/x.gguf"))
        );
        assert_eq!(model_spec(Some("/m/stories260K")).unwrap().0, "stories260K");
        assert_eq!(model_spec(Some("/m/SmolLM2.Q4_1.gguf")).unwrap().0, "SmolLM2.Q4_1");
        assert!(model_spec(Some("=/m/x")).is_err());
    }
}
