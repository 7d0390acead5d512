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
use crate::metrics::finish_reason;
use crate::submit::{Kind, Meta, Pending, Totals};

struct State {
    pending: Pending,
    meta: Meta,
    include_usage: bool,
    totals: Totals,
    /// Chunks ready to send (one engine event may make several).
    out: VecDeque<SseEvent>,
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

    fn choice(&self, index: usize, text: Option<&str>, reason: Option<&str>) -> Value {
        match self.meta.kind {
            Kind::Chat => {
                let delta = match text {
                    Some(t) => json!({ "content": t }),
                    None => json!({}),
                };
                json!({ "index": index, "delta": delta, "logprobs": null, "finish_reason": reason })
            }
            Kind::Completion => json!({ "index": index, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": reason }),
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
            Event::Token { text, .. } if !text.is_empty() => {
                let c = self.chunk(json!([self.choice(index, Some(&text), None)]));
                self.out.push_back(c);
            }
            Event::Token { .. } => {}
            Event::Finished { reason, text, usage } => {
                self.totals.add(index, self.meta.n, &usage);
                if !text.is_empty() {
                    let c = self.chunk(json!([self.choice(index, Some(&text), None)]));
                    self.out.push_back(c);
                }
                let c = self.chunk(json!([self.choice(index, None, Some(finish_reason(reason)))]));
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
    let mut state = State { pending, meta, include_usage, totals: Totals::default(), out: VecDeque::new(), done: false };
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
    // Comments while a request waits keep proxies from closing the connection, and let a
    // disconnect be noticed (a write fails) before the first token.
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(5))).into_response()
}
