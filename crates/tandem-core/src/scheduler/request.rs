//! A request: what the caller asks for ([`GenerateParams`]), its life inside the scheduler
//! (its tokens, where its KV cache stands) and how it ends: each new token becomes events (text
//! through UTF-8 and stop-string handling, the finish reason and usage).

use web_time::Instant;

use super::speculate::SpecState;
use crate::constraint::Constraint;
use crate::kv::Sequence;
use crate::sampling::{Sampler, SamplingParams, TokenLogprobs};
use crate::tokenizer::{Detokenizer, StopStrings, Tokenizer};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; it is not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Structured output: what the output must be, compiled for this request
    /// ([`crate::constraint::Constrainer::compile`]). It ends when the grammar is complete
    /// (its end-of-sequence token forced then).
    pub constraint: Option<Constraint>,
    /// The LoRA adapter it runs through, by the name it was registered under
    /// ([`super::Scheduler::add_adapter`]); `None` for the base model.
    pub adapter: Option<String>,
}

/// Most stop strings one request may give, and the longest one in bytes. After every token the
/// held-back text (shorter than the longest stop string) is matched against each of them, so
/// these two bound that work; real requests use a handful of short strings (OpenAI allows 4).
pub const MAX_STOP_STRINGS: usize = 32;
pub const MAX_STOP_BYTES: usize = 256;

impl GenerateParams {
    /// Rejects what no run could honour: invalid sampling parameters, too many or too long
    /// stop strings.
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        // A dormant constraint (a tool call `auto` may start) allows them: the text before it
        // is free.
        let holds = self.constraint.as_ref().is_some_and(|c| !c.is_dormant());
        if holds && !self.stop.is_empty() {
            return Err(Error::InvalidParameter(
                "stop strings cannot be combined with a constraint (response_format, a regex or \
                 a grammar): they would cut the output short of its structure"
                    .into(),
            ));
        }
        if self.constraint.is_some() && self.ignore_eos {
            return Err(Error::InvalidParameter(
                "ignore_eos cannot be combined with a constraint: a complete output ends it".into(),
            ));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(Error::InvalidParameter(format!(
                "stop: at most {MAX_STOP_STRINGS} stop strings, got {}",
                self.stop.len()
            )));
        }
        if let Some(s) = self.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(Error::InvalidParameter(format!(
                "stop: a stop string may have at most {MAX_STOP_BYTES} bytes, got one of {}",
                s.len()
            )));
        }
        Ok(())
    }
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            constraint: None,
            adapter: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string appeared, or a constrained output is complete.
    Stop,
    /// max_tokens reached.
    Length,
    /// The context is full.
    Context,
    /// The caller asked to stop (an abort).
    Interrupted,
}

pub type RequestId = u64;

/// What a request reports, in order: a `Token` per generated token, then one `Finished` (or
/// one `Failed`).
#[derive(Debug)]
pub enum Event {
    /// A generated token and the text it completed (often empty; held back while it could be
    /// part of a stop string or an incomplete character), with its log-probabilities when the
    /// request asked for them ([`crate::sampling::SamplingParams::logprobs`]).
    Token { id: u32, text: String, logprobs: Option<TokenLogprobs> },
    /// The end, with the text still held back (if any).
    Finished { reason: FinishReason, text: String, usage: Usage },
    /// The engine failed while running this request; its blocks are freed.
    Failed(Error),
}

/// What a request cost, reported when it finishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (not computed) at admission.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// Times the request was preempted (its KV freed, recomputed later).
    pub preemptions: usize,
    /// Speculative decoding: draft tokens the target verified, and how many it accepted
    /// (each accepted one is a generated token that cost no step of its own).
    pub draft_tokens: usize,
    pub accepted_tokens: usize,
    /// From submission to its first scheduled step.
    pub queue_secs: f64,
    /// From submission to its first generated token.
    pub ttft_secs: f64,
    /// From its first generated token to its last.
    pub decode_secs: f64,
}

/// A request inside the scheduler: its tokens so far, its sampler and random draws, its block
/// tables (the target's and the draft model's), and what turns its tokens into events.
pub(super) struct Request {
    pub id: RequestId,
    /// The prompt, then every generated token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub params: GenerateParams,
    pub sampler: Sampler,
    /// Where the output stands in its grammar (taken out of `params`); `None` while its next
    /// masks are being computed, and for unconstrained requests.
    pub constraint: Option<Constraint>,
    /// Why its constraint could not give the last step's masks: the request fails at commit.
    pub constraint_error: Option<Error>,
    pub kv: Sequence,
    /// Its LoRA adapter (see `adapters`), and the model slot that adapter is in while it has
    /// one (always, once the request runs).
    pub adapter: Option<super::adapters::AdapterId>,
    pub lora_slot: Option<usize>,
    pub spec: SpecState,
    detok: Detokenizer,
    stops: StopStrings,
    pub usage: Usage,
    /// Whether the request has been admitted once (usage counts its first admission).
    pub admitted: bool,
    submitted: Instant,
    first_token: Option<Instant>,
}

impl Request {
    pub fn new(
        id: RequestId,
        prompt: Vec<u32>,
        mut params: GenerateParams,
        sampler: Sampler,
    ) -> Self {
        let stops = StopStrings::new(params.stop.clone());
        let constraint = params.constraint.take();
        let usage = Usage { prompt_tokens: prompt.len(), ..Usage::default() };
        Request {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            params,
            sampler,
            constraint,
            constraint_error: None,
            kv: Sequence::default(),
            adapter: None,
            lora_slot: None,
            spec: SpecState::default(),
            detok: Detokenizer::default(),
            stops,
            usage,
            admitted: false,
            submitted: Instant::now(),
            first_token: None,
        }
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Positions whose K/V are in the cache.
    pub fn computed(&self) -> usize {
        self.kv.len
    }

    /// Records the first admission: queue time and prompt tokens found in the cache.
    pub fn admit(&mut self, cached: usize) {
        if !self.admitted {
            self.admitted = true;
            self.usage.queue_secs = self.submitted.elapsed().as_secs_f64();
            self.usage.cached_tokens = cached.min(self.prompt_len);
        }
    }

    /// Takes a generated token: its events, and the finish reason if it ends the request.
    pub fn push_token(
        &mut self,
        tok: &Tokenizer,
        id: u32,
        logprobs: Option<TokenLogprobs>,
        context: usize,
    ) -> Result<(Event, Option<FinishReason>)> {
        let now = Instant::now();
        if self.first_token.is_none() {
            self.first_token = Some(now);
            self.usage.ttft_secs = now.duration_since(self.submitted).as_secs_f64();
        }
        self.tokens.push(id);
        self.usage.generated_tokens = self.generated();
        if let Some(c) = &mut self.constraint {
            c.commit(id)?;
        }
        if !self.params.ignore_eos && tok.eos_ids().contains(&id) {
            return Ok((
                Event::Token { id, text: String::new(), logprobs },
                Some(FinishReason::Eos),
            ));
        }
        let piece = self.detok.push(tok, id)?;
        let (text, stopped) = self.stops.push(&piece);
        let complete = self.constraint.as_ref().is_some_and(Constraint::is_finished);
        let finish = if stopped || complete {
            Some(FinishReason::Stop)
        } else if self.generated() >= self.params.max_tokens {
            Some(FinishReason::Length)
        } else if self.tokens.len() > context {
            // The next step would feed this token at a position past the context.
            Some(FinishReason::Context)
        } else {
            None
        };
        Ok((Event::Token { id, text, logprobs }, finish))
    }

    /// The closing event: whatever text was held back (unless a stop string cut it), usage.
    pub fn finish(&mut self, tok: &Tokenizer, mut reason: FinishReason) -> Event {
        let mut text = String::new();
        if reason != FinishReason::Stop {
            // A decode error here only loses the held-back tail, never the request.
            let tail = self.detok.finish(tok).unwrap_or_default();
            let (safe, stopped) = self.stops.push(&tail);
            text.push_str(&safe);
            if stopped {
                reason = FinishReason::Stop;
            } else {
                text.push_str(&self.stops.finish());
            }
        }
        if let Some(first) = self.first_token {
            self.usage.decode_secs = first.elapsed().as_secs_f64();
        }
        Event::Finished { reason, text, usage: self.usage.clone() }
    }
}
