//! The OpenAI request bodies tandem reads, and turning them into the engine's requests. Fields
//! tandem does not know are ignored (clients send many); fields it knows but does not
//! implement are refused when they ask for anything but their default.

use std::hash::{BuildHasher, Hasher};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tandem_core::generate::GenerateParams;
use tandem_core::sampling::SamplingParams;
use tandem_core::tokenizer::{ChatMessage, ChatTemplateKwargs, Tokenizer};

use crate::engine::Ready;
use crate::errors::ApiError;
use crate::structured::{self, Fields};
use tandem_core::tools::{ToolChoice, ToolSyntax};

/// Most choices one request may ask for (n x prompts).
pub const MAX_CHOICES: usize = 128;

/// Most alternatives per token: the completions API's `logprobs` and the chat API's
/// `top_logprobs` (OpenAI's limits).
pub const MAX_COMPLETION_LOGPROBS: u64 = 5;
pub const MAX_CHAT_TOP_LOGPROBS: u64 = 20;

/// Parses a JSON body: malformed JSON is a 400.
pub fn parse(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(value)
}

/// Reads the fields `T` knows from a parsed body; a wrong type is a 400 naming the field.
/// (Endpoint fields and [`Common`] are read apart, as serde's `flatten` loses field paths.)
pub fn fields<T: DeserializeOwned>(body: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| match e.path().to_string() {
        // The body itself (a missing field): the message names the field.
        top if top == "." => ApiError::bad_request(e.inner().to_string()),
        path => ApiError::bad_param(path.clone(), format!("{path}: {}", e.inner())),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The generation fields chat and completions share.
#[derive(Deserialize, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// 0 or -1 (vLLM's spelling) keeps every token.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StringOrList>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize)]
pub struct Message {
    pub role: String,
    /// Null is allowed (an assistant turn that only called tools): it reads as empty.
    pub content: Option<Content>,
    /// An assistant turn's calls (OpenAI's shape), a tool turn's answer to one.
    pub tool_calls: Option<Vec<serde_json::Value>>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    /// Extra chat template variables, as vLLM takes them (`{"enable_thinking": false}`).
    pub chat_template_kwargs: Option<ChatTemplateKwargs>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub logprobs: Option<u64>,
    pub echo: Option<bool>,
    pub best_of: Option<u64>,
    pub suffix: Option<String>,
}

/// What a generation request becomes: one engine request per choice.
pub struct Job {
    pub choices: Vec<(Vec<u32>, GenerateParams)>,
    /// Choices per prompt: choice i is prompt i / n.
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Whether each token's log-probabilities are reported.
    pub logprobs: bool,
    /// Tools were offered: the syntax their calls are read back in.
    pub tools: Option<ToolSyntax>,
}

impl Common {
    /// Builds the engine requests for `prompts` after checking every field's range;
    /// `logprobs` is how many alternatives to report per token (the endpoint's own field).
    pub fn into_job(
        self,
        ready: &Ready,
        prompts: Vec<Vec<u32>>,
        logprobs: Option<usize>,
        structured: &structured::Structured,
    ) -> Result<Job, ApiError> {
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::unsupported("logit_bias", "a non-empty bias"));
        }
        let n = self.n.unwrap_or(1);
        if n == 0 || n as usize > MAX_CHOICES || prompts.len() * n as usize > MAX_CHOICES {
            return Err(ApiError::bad_param("n", format!("n must be in 1..={MAX_CHOICES} (and n x prompts at most {MAX_CHOICES}), got {n}")));
        }
        let top_k = match self.top_k.unwrap_or(0) {
            k if k >= 0 => k as usize,
            -1 => 0,
            k => {
                return Err(ApiError::bad_param(
                    "top_k",
                    format!("top_k must be >= 0 (or -1 for all tokens), got {k}"),
                ))
            }
        };
        let temperature = self.temperature.unwrap_or(1.0);
        let sampling = SamplingParams {
            temperature,
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logprobs,
            // Without a seed every request must differ, as OpenAI's do.
            seed: self.seed.unwrap_or_else(random_seed),
        };
        // The engine names the field in its message.
        sampling.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) | (None, Some(m)) => Some(m),
            (None, None) => None,
        };
        if max_tokens == Some(0) {
            return Err(ApiError::bad_param("max_tokens", "max_tokens must be at least 1"));
        }
        let stop = self.stop.map(StringOrList::into_vec).unwrap_or_default();
        // Compiled once (it has a budget, so a hostile schema is refused, not run), then each
        // choice starts from its own copy.
        let constraint = structured
            .constraint(&ready.tokenizer, ready.vocab)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        // Checked once here, not once per choice.
        let checked = GenerateParams {
            max_tokens: 1,
            sampling: sampling.clone(),
            stop,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            constraint,
            adapter: None,
        };
        checked.validate().map_err(|e| ApiError::bad_param("stop", e.to_string()))?;
        let (stop, constraint) = (checked.stop, checked.constraint);
        let limit = ready.context.min(ready.pool_tokens);
        let mut choices = Vec::with_capacity(prompts.len() * n as usize);
        for prompt in prompts {
            if prompt.len() > ready.context {
                // Refused before it is copied n times.
                return Err(tandem_core::Error::PromptTooLong {
                    prompt: prompt.len(),
                    context: ready.context,
                }
                .into());
            }
            let room = limit.saturating_sub(prompt.len());
            let max_tokens = match max_tokens {
                Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
                // Unset: as much as the context leaves, as vLLM does.
                None if room > 0 => room,
                None => {
                    return Err(ApiError::bad_request(format!(
                        "the prompt has {} tokens, which leaves no room to generate in a context of {limit}",
                        prompt.len()
                    )))
                }
            };
            for i in 0..n {
                // Each choice draws its own tokens; a given seed still repeats the whole set.
                let sampling =
                    SamplingParams { seed: sampling.seed.wrapping_add(i), ..sampling.clone() };
                let params = GenerateParams {
                    max_tokens,
                    sampling,
                    stop: stop.clone(),
                    ignore_eos: self.ignore_eos.unwrap_or(false),
                    constraint: constraint.clone(),
                    adapter: None,
                };
                choices.push((prompt.clone(), params));
            }
        }
        let include_usage = self.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        Ok(Job {
            choices,
            n: n as usize,
            stream: self.stream.unwrap_or(false),
            include_usage,
            logprobs: logprobs.is_some(),
            tools: None,
        })
    }
}

impl ChatRequest {
    /// `logprobs: true` reports the chosen token's and `top_logprobs` alternatives.
    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        let top = self.top_logprobs.unwrap_or(0);
        if top > MAX_CHAT_TOP_LOGPROBS {
            return Err(ApiError::bad_param(
                "top_logprobs",
                format!("top_logprobs must be in 0..={MAX_CHAT_TOP_LOGPROBS}, got {top}"),
            ));
        }
        match self.logprobs {
            Some(true) => Ok(Some(top as usize)),
            _ if top > 0 => {
                Err(ApiError::bad_param("top_logprobs", "top_logprobs needs logprobs: true"))
            }
            _ => Ok(None),
        }
    }

    /// Everything between the parsed body and the engine: log-probabilities, the chat
    /// template, every generation field's range.
    pub fn job(self, common: Common, fields: Fields, ready: &Ready) -> Result<Job, ApiError> {
        let logprobs = self.logprobs()?;
        let template = ready.tokenizer.chat_template().unwrap_or_default();
        let (structured, choice) = structured::resolve(&fields, Some(template))?;
        let prompt = self.prompt(&ready.tokenizer, &structured, &choice)?;
        let tools = structured.syntax();
        let mut job = common.into_job(ready, vec![prompt], logprobs, &structured)?;
        job.tools = tools;
        Ok(job)
    }

    /// Renders the chat template, with the tools where they are offered.
    pub fn prompt(
        &self,
        tok: &Tokenizer,
        structured: &structured::Structured,
        choice: &ToolChoice,
    ) -> Result<Vec<u32>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_param("messages", "messages must not be empty"));
        }
        let mut messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| to_chat(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(prompt) = structured.generic_prompt(choice) {
            match messages.first_mut().filter(|m| m.role == "system") {
                Some(system) => system.content = format!("{}\n\n{prompt}", system.content),
                None => messages.insert(0, ChatMessage::new("system", prompt)),
            }
        }
        let mut kwargs = self.chat_template_kwargs.clone().unwrap_or_default();
        if let Some(tools) = structured.template_tools() {
            kwargs.insert("tools".into(), tools);
        }
        let text = tok.apply_chat_template_with(&messages, true, &kwargs)?;
        Ok(tok.encode(&text)?)
    }
}

fn to_chat(i: usize, m: &Message) -> Result<ChatMessage, ApiError> {
    let content = match &m.content {
        None => String::new(),
        Some(Content::Text(s)) => s.clone(),
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::bad_param(
                            format!("messages[{i}].content[{j}].text"),
                            "a text part needs `text`",
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::unsupported(
                            &format!("messages[{i}].content[{j}]"),
                            &format!("a content part of type '{other}'"),
                        ))
                    }
                }
            }
            s
        }
    };
    let mut out = ChatMessage::new(m.role.clone(), content);
    if let Some(calls) = &m.tool_calls {
        out.tool_calls = Some(structured::template_tool_calls(i, calls)?);
    }
    out.tool_call_id = m.tool_call_id.clone();
    out.name = m.name.clone();
    Ok(out)
}

impl CompletionRequest {
    /// `logprobs: n` reports the chosen token's and n alternatives (0 to 5, as OpenAI).
    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match self.logprobs {
            Some(n) if n > MAX_COMPLETION_LOGPROBS => Err(ApiError::bad_param(
                "logprobs",
                format!("logprobs must be in 0..={MAX_COMPLETION_LOGPROBS}, got {n}"),
            )),
            n => Ok(n.map(|n| n as usize)),
        }
    }

    /// Everything between the parsed body and the engine (see [`ChatRequest::job`]).
    pub fn job(self, common: Common, fields: Fields, ready: &Ready) -> Result<Job, ApiError> {
        let logprobs = self.logprobs()?;
        let (structured, _) = structured::resolve(&fields, None)?;
        let prompts = self.prompts(&ready.tokenizer)?;
        common.into_job(ready, prompts, logprobs, &structured)
    }

    /// The prompts as token ids: text gets BOS where the model wants it (as `tandem run`).
    pub fn prompts(&self, tok: &Tokenizer) -> Result<Vec<Vec<u32>>, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::unsupported("echo", "echoing the prompt"));
        }
        if self.best_of.is_some_and(|b| b > 1) {
            return Err(ApiError::unsupported("best_of", "a value above 1"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::unsupported("suffix", "a suffix (fill-in-the-middle)"));
        }
        let prompts = match &self.prompt {
            Prompt::Text(s) => vec![encode_text(tok, s)?],
            Prompt::Texts(v) => v.iter().map(|s| encode_text(tok, s)).collect::<Result<_, _>>()?,
            Prompt::Ids(ids) => vec![ids.clone()],
            Prompt::IdLists(v) => v.clone(),
        };
        if prompts.is_empty() {
            return Err(ApiError::bad_param("prompt", "prompt must not be an empty list"));
        }
        Ok(prompts)
    }
}

/// A text prompt's ids: BOS first when the model wants it, or when the text is empty (the
/// model needs one token to start from).
pub fn encode_text(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    let mut ids = Vec::new();
    if text.is_empty() || tok.add_bos() {
        match tok.bos_id() {
            Some(b) => ids.push(b),
            None if text.is_empty() => {
                return Err(ApiError::bad_param(
                    "prompt",
                    "the prompt is empty and the model has no BOS token to start from",
                ))
            }
            None => {}
        }
    }
    ids.extend(tok.encode(text)?);
    Ok(ids)
}

/// A seed for requests that give none: RandomState is seeded from the OS per process and
/// differs per instance.
fn random_seed() -> u64 {
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[derive(Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    /// BOS for a prompt (default true); a chat template adds its own.
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
    pub chat_template_kwargs: Option<ChatTemplateKwargs>,
}

impl TokenizeRequest {
    pub fn tokens(&self, tok: &Tokenizer) -> Result<Vec<u32>, ApiError> {
        match (&self.prompt, &self.messages) {
            (Some(p), None) if self.add_special_tokens.unwrap_or(true) => encode_text(tok, p),
            (Some(p), None) => Ok(tok.encode(p)?),
            (None, Some(m)) => {
                let messages = m
                    .iter()
                    .enumerate()
                    .map(|(i, m)| to_chat(i, m))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(tok.encode(&tok.apply_chat_template_with(
                    &messages,
                    self.add_generation_prompt.unwrap_or(true),
                    &self.chat_template_kwargs.clone().unwrap_or_default(),
                )?)?)
            }
            _ => Err(ApiError::bad_request("give exactly one of `prompt` or `messages`")),
        }
    }
}

#[derive(Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

impl DetokenizeRequest {
    /// The text of `tokens`, special tokens included; an id outside the vocabulary is a 400.
    pub fn text(&self, ready: &Ready) -> Result<String, ApiError> {
        if let Some(&t) = self.tokens.iter().find(|&&t| t as usize >= ready.vocab) {
            return Err(ApiError::bad_param(
                "tokens",
                format!("token id {t} is outside the vocabulary of {}", ready.vocab),
            ));
        }
        Ok(ready.tokenizer.decode(&self.tokens, false)?)
    }
}
