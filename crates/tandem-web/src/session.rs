//! A loaded model and its tokenizer, and one generation request in, usage out. This is the
//! part of the browser engine that does not touch JavaScript, so it is tested natively.

use crate::backend::WebBackend;
use serde::{Deserialize, Serialize};
use tandem_core::generate::{generate_interruptible, FinishReason, GenerateParams};
use tandem_core::loader::ModelSource;
use tandem_core::model::{Model, ModelOptions, StreamedModel};
use tandem_core::sampling::SamplingParams;
use tandem_core::tokenizer::{ChatMessage, Tokenizer};
use tandem_core::{Backend, Error, Result};

/// A generation request, as the JS layer sends it (JSON). Either `prompt` (plain text; BOS is
/// added when the tokenizer asks for it, or when the prompt is empty) or `messages` (rendered
/// with the model's chat template). Unknown fields are ignored, so OpenAI-shaped requests pass.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Request {
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    /// Keep generating past end-of-sequence tokens (tests, benchmarks).
    pub ignore_eos: bool,
}

/// OpenAI's `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// What a generation cost and why it ended (JSON to the JS layer).
#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// OpenAI's reasons: "stop" (end of sequence or a stop string), "length" (max_tokens or a
    /// full context), plus "interrupted".
    pub finish_reason: &'static str,
    /// tandem's own: "eos", "stop_string", "max_tokens", "context", "interrupted".
    pub finish_detail: &'static str,
    /// Prompt processing up to the first generated token.
    pub prefill_ms: f64,
    /// Every later token.
    pub decode_ms: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    /// Generated ids, the end-of-sequence token included if it ended the run.
    pub token_ids: Vec<u32>,
}

/// Facts about the loaded model (JSON to the JS layer).
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub format: String,
    pub architecture: String,
    pub vocab_size: usize,
    pub context: usize,
    pub weight_bytes: usize,
    pub has_chat_template: bool,
}

pub struct Session {
    pub model: Model<WebBackend>,
    pub tokenizer: Tokenizer,
    pub info: ModelInfo,
}

impl Session {
    /// Loads `source` onto `backend`; `progress(done, total)` counts tensors uploaded.
    pub fn load(source: ModelSource, backend: WebBackend, opts: &ModelOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Session> {
        let model = Model::load(backend, &source, opts, progress)?;
        Self::new(StreamedModel { model, tokenizer: source.tokenizer, format: source.format })
    }

    /// A model streamed in ([`tandem_core::model::ModelStream`]), with its tokenizer.
    pub fn new(streamed: StreamedModel<WebBackend>) -> Result<Session> {
        let StreamedModel { model, tokenizer, format } = streamed;
        let tokenizer = Tokenizer::load(&tokenizer)?;
        let info = ModelInfo {
            format,
            architecture: format!("{:?}", model.config.arch).to_lowercase(),
            vocab_size: model.config.vocab_size,
            context: model.context(),
            weight_bytes: model.weights.bytes,
            has_chat_template: tokenizer.chat_template().is_some(),
        };
        Ok(Session { model, tokenizer, info })
    }

    pub fn backend_name(&self) -> String {
        self.model.backend.name()
    }

    /// The prompt's token ids, as `tandem run` builds them.
    pub fn prompt_ids(&self, req: &Request) -> Result<Vec<u32>> {
        let tok = &self.tokenizer;
        match (&req.prompt, &req.messages) {
            (Some(_), Some(_)) => Err(Error::InvalidParameter("give either prompt or messages, not both".into())),
            (None, None) => Err(Error::InvalidParameter("the request has neither prompt nor messages".into())),
            (None, Some(messages)) => {
                if messages.is_empty() {
                    return Err(Error::InvalidParameter("messages is empty".into()));
                }
                tok.encode(&tok.apply_chat_template(messages, true)?)
            }
            (Some(prompt), None) => {
                let mut ids = Vec::new();
                if prompt.is_empty() || tok.add_bos() {
                    ids.push(tok.bos_id().ok_or_else(|| Error::Tokenizer("the model has no BOS token to start from".into()))?);
                }
                ids.extend(tok.encode(prompt)?);
                Ok(ids)
            }
        }
    }

    /// Runs `req`, calling `on_text` with each piece of text; stops early when `interrupted`
    /// says so (asked between tokens).
    pub async fn generate(&mut self, req: &Request, on_text: &mut dyn FnMut(&str), interrupted: &dyn Fn() -> bool) -> Result<Usage> {
        let prompt = self.prompt_ids(req)?;
        let d = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: req.temperature.unwrap_or(d.temperature),
            top_k: req.top_k.unwrap_or(d.top_k),
            top_p: req.top_p.unwrap_or(d.top_p),
            min_p: req.min_p.unwrap_or(d.min_p),
            repetition_penalty: req.repetition_penalty.unwrap_or(d.repetition_penalty),
            seed: req.seed.unwrap_or(d.seed),
        };
        let stop = match &req.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.iter().any(String::is_empty) {
            return Err(Error::InvalidParameter("a stop string is empty".into()));
        }
        let max_tokens = req.max_tokens.unwrap_or(GenerateParams::default().max_tokens);
        let params = GenerateParams { max_tokens, sampling, stop, ignore_eos: req.ignore_eos };
        let gen = generate_interruptible(&mut self.model, &self.tokenizer, &prompt, &params, on_text, interrupted).await?;
        let (finish_reason, finish_detail) = match gen.finish {
            FinishReason::Eos => ("stop", "eos"),
            FinishReason::Stop => ("stop", "stop_string"),
            FinishReason::Length => ("length", "max_tokens"),
            FinishReason::Context => ("length", "context"),
            FinishReason::Interrupted => ("interrupted", "interrupted"),
        };
        Ok(Usage {
            prompt_tokens: gen.prompt_tokens,
            completion_tokens: gen.tokens.len(),
            total_tokens: gen.prompt_tokens + gen.tokens.len(),
            finish_reason,
            finish_detail,
            prefill_ms: gen.prefill_secs * 1e3,
            decode_ms: gen.decode_secs * 1e3,
            prefill_tokens_per_second: gen.prefill_tok_per_sec(),
            decode_tokens_per_second: gen.decode_tok_per_sec(),
            token_ids: gen.tokens,
        })
    }
}
