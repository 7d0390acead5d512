//! Streaming responses: server-sent events in OpenAI's chunk format, ending with
//! `data: [DONE]`. The stream owns the request's [`Pending`], so when the client disconnects
//! hyper drops the stream and the request is aborted.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{json, Value};
use tandem_core::scheduler::Event;

use crate::errors::ApiError;
use crate::logprobs;
use crate::metrics::finish_reason;
use crate::structured::openai_tool_calls;
use crate::submit::{Kind, Meta, Pending, Totals};
use tandem_core::tools::{ToolEvent, ToolStream};

struct State {
    pending: Pending,
    meta: Meta,
    include_usage: bool,
    totals: Totals,
    /// Chunks ready to send (one engine event may make several).
    out: VecDeque<SseEvent>,
    /// Each choice's log-probabilities not sent yet: a token whose text is held back sends
    /// its entry with the chunk that carries the text.
    logprobs: Vec<logprobs::Pending>,
    /// With tools: each choice's text through the call recognizer, and the calls it sent.
    calls: Vec<(ToolStream, usize)>,
    done: bool,
}

impl State {
    fn chunk(&self, choices: Value) -> SseEvent {
        let mut c = json!({
            "id": self.meta.id, "object": self.meta.object(true), "created": self.meta.created,
            "model": self.meta.model, "choices": choices,
        });
        if self.include_usage {
            // OpenAI sends `usage: null` on every chunk but the last when usage is asked for.
            c["usage"] = Value::Null;
        }
        SseEvent::default().data(c.to_string())
    }

    fn choice(&mut self, index: usize, text: Option<&str>, reason: Option<&str>) -> Value {
        let logprobs = match self.logprobs.get_mut(index) {
            Some(lp) if !lp.is_empty() => self.meta.logprobs_json(lp),
            _ => Value::Null,
        };
        match self.meta.kind {
            Kind::Chat => {
                let delta = match text {
                    Some(t) => json!({ "content": t }),
                    None => json!({}),
                };
                json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason })
            }
            Kind::Completion => {
                json!({ "index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": reason })
            }
        }
    }

    /// A choice's new text as chunks: content deltas, and with tools each completed call as a
    /// `delta.tool_calls` entry (its whole arguments at once, as OpenAI's clients accept).
    fn text(&mut self, index: usize, text: &str, finish: bool) {
        let Some((stream, _)) = self.calls.get_mut(index) else {
            if !text.is_empty() {
                let choice = self.choice(index, Some(text), None);
                let c = self.chunk(json!([choice]));
                self.out.push_back(c);
            }
            return;
        };
        let mut events = stream.push(text);
        if finish {
            events.extend(stream.finish());
        }
        for e in events {
            match e {
                ToolEvent::Content(t) if t.is_empty() => {}
                ToolEvent::Content(t) => {
                    let choice = self.choice(index, Some(&t), None);
                    let c = self.chunk(json!([choice]));
                    self.out.push_back(c);
                }
                ToolEvent::Call(call) => {
                    let k = self.calls[index].1;
                    self.calls[index].1 += 1;
                    let mut entry = openai_tool_calls(&self.meta.id, index, &[call])[0].clone();
                    entry["index"] = json!(k);
                    let delta = json!({ "tool_calls": [entry] });
                    let c = self.chunk(json!([{ "index": index, "delta": delta, "logprobs": null, "finish_reason": null }]));
                    self.out.push_back(c);
                }
            }
        }
    }

    /// Turns the next engine event into chunks; false once the stream is over.
    async fn advance(&mut self) -> bool {
        let Some((index, event)) = self.pending.next().await else {
            if self.include_usage {
                let c = json!({
                    "id": self.meta.id, "object": self.meta.object(true), "created": self.meta.created,
                    "model": self.meta.model, "choices": [], "usage": self.totals.json(),
                });
                self.out.push_back(SseEvent::default().data(c.to_string()));
            }
            self.out.push_back(SseEvent::default().data("[DONE]"));
            return false;
        };
        match event {
            Event::Token { id, text, logprobs } => {
                if let Some(pending) = self.logprobs.get_mut(index) {
                    self.meta.keep_logprobs(pending, id, logprobs.as_ref());
                }
                self.text(index, &text, false);
            }
            Event::Finished { reason, text, usage } => {
                self.totals.add(index, self.meta.n, &usage);
                self.text(index, &text, true);
                let called = self.calls.get(index).is_some_and(|c| c.1 > 0);
                let reason = match finish_reason(reason) {
                    "stop" if called => "tool_calls",
                    r => r,
                };
                // Entries of tokens that added no text (end of sequence) come with the finish.
                let choice = self.choice(index, None, Some(reason));
                let c = self.chunk(json!([choice]));
                self.out.push_back(c);
            }
            Event::Failed(e) => {
                // Headers are sent already: the error goes in the stream, then it ends.
                let err = ApiError::internal(format!("generation failed: {e}"));
                self.out.push_back(SseEvent::default().data(err.body().to_string()));
                self.out.push_back(SseEvent::default().data("[DONE]"));
                return false;
            }
        }
        true
    }
}

/// The SSE response for an accepted request.
pub fn respond(pending: Pending, meta: Meta, include_usage: bool) -> Response {
    let logprobs = (0..pending.choices()).map(|_| Default::default()).collect();
    let calls = match meta.tools {
        Some(syntax) if meta.kind == Kind::Chat => {
            (0..pending.choices()).map(|_| (ToolStream::new(syntax), 0)).collect()
        }
        _ => vec![],
    };
    let mut state = State {
        pending,
        meta,
        include_usage,
        totals: Totals::default(),
        out: VecDeque::new(),
        logprobs,
        calls,
        done: false,
    };
    if state.meta.kind == Kind::Chat {
        // The role comes first, in a chunk of its own, as OpenAI streams it.
        for i in 0..state.pending.choices() {
            let c = state.chunk(json!([{ "index": i, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }]));
            state.out.push_back(c);
        }
    }
    let events = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.done {
                return None;
            }
            st.done = !st.advance().await;
        }
    });
    // Comments while a request waits keep proxies from closing the connection. A client that
    // disconnects is noticed at once all the same: hyper sees the socket's EOF while the
    // response is under way and drops this stream, whose Pending aborts the request.
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(5))).into_response()
}
