//! Continuous batching: one scheduler for every front end (the CLI, the browser worker, the
//! HTTP server). Requests join a waiting queue; every [`Scheduler::step`] runs one forward
//! step over a ragged batch: the running sequences' decodes first, then prompt chunks of
//! waiting requests under a token budget and a sequence cap, first come first served.
//! Sequences join and leave between steps.
//!
//! It is async and owns no threads, so the same code runs natively and in a browser worker:
//! the caller drives it (`while scheduler.has_work() { scheduler.step().await }`) and routes
//! the returned events.
//!
//! KV pressure never loses a request: a request is admitted only when the blocks of its whole
//! prompt can be had; when blocks run out mid-generation, the most recently admitted running
//! sequence is preempted (its blocks freed) and goes back to the front of the queue, to be
//! recomputed later, continuing where it stopped. Prompt positions are recomputed as prompt
//! rows and generated ones as decode rows, one per step, so every row gets the arithmetic it
//! had the first time (batch invariance), and the prefix cache usually still holds most of it.

mod request;
mod speculate;

use std::borrow::{Borrow, BorrowMut};
use std::collections::VecDeque;
use std::marker::PhantomData;

pub use crate::sampling::TokenLogprobs;
use request::SeqState;
pub use request::{Event, RequestId, Usage};
pub use speculate::{ngram_draft, Drafter, Speculation, MAX_DRAFT_TOKENS};

use crate::backend::Backend;
use crate::generate::{FinishReason, GenerateParams};
use crate::model::{Chunk, ChunkOut, Model, RowWant};
use crate::ops::SampleRow;
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences in one step.
    pub max_seqs: usize,
    /// Most tokens in one step (capped at the model's step size).
    pub max_batched_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { max_seqs: 64, max_batched_tokens: 512 }
    }
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub steps: u64,
    pub preemptions: u64,
    /// Most KV blocks in use (not free, not idle-cached) after any step.
    pub peak_blocks_used: usize,
    /// Prompt tokens taken from the prefix cache instead of computed.
    pub cached_prompt_tokens: u64,
    /// Speculative decoding: draft tokens verified, and how many of them were accepted.
    pub draft_tokens: u64,
    pub accepted_tokens: u64,
}

/// Generic over how it holds the model and the tokenizer: owned (a server's scheduler lives as
/// long as its model) or borrowed (one generation on a caller's model, [`crate::generate`]).
pub struct Scheduler<
    B: Backend,
    M: BorrowMut<Model<B>> = Model<B>,
    T: Borrow<Tokenizer> = std::sync::Arc<Tokenizer>,
> {
    model: M,
    tokenizer: T,
    config: SchedulerConfig,
    waiting: VecDeque<SeqState>,
    /// In admission order: the last is the first to be preempted.
    running: Vec<SeqState>,
    /// Events produced outside a step (aborts), handed out by the next step.
    outbox: Vec<(RequestId, Event)>,
    next_id: RequestId,
    pub stats: SchedulerStats,
    /// Speculative decoding, when on.
    spec: Option<Speculation<B>>,
    backend: PhantomData<B>,
}

/// One scheduled chunk: a running sequence's index, how many tokens from its computed
/// position, whether they are decode rows, and whether they produce its next token. A
/// verification's chunk is its last token and then its draft (len = 1 + draft.len()).
struct Planned {
    seq: usize,
    len: usize,
    decode: bool,
    samples: bool,
    /// Draft tokens wanted (a draft model fills `draft` up to this before the step).
    k: usize,
    draft: Vec<u32>,
}

/// What a planned chunk asks of the step, owned until the chunks borrow it.
enum Want {
    None,
    Token(SampleRow),
    /// One token per row of a verification; `peeked` when the rows used the request's next
    /// random draws, which are taken only for the tokens it emits.
    Tokens {
        rows: Vec<SampleRow>,
        peeked: bool,
    },
    Logits,
    AllLogits,
}

impl<B: Backend, M: BorrowMut<Model<B>>, T: Borrow<Tokenizer>> Scheduler<B, M, T> {
    pub fn new(model: M, tokenizer: T, config: SchedulerConfig) -> Result<Self> {
        if config.max_seqs == 0 || config.max_batched_tokens == 0 {
            return Err(Error::InvalidParameter(
                "max_seqs and max_batched_tokens must be > 0".into(),
            ));
        }
        let config = SchedulerConfig {
            max_batched_tokens: config.max_batched_tokens.min(model.borrow().max_step_tokens()),
            ..config
        };
        Ok(Scheduler {
            model,
            tokenizer,
            config,
            waiting: VecDeque::new(),
            running: vec![],
            outbox: vec![],
            next_id: 0,
            stats: SchedulerStats::default(),
            spec: None,
            backend: PhantomData,
        })
    }

    /// Turns speculative decoding on (or off with `None`) for the sequences that decode from
    /// now on; returns the previous setting (a draft model with it). Refuses a draft model
    /// whose vocabulary or context does not fit the target.
    pub fn set_speculation(
        &mut self,
        spec: Option<Speculation<B>>,
    ) -> Result<Option<Speculation<B>>> {
        if let Some(s) = &spec {
            s.check(self.model.borrow())?;
        }
        for s in self.running.iter_mut().chain(self.waiting.iter_mut()) {
            Self::release_draft(&mut self.spec, &mut s.spec);
        }
        Ok(std::mem::replace(&mut self.spec, spec))
    }

    pub fn speculation(&self) -> Option<&Speculation<B>> {
        self.spec.as_ref()
    }

    /// The model back (e.g. to become another scheduler's draft), from a scheduler with no
    /// request queued or running: their KV blocks would not be returned to the model's pool.
    /// Prefix-cached blocks stay in the pool, as they would for its next request.
    pub fn into_model(self) -> Result<M> {
        if self.has_work() {
            return Err(Error::InvalidParameter(
                "the scheduler still has requests: finish or abort them first".into(),
            ));
        }
        Ok(self.model)
    }

    pub fn model(&self) -> &Model<B> {
        self.model.borrow()
    }

    pub fn model_mut(&mut self) -> &mut Model<B> {
        self.model.borrow_mut()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer.borrow()
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    pub fn into_parts(self) -> (M, T) {
        (self.model, self.tokenizer)
    }

    /// Queues a request: `prompt` (token ids, BOS included if the model wants it). Fails at
    /// once, naming the limit, if it could never run: an empty or out-of-vocabulary prompt,
    /// bad parameters (max_tokens 0 included), or prompt + max_tokens beyond the context or the
    /// whole KV pool.
    pub fn add(&mut self, prompt: Vec<u32>, params: GenerateParams) -> Result<RequestId> {
        if prompt.is_empty() {
            return Err(Error::InvalidParameter("the prompt has no tokens".into()));
        }
        // A request always yields its first token in the step that ends its prompt.
        if params.max_tokens == 0 {
            return Err(Error::InvalidParameter("max_tokens must be at least 1".into()));
        }
        let vocab = self.model().config.vocab_size;
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidParameter(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        let (context, pool) = (self.model().context(), self.model().kv.capacity());
        if prompt.len() > context {
            return Err(Error::PromptTooLong { prompt: prompt.len(), context });
        }
        let tokens = prompt.len().saturating_add(params.max_tokens);
        let too_large = |limit, what| Error::RequestTooLarge {
            tokens,
            prompt: prompt.len(),
            max_tokens: params.max_tokens,
            limit,
            what,
        };
        if tokens > context {
            return Err(too_large(context, "the context"));
        }
        if tokens > pool {
            return Err(too_large(pool, "the KV cache"));
        }
        let sampler = Sampler::new(params.sampling.clone())?;
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(SeqState::new(id, prompt, params, sampler));
        Ok(id)
    }

    /// Ends a request now (its blocks return to the pool at once); its `Finished` event, with
    /// reason `Interrupted`, comes with the next step. False if it is not queued or running.
    pub fn abort(&mut self, id: RequestId) -> bool {
        let seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i).expect("found")
        } else {
            return false;
        };
        self.retire(seq, FinishReason::Interrupted);
        true
    }

    /// Returns every block of `s` (the target's and the draft model's) to their pools.
    fn release(&mut self, s: &mut SeqState) {
        self.model.borrow_mut().kv.release(&mut s.kv);
        Self::release_draft(&mut self.spec, &mut s.spec);
    }

    /// Whether a step has anything to do (or events to hand out).
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty() || !self.outbox.is_empty()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Runs one step and returns its events. An engine error fails the requests of that step
    /// (each gets `Failed`) and leaves the others queued.
    pub async fn step(&mut self) -> Vec<(RequestId, Event)> {
        let mut events = std::mem::take(&mut self.outbox);
        let mut plan = self.schedule();
        if plan.is_empty() {
            return events;
        }
        self.draft_with_model(&mut plan).await;
        let wants: Vec<Want> = plan.iter().map(|p| self.row_want(p)).collect();
        // A verification feeds its last token and then its draft.
        let fed: Vec<Vec<u32>> = plan
            .iter()
            .map(|p| {
                let s = &self.running[p.seq];
                let mut t = s.tokens[s.computed()..s.computed() + p.len - p.draft.len()].to_vec();
                t.extend_from_slice(&p.draft);
                t
            })
            .collect();
        let result = {
            let chunks: Vec<Chunk> = plan
                .iter()
                .zip(&wants)
                .zip(&fed)
                .map(|((p, want), tokens)| {
                    let want = match want {
                        Want::None => RowWant::None,
                        Want::Token(r) => RowWant::Token(*r),
                        Want::Tokens { rows, .. } => RowWant::Tokens(rows),
                        Want::Logits => RowWant::Logits,
                        Want::AllLogits => RowWant::AllLogits,
                    };
                    Chunk { seq: &self.running[p.seq].kv, tokens, decode: p.decode, want }
                })
                .collect();
            self.model.borrow_mut().step(&chunks).await
        };
        self.stats.steps += 1;
        let outs = match result {
            Ok(outs) => outs,
            Err(e) => {
                let mut failed: Vec<usize> = plan.iter().map(|p| p.seq).collect();
                failed.sort_unstable();
                for &i in failed.iter().rev() {
                    let mut s = self.running.remove(i);
                    self.release(&mut s);
                    events.push((s.id, Event::Failed(clone_error(&e))));
                }
                return events;
            }
        };
        let used = self.model().kv.total_blocks() - self.model().kv.free_blocks();
        self.stats.peak_blocks_used = self.stats.peak_blocks_used.max(used);
        let mut done = vec![];
        for ((p, out), want) in plan.iter().zip(outs).zip(&wants) {
            let peeked = matches!(want, Want::Tokens { peeked: true, .. });
            if let Some(how) = self.take_outputs(p, out, peeked, &mut events) {
                done.push((p.seq, how));
            }
        }
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (i, how) in done {
            let s = self.running.remove(i);
            match how {
                Ok(reason) => self.retire(s, reason),
                Err(e) => {
                    let mut s = s;
                    self.release(&mut s);
                    self.outbox.push((s.id, Event::Failed(e)));
                }
            }
        }
        events.append(&mut self.outbox);
        events
    }

    /// Takes a planned chunk's outputs into its sequence: its computed positions, then its
    /// tokens in order (a verification's while they equal its draft, and the one after),
    /// stopping at the first that ends the request. Rolls back the cache positions of
    /// rejected draft tokens. Returns how the request ended, if it did.
    fn take_outputs(
        &mut self,
        p: &Planned,
        out: ChunkOut,
        peeked: bool,
        events: &mut Vec<(RequestId, Event)>,
    ) -> Option<Result<FinishReason>> {
        let vocab = self.model().config.vocab_size;
        let context = self.model().context();
        let s = &mut self.running[p.seq];
        let old = s.computed();
        let rows = if p.draft.is_empty() { 1 } else { p.draft.len() + 1 };
        let mut accepted = 0;
        let mut ended = None;
        for i in 0..rows {
            let (t, logprobs) = match &out {
                ChunkOut::None => break,
                ChunkOut::Token(t) => (*t, None),
                ChunkOut::Tokens(t) => {
                    if peeked {
                        s.sampler.next_uniform();
                    }
                    (t[i], None)
                }
                ChunkOut::Logits(logits) => {
                    // A verification reads every row's logits; a decode only its one row. The
                    // host draws row i after the tokens before it, as plain decoding would.
                    let mut row = if rows > 1 {
                        logits[i * vocab..(i + 1) * vocab].to_vec()
                    } else {
                        logits.clone()
                    };
                    let (prompt, generated) = s.tokens.split_at(s.prompt_len);
                    s.sampler.sample_with_logprobs(&mut row, prompt, generated)
                }
            };
            match s.push_token(self.tokenizer.borrow(), t, logprobs, context) {
                Ok((ev, finish)) => {
                    events.push((s.id, ev));
                    ended = finish.map(Ok);
                }
                Err(e) => ended = Some(Err(e)),
            }
            let hit = i < p.draft.len() && t == p.draft[i];
            accepted += hit as usize;
            if ended.is_some() || !hit {
                break;
            }
        }
        // Positions holding the last token and the accepted draft tokens stay; a prompt chunk
        // or a decode keeps all it computed.
        let valid = if p.draft.is_empty() { old + p.len } else { old + 1 + accepted };
        s.kv.len = old + p.len;
        if !p.draft.is_empty() {
            s.usage.draft_tokens += p.draft.len();
            s.usage.accepted_tokens += accepted;
            s.spec.observe(p.draft.len(), accepted);
            self.stats.draft_tokens += p.draft.len() as u64;
            self.stats.accepted_tokens += accepted as u64;
        }
        let kv = &mut self.model.borrow_mut().kv;
        // Also returns blocks reserved for a draft that came back shorter.
        kv.truncate(&mut s.kv, valid);
        kv.cache_full_blocks(&mut s.kv, &s.tokens, s.prompt_len);
        if p.decode {
            self.settle_draft(p.seq, valid);
        }
        ended
    }

    /// Frees a finished sequence's blocks (full ones stay in the prefix cache) and queues its
    /// closing event.
    fn retire(&mut self, mut s: SeqState, reason: FinishReason) {
        self.release(&mut s);
        let ev = s.finish(self.tokenizer.borrow(), reason);
        self.outbox.push((s.id, ev));
    }

    /// What a planned chunk's rows ask for: nothing while recomputing known tokens, else the
    /// next token (a verification: a token per row), drawn on the device with the request's
    /// own next draws, or logits for the host when it needs the history (penalties), the whole
    /// distribution (logprobs), or the backend cannot sample. Only requests that ask pay for
    /// reading back rows of logits.
    fn row_want(&mut self, p: &Planned) -> Want {
        if !p.samples {
            return Want::None;
        }
        let on_device = self.model().samples_on_device();
        let s = &mut self.running[p.seq];
        let sp = s.sampler.params().clone();
        let verify = !p.draft.is_empty();
        if sp.needs_logits() || (sp.temperature > 0.0 && !on_device) {
            return if verify { Want::AllLogits } else { Want::Logits };
        }
        let rows = p.draft.len() + 1;
        if sp.temperature == 0.0 {
            return if verify {
                Want::Tokens { rows: vec![SampleRow::greedy(); rows], peeked: false }
            } else {
                Want::Token(SampleRow::greedy())
            };
        }
        let top_k = sp.top_k.min(u32::MAX as usize) as u32;
        let row = |uniform| SampleRow {
            temperature: sp.temperature,
            top_k,
            top_p: sp.top_p,
            min_p: sp.min_p,
            uniform,
        };
        if verify {
            Want::Tokens {
                rows: s.sampler.peek_uniforms(rows).into_iter().map(row).collect(),
                peeked: true,
            }
        } else {
            Want::Token(row(s.sampler.next_uniform()))
        }
    }

    /// Picks this step's chunks: running sequences first (in admission order), then waiting
    /// requests while the budget, the sequence cap and the pool allow.
    fn schedule(&mut self) -> Vec<Planned> {
        let mut budget = self.config.max_batched_tokens;
        let mut plan: Vec<Planned> = vec![];
        let mut i = 0;
        while i < self.running.len() && budget > 0 && plan.len() < self.config.max_seqs {
            let (len, decode) = next_chunk(&self.running[i], budget);
            let (k, draft) = self.plan_draft(i, budget);
            let len = len + k;
            if !self.make_room(i, len, &mut plan) {
                // Sequence i itself was the newest and went back to the queue: nothing waiting
                // can fit either.
                return plan;
            }
            let s = &mut self.running[i];
            let end = s.computed() + len;
            self.model.borrow_mut().kv.reserve(&mut s.kv, end).expect("room was made");
            plan.push(Planned {
                seq: i,
                len,
                decode,
                samples: s.computed() + len - k == s.tokens.len(),
                k,
                draft,
            });
            budget -= len;
            i += 1;
        }
        while budget > 0 && plan.len() < self.config.max_seqs && self.running.len() == i {
            let Some(mut s) = self.waiting.pop_front() else { break };
            let cached =
                self.model.borrow_mut().kv.take_cached_prefix(&mut s.kv, &s.tokens, s.prompt_len);
            // Admitted only if the blocks of everything still to compute can be had now.
            let kv = &mut self.model.borrow_mut().kv;
            if kv.blocks_needed(&s.kv, s.tokens.len()) > kv.free_blocks() {
                self.model.borrow_mut().kv.release(&mut s.kv);
                self.waiting.push_front(s);
                break;
            }
            self.stats.cached_prompt_tokens += cached.min(s.prompt_len) as u64;
            s.admit(cached);
            let (len, decode) = next_chunk(&s, budget);
            let end = s.computed() + len;
            self.model.borrow_mut().kv.reserve(&mut s.kv, end).expect("checked above");
            plan.push(Planned {
                seq: self.running.len(),
                len,
                decode,
                samples: s.computed() + len == s.tokens.len(),
                k: 0,
                draft: vec![],
            });
            budget -= len;
            self.running.push(s);
            i += 1;
        }
        plan
    }

    /// How many tokens to draft for running sequence `i` this step, and the draft when it is
    /// known now (prompt lookup; a draft model's comes before the step): only in steady decode,
    /// within the step's token budget, the request's max_tokens and context, and the blocks
    /// free now (a draft never preempts anyone).
    fn plan_draft(&mut self, i: usize, budget: usize) -> (usize, Vec<u32>) {
        let Some(spec) = &self.spec else { return (0, vec![]) };
        let s = &self.running[i];
        if s.generated() == 0 || s.computed() + 1 != s.tokens.len() {
            return (0, vec![]);
        }
        let context = self.model().context();
        let left = s.params.max_tokens.saturating_sub(s.generated() + 1);
        let mut k = s
            .spec
            .k(spec.max_draft)
            .min(budget - 1)
            .min(left)
            .min(context.saturating_sub(s.tokens.len()));
        let kv = &self.model().kv;
        while k > 0 && kv.blocks_needed(&s.kv, s.tokens.len() + k) > kv.free_blocks() {
            k -= 1;
        }
        match spec.drafter {
            Drafter::Ngram => {
                let draft = ngram_draft(&s.tokens, k);
                (draft.len(), draft)
            }
            Drafter::Model(_) => (k, vec![]),
        }
    }

    /// Makes room for running sequence `i` to grow by `len` positions, preempting the most
    /// recently admitted sequences (never one already planned). False when `i` itself had to
    /// go.
    fn make_room(&mut self, i: usize, len: usize, plan: &mut [Planned]) -> bool {
        loop {
            let s = &self.running[i];
            let kv = &self.model.borrow().kv;
            if kv.blocks_needed(&s.kv, s.computed() + len) <= kv.free_blocks() {
                return true;
            }
            let victim = self.running.len() - 1;
            let mut v = self.running.pop().expect("i is running");
            self.release(&mut v);
            v.usage.preemptions += 1;
            self.stats.preemptions += 1;
            self.waiting.push_front(v);
            if victim == i {
                return false;
            }
            debug_assert!(plan.iter().all(|p| p.seq != victim));
        }
    }
}

/// The next chunk of sequence `s` within `budget` tokens: prompt positions as prompt rows (as
/// many as fit), generated ones as one decode row.
fn next_chunk(s: &SeqState, budget: usize) -> (usize, bool) {
    let at = s.computed();
    if at < s.prompt_len {
        ((s.prompt_len - at).min(budget), false)
    } else {
        (1, true)
    }
}

/// Errors are not Clone (some wrap io::Error); a failed step reports its message to each of
/// its requests.
fn clone_error(e: &Error) -> Error {
    Error::Backend { backend: "step".into(), reason: e.to_string() }
}
