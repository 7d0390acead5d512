//! A loaded model behind one scheduler: requests in (JSON from the JS layer), text pieces and
//! usage out, for every request the engine runs at once. This is the part of the browser engine
//! that does not touch JavaScript, so it is tested natively; the worker's drive loop
//! (`wasm/drive.rs`) only adds, aborts, steps and routes what [`Session::step`] returns.

use crate::backend::WebBackend;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tandem_core::generate::{FinishReason, GenerateParams};
use tandem_core::lora::Adapter;
use tandem_core::model::{LoraOptions, Model, StreamedModel};
use tandem_core::sampling::SamplingParams;
use tandem_core::scheduler::{
    self, AdapterInfo, Event, RequestId, Scheduler, SchedulerConfig, Speculation,
};
use tandem_core::tokenizer::{ChatMessage, ChatTemplateKwargs, Tokenizer};
use tandem_core::tools::request::{openai_tool_calls, template_tool_calls, Fields, Structured};
use tandem_core::tools::{ToolCall, ToolChoice, ToolEvent, ToolStream};
use tandem_core::{Error, Result};

/// A generation request, as the JS layer sends it (JSON). Either `prompt` (see [`Prompt`]) or
/// `messages` (rendered with the model's chat template). Unknown fields are ignored, so
/// OpenAI-shaped requests pass.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Request {
    pub prompt: Option<Prompt>,
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
    /// The LoRA adapter to run through, by the name it was loaded under
    /// ([`Session::add_adapter`]); a name no adapter has is an error.
    pub adapter: Option<String>,
    /// OpenAI's `model`: a loaded adapter's name runs through that adapter, as servers serve
    /// adapters under their names; any other name runs the base model.
    pub model: Option<String>,
    /// Structured output and tools, as OpenAI's chat API takes them: `response_format`,
    /// tandem's `regex` and `grammar` (+ `grammar_syntax`), `tools`, `tool_choice`,
    /// `parallel_tool_calls`.
    #[serde(flatten)]
    pub structured: Fields,
}

/// OpenAI's `prompt`: plain text (BOS is added when the tokenizer asks for it, or when the
/// prompt is empty), or token ids, fed exactly as given (no BOS).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// OpenAI's `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// What a generation cost and why it ended (JSON to the JS layer).
#[derive(Debug, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// OpenAI's reasons: "stop" (end of sequence or a stop string), "length" (max_tokens or a
    /// full context), plus "interrupted".
    pub finish_reason: &'static str,
    /// tandem's own: "eos", "stop_string", "max_tokens", "context", "interrupted".
    pub finish_detail: &'static str,
    /// From the request's arrival to its first generated token (its wait for a place in the
    /// batch included).
    pub prefill_ms: f64,
    /// Every later token.
    pub decode_ms: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    /// From the request's arrival to its first step (other requests held the batch or the KV
    /// cache).
    pub queue_ms: f64,
    /// Prompt tokens whose KV came from the prefix cache (an earlier request's same start).
    pub cached_tokens: usize,
    /// Times the request gave its KV cache up to others and was recomputed later.
    pub preemptions: usize,
    /// Speculative decoding (`draftModel` / `speculate`): draft tokens the model verified,
    /// and how many it accepted.
    pub draft_tokens: usize,
    pub accepted_tokens: usize,
    /// Generated ids, the end-of-sequence token included if it ended the run.
    pub token_ids: Vec<u32>,
    /// The calls recognized in the output when tools were offered (OpenAI's `tool_calls`:
    /// `{id, type, function: {name, arguments}}`, arguments a JSON string); their text is not
    /// in the streamed content. finish_reason is then "tool_calls".
    pub tool_calls: Vec<serde_json::Value>,
}

/// Facts about the loaded model (JSON to the JS layer).
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub format: String,
    pub architecture: String,
    pub vocab_size: usize,
    /// Most tokens (prompt and generated) one request may reach.
    pub context: usize,
    pub weight_bytes: usize,
    pub has_chat_template: bool,
    /// Most requests generating in one step; more wait their turn.
    pub max_seqs: usize,
    /// Tokens the KV cache holds across every request at once.
    pub kv_tokens: usize,
    /// How the KV cache stores keys and values ("f32", "f16", "q8_0", "q4_0"; "f16/q4_0" for
    /// keys and values of two types), and its bytes a token (every layer's K and V).
    pub kv_dtype: String,
    pub kv_bytes_per_token: usize,
    /// LoRA adapters the backend holds at once (0: adapters are off), and the largest rank.
    pub max_loras: usize,
    pub max_lora_rank: usize,
}

/// A loaded model's memory (JSON from the browser engine's `stats()`), in bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryStats {
    pub weights_bytes: u64,
    /// One block of every layer's K and V (block size x `kv_bytes_per_token`).
    pub kv_block_bytes: u64,
    pub kv_blocks_total: usize,
    /// Blocks held by requests running or waiting.
    pub kv_blocks_used: usize,
    /// Idle blocks kept for their prefix (counted as free: a request may take them).
    pub kv_blocks_cached: usize,
    pub kv_bytes_total: u64,
    pub kv_bytes_used: u64,
    pub kv_bytes_free: u64,
    /// The activation buffers' bytes as planned (an estimate, not measured).
    pub scratch_bytes: u64,
}

/// What [`Session::add`] did with a request.
#[derive(Debug)]
pub enum Added {
    /// Queued; its output comes from [`Session::step`] under this id.
    Queued(RequestId),
    /// Nothing to generate (`max_tokens` 0): already done.
    Done(Usage),
}

/// What a step produced for one request: text pieces, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Output {
    Text(String),
    Done(Usage),
    Failed(Error),
}

/// What a request's usage needs beyond the scheduler's.
struct Running {
    token_ids: Vec<u32>,
    /// max_tokens was cut to the room left in the context: reaching it ends as "context".
    clamped: bool,
    /// Tools were offered: the output's calls are recognized, and those found so far.
    tools: Option<ToolStream>,
    calls: Vec<ToolCall>,
}

pub struct Session {
    scheduler: Scheduler<WebBackend, Model<WebBackend>, Tokenizer>,
    pub info: ModelInfo,
    running: HashMap<RequestId, Running>,
}

impl Session {
    /// A model streamed in ([`tandem_core::model::ModelStream`]) with its tokenizer, serving up
    /// to `max_seqs` requests per step.
    /// With `lora`, the model holds that many LoRA adapters at once (see
    /// [`Session::add_adapter`]).
    pub fn new(
        streamed: StreamedModel<WebBackend>,
        max_seqs: usize,
        lora: Option<LoraOptions>,
    ) -> Result<Session> {
        let StreamedModel { mut model, tokenizer, format } = streamed;
        let tokenizer = Tokenizer::load(&tokenizer)?;
        if let Some(opts) = lora {
            model.enable_lora(opts)?;
        }
        let lora = model.lora_options();
        let info = ModelInfo {
            format,
            architecture: format!("{:?}", model.config.arch).to_lowercase(),
            vocab_size: model.config.vocab_size,
            context: model.context(),
            weight_bytes: model.weights.bytes,
            has_chat_template: tokenizer.chat_template().is_some(),
            max_seqs,
            kv_tokens: model.kv.capacity(),
            kv_dtype: model.kv.dtypes.to_string(),
            kv_bytes_per_token: model.config.kv_bytes_per_token(model.kv.dtypes),
            max_loras: lora.map_or(0, |o| o.slots),
            max_lora_rank: lora.map_or(0, |o| o.rank),
        };
        let config = SchedulerConfig { max_seqs, max_batched_tokens: model.max_step_tokens() };
        let scheduler = Scheduler::new(model, tokenizer, config)?;
        Ok(Session { scheduler, info, running: HashMap::new() })
    }

    /// Speculative decoding for the requests that decode from now on: n-gram drafting from
    /// each request's own text, or `draft`'s model (another session's, loaded with the same
    /// tokenizer) proposing up to `tokens` at a time. The output stays this model's own.
    pub fn speculate(&mut self, draft: Option<Session>, tokens: usize) -> Result<()> {
        if tokens == 0 {
            return Err(Error::InvalidParameter("draft tokens must be at least 1".into()));
        }
        let spec = match draft {
            None => Speculation::ngram(tokens),
            Some(d) => {
                if !self.scheduler.tokenizer().interchangeable(d.scheduler.tokenizer())? {
                    return Err(Error::InvalidParameter("the draft model's tokenizer differs from the model's: a draft must share it".into()));
                }
                Speculation::draft_model(d.scheduler.into_model()?, tokens)
            }
        };
        self.scheduler.set_speculation(Some(spec)).map(|_| ())
    }

    /// Reads a LoRA adapter for this model: PEFT's files (`adapter_config.json`'s text and
    /// `adapter_model.safetensors`' bytes), or with no config a LoRA GGUF's bytes (llama.cpp's
    /// `convert_lora_to_gguf.py`). Needs no access to the running requests, so the adapter
    /// can be read while they generate and added between two steps.
    pub fn read_adapter(&self, peft_config: Option<&str>, weights: Vec<u8>) -> Result<Adapter> {
        if self.info.max_loras == 0 {
            return Err(Error::InvalidParameter(
                "LoRA adapters are off: create the engine with maxLoras (adapters held at once)"
                    .into(),
            ));
        }
        let config = &self.scheduler.model().config;
        let adapter = match peft_config {
            Some(json) => Adapter::from_peft(json, &weights, config)?,
            None => Adapter::from_gguf_bytes(weights, config)?,
        };
        let max = self.info.max_lora_rank;
        if adapter.rank() > max {
            return Err(Error::InvalidParameter(format!(
                "the adapter has rank {}, above the engine's largest ({max}): create the engine with maxLoraRank of at least {}",
                adapter.rank(),
                adapter.rank()
            )));
        }
        Ok(adapter)
    }

    /// Registers `adapter` under `name`: requests name it in `adapter` (or `model`) from now
    /// on. Up to `max_loras` adapters are on the backend at once; more wait their turn for a
    /// slot, least recently used first.
    pub fn add_adapter(&mut self, name: &str, adapter: Adapter) -> Result<()> {
        self.scheduler.add_adapter(name, Arc::new(adapter))
    }

    /// Unregisters `name`: new requests for it are refused; its running ones finish first.
    pub fn remove_adapter(&mut self, name: &str) -> Result<()> {
        self.scheduler.remove_adapter(name)
    }

    /// The adapters registered, in order.
    pub fn adapters(&self) -> Vec<AdapterInfo> {
        self.scheduler.adapters()
    }

    /// The adapter a request runs through: `adapter` (which must exist), or `model` when it
    /// names one.
    fn adapter_of(&self, req: &Request) -> Option<String> {
        if req.adapter.is_some() {
            return req.adapter.clone();
        }
        let model = req.model.as_deref()?;
        self.adapters().iter().any(|a| a.name == model && !a.removing).then(|| model.to_string())
    }

    /// The prompt's token ids, as `tandem run` builds them; a chat with the tools offered.
    fn prompt_ids(
        &self,
        req: &Request,
        structured: &Structured,
        choice: &ToolChoice,
    ) -> Result<Vec<u32>> {
        let tok = self.scheduler.tokenizer();
        match (&req.prompt, &req.messages) {
            (Some(_), Some(_)) => {
                Err(Error::InvalidParameter("give either prompt or messages, not both".into()))
            }
            (None, None) => {
                Err(Error::InvalidParameter("the request has neither prompt nor messages".into()))
            }
            (None, Some(messages)) => {
                if messages.is_empty() {
                    return Err(Error::InvalidParameter("messages is empty".into()));
                }
                let mut messages = messages.clone();
                for (i, m) in messages.iter_mut().enumerate() {
                    if let Some(serde_json::Value::Array(calls)) = &m.tool_calls {
                        m.tool_calls = Some(template_tool_calls(i, calls)?);
                    }
                }
                if let Some(prompt) = structured.generic_prompt(choice) {
                    match messages.first_mut().filter(|m| m.role == "system") {
                        Some(system) => system.content = format!("{}\n\n{prompt}", system.content),
                        None => messages.insert(0, ChatMessage::new("system", prompt)),
                    }
                }
                let mut kwargs = ChatTemplateKwargs::new();
                if let Some(tools) = structured.template_tools() {
                    kwargs.insert("tools".into(), tools);
                }
                tok.encode(&tok.apply_chat_template_with(&messages, true, &kwargs)?)
            }
            (Some(Prompt::Ids(ids)), None) => {
                if ids.is_empty() {
                    return Err(Error::InvalidParameter("the prompt's token ids are empty".into()));
                }
                let vocab = self.info.vocab_size;
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(Error::InvalidParameter(format!(
                        "prompt token id {bad} is outside the vocabulary (size {vocab})"
                    )));
                }
                Ok(ids.clone())
            }
            (Some(Prompt::Text(prompt)), None) => {
                let mut ids = Vec::new();
                if prompt.is_empty() || tok.add_bos() {
                    ids.push(tok.bos_id().ok_or_else(|| {
                        Error::Tokenizer("the model has no BOS token to start from".into())
                    })?);
                }
                ids.extend(tok.encode(prompt)?);
                Ok(ids)
            }
        }
    }

    /// Queues `req` to join the next step. Bad parameters, and a prompt that could never fit
    /// the context or the KV cache, are errors here. Like a lone generation, a request may ask
    /// for more tokens than the context has room for: it then ends when the context is full.
    pub fn add(&mut self, req: &Request) -> Result<Added> {
        let tok = self.scheduler.tokenizer();
        let template = req.messages.as_ref().map(|_| tok.chat_template().unwrap_or_default());
        let (structured, choice) = req.structured.resolve(template)?;
        let prompt = self.prompt_ids(req, &structured, &choice)?;
        let mut params = generate_params(req)?;
        params.adapter = self.adapter_of(req);
        params.constraint =
            structured.constraint(self.scheduler.tokenizer(), self.info.vocab_size)?;
        params.validate()?;
        if params.max_tokens == 0 {
            if prompt.len() > self.info.context {
                return Err(Error::PromptTooLong {
                    prompt: prompt.len(),
                    context: self.info.context,
                });
            }
            let usage = Usage {
                prompt_tokens: prompt.len(),
                total_tokens: prompt.len(),
                finish_reason: "length",
                finish_detail: "max_tokens",
                ..Usage::default()
            };
            return Ok(Added::Done(usage));
        }
        // One request may fill the context, or the whole KV cache if that is smaller (it then
        // runs alone); a prompt that leaves no room for one token is the scheduler's error.
        let room = self.info.context.min(self.info.kv_tokens).saturating_sub(prompt.len());
        let clamped = params.max_tokens > room;
        params.max_tokens = params.max_tokens.min(room).max(1);
        let id = self.scheduler.add(prompt, params)?;
        let tools = structured.syntax().map(ToolStream::new);
        self.running.insert(id, Running { token_ids: Vec::new(), clamped, tools, calls: vec![] });
        Ok(Added::Queued(id))
    }

    /// Ends request `id` now; its `Done` (finish_reason "interrupted") comes with the next step.
    /// False if it is not running (already finished, or never added).
    pub fn abort(&mut self, id: RequestId) -> bool {
        self.scheduler.abort(id)
    }

    /// Ends every request, as [`Session::abort`] does.
    pub fn abort_all(&mut self) {
        for id in self.running.keys().copied().collect::<Vec<_>>() {
            self.scheduler.abort(id);
        }
    }

    /// What the model holds now: weights, the KV pool (blocks in use: a request's own, not
    /// the idle cached prefixes another request may reuse) and the activation estimate.
    pub fn memory(&self) -> MemoryStats {
        let model = self.scheduler.model();
        let kv = self.scheduler.kv_blocks();
        let config = &model.config;
        let (block_bytes, _) =
            tandem_core::memory::kv_block_bytes(config, model.kv.dtypes, kv.block_size());
        let cap = model.max_step_tokens().min(self.info.context).max(1);
        let (scratch, _, _) =
            tandem_core::memory::activation_bytes(config, cap, self.info.max_seqs);
        let used = kv.total_blocks() - kv.free_blocks();
        MemoryStats {
            weights_bytes: self.info.weight_bytes as u64,
            kv_block_bytes: block_bytes,
            kv_blocks_total: kv.total_blocks(),
            kv_blocks_used: used,
            kv_blocks_cached: kv.cached_blocks(),
            kv_bytes_total: kv.total_blocks() as u64 * block_bytes,
            kv_bytes_used: used as u64 * block_bytes,
            kv_bytes_free: kv.free_blocks() as u64 * block_bytes,
            scratch_bytes: scratch,
        }
    }

    /// Whether [`Session::step`] has anything to do or report.
    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    /// Runs one step over every running request (requests added since the last one join it)
    /// and returns what each produced, in order.
    pub async fn step(&mut self) -> Vec<(RequestId, Output)> {
        let mut out = Vec::new();
        for (id, event) in self.scheduler.step().await {
            match event {
                Event::Token { id: token, text, .. } => {
                    let r = self.running.get_mut(&id);
                    if let Some(r) = r {
                        r.token_ids.push(token);
                        content(&mut out, id, r, &text, false);
                    } else if !text.is_empty() {
                        out.push((id, Output::Text(text)));
                    }
                }
                Event::Finished { reason, text, usage } => {
                    let mut r = self.running.remove(&id).unwrap_or(Running {
                        token_ids: Vec::new(),
                        clamped: false,
                        tools: None,
                        calls: vec![],
                    });
                    content(&mut out, id, &mut r, &text, true);
                    out.push((id, Output::Done(usage_of(id, r, reason, &usage))));
                }
                Event::Failed(e) => {
                    self.running.remove(&id);
                    out.push((id, Output::Failed(e)));
                }
            }
        }
        out
    }
}

/// Sampling, stop strings and max_tokens from `req`, checked.
fn generate_params(req: &Request) -> Result<GenerateParams> {
    let d = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(d.temperature),
        top_k: req.top_k.unwrap_or(d.top_k),
        top_p: req.top_p.unwrap_or(d.top_p),
        min_p: req.min_p.unwrap_or(d.min_p),
        repetition_penalty: req.repetition_penalty.unwrap_or(d.repetition_penalty),
        seed: req.seed.unwrap_or(d.seed),
        ..d
    };
    sampling.validate()?;
    let stop = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.iter().any(String::is_empty) {
        return Err(Error::InvalidParameter("a stop string is empty".into()));
    }
    let max_tokens = req.max_tokens.unwrap_or(GenerateParams::default().max_tokens);
    Ok(GenerateParams {
        max_tokens,
        sampling,
        stop,
        ignore_eos: req.ignore_eos,
        constraint: None,
        adapter: None,
    })
}

/// A request's new text as outputs: as it is, or through its tool-call recognizer (calls are
/// kept for its usage, the rest is content).
fn content(
    out: &mut Vec<(RequestId, Output)>,
    id: RequestId,
    r: &mut Running,
    text: &str,
    end: bool,
) {
    let Some(stream) = &mut r.tools else {
        if !text.is_empty() {
            out.push((id, Output::Text(text.to_string())));
        }
        return;
    };
    let mut events = stream.push(text);
    if end {
        events.extend(stream.finish());
    }
    for e in events {
        match e {
            ToolEvent::Content(t) if !t.is_empty() => out.push((id, Output::Text(t))),
            ToolEvent::Content(_) => {}
            ToolEvent::Call(c) => r.calls.push(c),
        }
    }
}

fn usage_of(id: RequestId, r: Running, reason: FinishReason, u: &scheduler::Usage) -> Usage {
    let called = !r.calls.is_empty();
    let (finish_reason, finish_detail) = match reason {
        FinishReason::Eos if called => ("tool_calls", "eos"),
        FinishReason::Stop if called => ("tool_calls", "stop_string"),
        FinishReason::Eos => ("stop", "eos"),
        FinishReason::Stop => ("stop", "stop_string"),
        FinishReason::Length if r.clamped => ("length", "context"),
        FinishReason::Length => ("length", "max_tokens"),
        FinishReason::Context => ("length", "context"),
        FinishReason::Interrupted => ("interrupted", "interrupted"),
    };
    let completion = r.token_ids.len();
    Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: completion,
        total_tokens: u.prompt_tokens + completion,
        finish_reason,
        finish_detail,
        prefill_ms: u.ttft_secs * 1e3,
        decode_ms: u.decode_secs * 1e3,
        prefill_tokens_per_second: rate(u.prompt_tokens, u.ttft_secs),
        // The first token's cost is the prefill's.
        decode_tokens_per_second: rate(completion.saturating_sub(1), u.decode_secs),
        queue_ms: u.queue_secs * 1e3,
        cached_tokens: u.cached_tokens,
        preemptions: u.preemptions,
        draft_tokens: u.draft_tokens,
        accepted_tokens: u.accepted_tokens,
        token_ids: r.token_ids,
        tool_calls: match openai_tool_calls(&format!("web-{id}"), 0, &r.calls) {
            serde_json::Value::Array(v) => v,
            _ => vec![],
        },
    }
}

/// Per second; 0 where nothing was timed (a request aborted before its first token).
fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}
