//! Handing a request to its model's engine, and the responses built from its events. A
//! submitted request is owned by a [`Pending`]: dropping it (the client went away, or axum
//! dropped the handler) aborts whatever has not finished, through the engine's abort path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tandem_core::scheduler::{Event, RequestId, TokenLogprobs, Usage};
use tandem_core::tools::{self, ToolSyntax};
use tokio::sync::mpsc;

use crate::api::Job;
use crate::engine::{Command, ModelHandle, Reject, Reply, Submission};
use crate::errors::ApiError;
use crate::logprobs::{self, TokenNames};
use crate::metrics::finish_reason;
use crate::structured::openai_tool_calls;

/// Which OpenAI endpoint a response is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// The fields every response (and every chunk) repeats.
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub kind: Kind,
    /// Choices per prompt (usage counts each prompt once, as OpenAI does).
    pub n: usize,
    /// Set when the request asked for log-probabilities.
    pub logprobs: Option<Arc<TokenNames>>,
    /// Set when tools were offered: the syntax the model's calls are read in.
    pub tools: Option<ToolSyntax>,
}

impl Meta {
    pub fn new(kind: Kind, model: &str, n: usize, logprobs: Option<Arc<TokenNames>>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        let id =
            format!("{prefix}-{:x}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let created = crate::engine::unix_now();
        Meta { id, created, model: model.to_string(), kind, n, logprobs, tools: None }
    }

    /// Keeps a token's log-probabilities for its choice (if the request asked for them).
    pub fn keep_logprobs(
        &self,
        pending: &mut logprobs::Pending,
        id: u32,
        lp: Option<&TokenLogprobs>,
    ) {
        if let (Some(names), Some(lp)) = (&self.logprobs, lp) {
            pending.push(names, id, lp);
        }
    }

    /// A choice's `logprobs` field: what `pending` holds, or null when not asked for.
    pub fn logprobs_json(&self, pending: &mut logprobs::Pending) -> Value {
        match self.logprobs {
            Some(_) => pending.take(self.kind),
            None => Value::Null,
        }
    }

    pub fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }
}

/// Sends `Abort` for the choices still running when dropped.
struct AbortGuard {
    model: Arc<ModelHandle>,
    ids: Vec<RequestId>,
    live: Vec<bool>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let live: Vec<RequestId> =
            self.ids.iter().zip(&self.live).filter(|(_, &l)| l).map(|(&id, _)| id).collect();
        if !live.is_empty() {
            self.model.send(Command::Abort(live));
        }
    }
}

/// An accepted request's event stream.
pub struct Pending {
    replies: mpsc::UnboundedReceiver<Reply>,
    guard: AbortGuard,
}

impl Pending {
    /// The next event: (choice index, event); `None` once every choice has finished.
    pub async fn next(&mut self) -> Option<(usize, Event)> {
        if !self.guard.live.iter().any(|&l| l) {
            return None;
        }
        match self.replies.recv().await {
            Some(Reply::Event { choice, event }) => {
                if matches!(event, Event::Finished { .. } | Event::Failed(_)) {
                    if let Some(l) = self.guard.live.get_mut(choice) {
                        *l = false;
                    }
                }
                Some((choice, event))
            }
            // The engine only sends Accepted/Rejected first; a closed channel means it stopped.
            Some(_) | None => {
                self.guard.live.iter_mut().for_each(|l| *l = false);
                let e = tandem_core::Error::Backend {
                    backend: "engine".into(),
                    reason: "the model's engine stopped".into(),
                };
                Some((0, Event::Failed(e)))
            }
        }
    }

    pub fn choices(&self) -> usize {
        self.guard.ids.len()
    }
}

/// Queues `job` on `model`'s engine and waits for it to be accepted.
pub async fn submit(model: &Arc<ModelHandle>, job: Job) -> Result<Pending, ApiError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    if !model.send(Command::Submit(Submission { choices: job.choices, replies: tx })) {
        return Err(ApiError::unavailable(format!("the model '{}' has stopped", model.name)));
    }
    match rx.recv().await {
        Some(Reply::Accepted(ids)) => {
            let live = vec![true; ids.len()];
            Ok(Pending { replies: rx, guard: AbortGuard { model: model.clone(), ids, live } })
        }
        Some(Reply::Rejected(Reject::Invalid(e))) => Err(e.into()),
        Some(Reply::Rejected(Reject::QueueFull { limit })) => {
            Err(ApiError::queue_full(&model.name, limit))
        }
        Some(Reply::Rejected(Reject::ShuttingDown)) => {
            Err(ApiError::unavailable("the server is shutting down"))
        }
        Some(Reply::Event { .. }) | None => {
            Err(ApiError::unavailable(format!("the model '{}' has stopped", model.name)))
        }
    }
}

/// Token counts of a whole response.
#[derive(Default)]
pub struct Totals {
    prompt: usize,
    cached: usize,
    completion: usize,
    /// Speculative decoding: draft tokens accepted and rejected by the model.
    accepted: usize,
    rejected: usize,
}

impl Totals {
    /// Adds a finished choice; `n` choices share each prompt, which counts once.
    pub fn add(&mut self, choice: usize, n: usize, u: &Usage) {
        if choice.is_multiple_of(n) {
            self.prompt += u.prompt_tokens;
            self.cached += u.cached_tokens;
        }
        self.completion += u.generated_tokens;
        self.accepted += u.accepted_tokens;
        self.rejected += u.draft_tokens - u.accepted_tokens;
    }

    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": { "cached_tokens": self.cached },
            // OpenAI's names for predicted tokens that were and were not used, here the
            // speculative drafts (0 without speculation).
            "completion_tokens_details": {
                "accepted_prediction_tokens": self.accepted,
                "rejected_prediction_tokens": self.rejected,
            },
        })
    }
}

/// Waits for every choice and builds the whole (non-streaming) response.
pub async fn collect(mut pending: Pending, meta: &Meta) -> Result<Value, ApiError> {
    let mut texts = vec![String::new(); pending.choices()];
    let mut reasons = vec!["abort"; pending.choices()];
    let mut logprobs: Vec<logprobs::Pending> =
        (0..pending.choices()).map(|_| Default::default()).collect();
    let mut totals = Totals::default();
    while let Some((choice, event)) = pending.next().await {
        match event {
            Event::Token { id, text, logprobs: lp } => {
                texts[choice].push_str(&text);
                meta.keep_logprobs(&mut logprobs[choice], id, lp.as_ref());
            }
            Event::Finished { reason, text, usage } => {
                texts[choice].push_str(&text);
                reasons[choice] = finish_reason(reason);
                totals.add(choice, meta.n, &usage);
            }
            Event::Failed(e) => return Err(ApiError::internal(format!("generation failed: {e}"))),
        }
    }
    let choices: Vec<Value> = texts
        .into_iter()
        .zip(reasons)
        .zip(&mut logprobs)
        .enumerate()
        .map(|(index, ((text, reason), lp))| match meta.kind {
            Kind::Chat => {
                let mut message = json!({ "role": "assistant", "content": text });
                let mut reason = reason;
                if let Some(syntax) = meta.tools {
                    let parsed = tools::parse(syntax, &text);
                    if !parsed.calls.is_empty() {
                        message["tool_calls"] = openai_tool_calls(&meta.id, index, &parsed.calls);
                        message["content"] =
                            if parsed.content.is_empty() { Value::Null } else { json!(parsed.content) };
                        reason = if reason == "stop" { "tool_calls" } else { reason };
                    } else {
                        message["content"] = json!(parsed.content);
                    }
                }
                json!({
                    "index": index, "message": message,
                    "logprobs": meta.logprobs_json(lp), "finish_reason": reason,
                })
            }
            Kind::Completion => json!({ "index": index, "text": text, "logprobs": meta.logprobs_json(lp), "finish_reason": reason }),
        })
        .collect();
    Ok(json!({
        "id": meta.id, "object": meta.object(false), "created": meta.created, "model": meta.model,
        "choices": choices, "usage": totals.json(),
    }))
}
