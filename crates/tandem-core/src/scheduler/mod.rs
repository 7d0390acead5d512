//! Continuous batching: one scheduler for every front end (the CLI, the browser worker, the
//! HTTP server). Requests join a waiting queue; every [`Scheduler::step`] runs one forward
//! step over a ragged batch: the running sequences' decodes first, then prompt chunks of
//! waiting requests under a token budget and a sequence cap, first come first served.
//! Sequences join and leave between steps.
//!
//! It is async and owns no threads (but, natively, the one that computes structured output's
//! masks during a step: `masks`), so the same code runs natively and in a browser worker:
//! the caller drives it (`while scheduler.has_work() { scheduler.step().await }`) and routes
//! the returned events.
//!
//! KV pressure never loses a request: a request is admitted only when the blocks of its whole
//! prompt can be had; when blocks run out mid-generation, the most recently admitted running
//! sequence is preempted (its blocks freed) and goes back to the front of the queue, to be
//! recomputed later, continuing where it stopped. Prompt positions are recomputed as prompt
//! rows and generated ones as decode rows, one per step, so every row gets the arithmetic it
//! had the first time (batch invariance), and the prefix cache usually still holds most of it.
//! In a model whose every layer slides, a sequence holds only the blocks its window reaches
//! (`KvBlocks::slide`): admission, growth and prompt chunks are sized by that bound, so a
//! generation longer than the whole pool runs in it.
//!
//! A step's path, plan -> run -> commit (vLLM v1's `schedule()` then `update_from_output()`):
//! - `plan::plan`: from the queues and the block pools alone, no backend: which sequences,
//!   which chunks, which drafts, which blocks (admission, prefix-cache hits, preemption); a
//!   plain value, unit-tested in plan.rs;
//! - `run::run`: a draft model's rounds, then the target's one step on the backend;
//! - `commit::commit`: tokens, stops and finish reasons into the requests, then the block
//!   tables (rejected drafts rolled back) and the prefix cache.
//!
//! Every block operation, in planning and committing, goes through `kv_manager::KvManager`,
//! on the target's pool and the draft model's; the run allocates and frees none. The
//! scheduler owns the KV manager, and the KV manager owns those pools' block accounting
//! ([`KvBlocks`]), taken from the models when the scheduler is made or a draft model is set,
//! and given back when the scheduler ends or the draft model leaves (`lease`): meanwhile the
//! models hold only their K/V buffers, so nothing else can allocate or free their blocks.

mod adapters;
mod commit;
mod kv_manager;
mod lease;
mod masks;
mod plan;
mod request;
mod run;
mod speculate;

use std::borrow::{Borrow, BorrowMut};

use adapters::Adapters;
pub use adapters::{AdapterId, AdapterInfo, MAX_ADAPTERS};
use commit::Ctx;
use lease::Lease;
use masks::MaskWorker;
use plan::{DraftPolicy, Limits, Queue};
use request::Request;
pub use request::{
    Event, FinishReason, GenerateParams, RequestId, Usage, MAX_STOP_BYTES, MAX_STOP_STRINGS,
};
pub use speculate::{ngram_draft, Drafter, Speculation, MAX_DRAFT_TOKENS};

use crate::backend::Backend;
use crate::kv::{KvBlocks, Sequence};
use crate::lora::Adapter;
use crate::model::Model;
use crate::sampling::Sampler;
pub use crate::sampling::TokenLogprobs;
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
    /// Most sequences in one step (decoding or prefilling).
    pub peak_running: usize,
    /// Prompt tokens taken from the prefix cache instead of computed.
    pub cached_prompt_tokens: u64,
    /// Speculative decoding: draft tokens verified, and how many of them were accepted.
    pub draft_tokens: u64,
    pub accepted_tokens: u64,
}

/// Generic over how it holds the model and the tokenizer: owned (a server's scheduler lives as
/// long as its model) or borrowed (one generation on a caller's model, `generate`).
pub struct Scheduler<
    B: Backend,
    M: BorrowMut<Model<B>> = Model<B>,
    T: Borrow<Tokenizer> = std::sync::Arc<Tokenizer>,
> {
    /// The model, and the KV manager with the model's block accounting.
    lease: Lease<B, M>,
    tokenizer: T,
    config: SchedulerConfig,
    queue: Queue,
    /// Events produced outside a step (aborts), handed out by the next step.
    outbox: Vec<(RequestId, Event)>,
    next_id: RequestId,
    pub stats: SchedulerStats,
    /// Speculative decoding, when on.
    spec: Option<Speculation<B>>,
    /// Computes structured output's masks while the backend runs a step.
    masks: MaskWorker,
    /// The LoRA adapters requests may name, and which model slot each is in.
    adapters: Adapters,
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
            lease: Lease::new(model)?,
            tokenizer,
            config,
            queue: Queue::default(),
            outbox: vec![],
            next_id: 0,
            stats: SchedulerStats::default(),
            spec: None,
            masks: MaskWorker::default(),
            adapters: Adapters::default(),
        })
    }

    /// Turns speculative decoding on (or off with `None`) for the sequences that decode from
    /// now on; returns the previous setting (a draft model with it, its block accounting back
    /// in it and all its blocks free but the prefix cache's). Refuses a draft model whose
    /// vocabulary or context does not fit the target.
    pub fn set_speculation(
        &mut self,
        mut spec: Option<Speculation<B>>,
    ) -> Result<Option<Speculation<B>>> {
        if let Some(s) = &spec {
            s.check(self.model())?;
        }
        let draft = match spec.as_mut().and_then(Speculation::draft_mut) {
            Some(d) => Some(d.lend_blocks()?),
            None => None,
        };
        let (_, kv) = self.lease.parts();
        for r in self.queue.running.iter_mut().chain(self.queue.waiting.iter_mut()) {
            kv.free_draft(r);
        }
        let previous = kv.replace_draft(draft);
        let mut old = std::mem::replace(&mut self.spec, spec);
        if let (Some(d), Some(blocks)) = (old.as_mut().and_then(Speculation::draft_mut), previous) {
            d.return_blocks(blocks);
        }
        Ok(old)
    }

    pub fn speculation(&self) -> Option<&Speculation<B>> {
        self.spec.as_ref()
    }

    /// The model's KV pool's block accounting (free, cached and used blocks), which the
    /// scheduler holds while it lives.
    pub fn kv_blocks(&self) -> &KvBlocks {
        self.lease.kv().target()
    }

    /// The draft model's, when one drafts.
    pub fn draft_kv_blocks(&self) -> Option<&KvBlocks> {
        self.lease.kv().draft()
    }

    /// The model back, its block accounting in it (e.g. to become another scheduler's draft),
    /// from a scheduler with no request queued or running: their KV blocks would not be
    /// returned to the model's pool. Prefix-cached blocks stay in the pool, as they would for
    /// its next request.
    pub fn into_model(self) -> Result<M> {
        if self.has_work() {
            return Err(Error::InvalidParameter(
                "the scheduler still has requests: finish or abort them first".into(),
            ));
        }
        Ok(self.lease.end())
    }

    /// The model, for reading: its block accounting is the scheduler's meanwhile
    /// ([`Self::kv_blocks`]).
    pub fn model(&self) -> &Model<B> {
        self.lease.model()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer.borrow()
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    /// The model (its block accounting back in it) and the tokenizer.
    pub fn into_parts(self) -> (M, T) {
        (self.lease.end(), self.tokenizer)
    }

    /// Registers a LoRA adapter under `name`, for requests that name it
    /// ([`GenerateParams::adapter`]); the model must have adapter pools
    /// ([`Model::enable_lora`]) of at least its rank. It goes into a slot when a request needs
    /// it.
    pub fn add_adapter(&mut self, name: &str, adapter: std::sync::Arc<Adapter>) -> Result<()> {
        self.adapters.add(self.lease.model(), name, adapter)
    }

    /// Unregisters `name`: new requests for it are refused from now on, and it goes once its
    /// queued and running requests have ended ([`Self::adapters`] shows it `removing` until
    /// then).
    pub fn remove_adapter(&mut self, name: &str) -> Result<()> {
        let q = &self.queue;
        let requests: Vec<&request::Request> = q.running.iter().chain(&q.waiting).collect();
        self.adapters.remove(name, &requests)
    }

    /// The registered adapters, in registration order.
    pub fn adapters(&self) -> Vec<AdapterInfo> {
        let q = &self.queue;
        let requests: Vec<&request::Request> = q.running.iter().chain(&q.waiting).collect();
        self.adapters.info(&requests)
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
        if let Some(c) = params.constraint.as_ref().filter(|c| c.vocab() != vocab) {
            return Err(Error::InvalidParameter(format!(
                "the constraint was compiled for {} logits, the model has {vocab}",
                c.vocab()
            )));
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidParameter(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        let context = self.model().context();
        let kv = self.lease.kv();
        let (pool, chunk) = (kv.target().capacity(), kv.max_chunk(self.config.max_batched_tokens));
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
        if !kv.target().ever_fits(tokens, chunk) {
            return Err(too_large(pool, "the KV cache"));
        }
        let adapter = match &params.adapter {
            Some(name) => Some(self.adapters.resolve(name)?),
            None => None,
        };
        let sampler = Sampler::new(params.sampling.clone())?;
        let id = self.next_id;
        self.next_id += 1;
        let mut r = Request::new(id, prompt, params, sampler);
        if let Some((adapter, root)) = adapter {
            r.adapter = Some(adapter);
            r.kv = Sequence::with_root(root);
        }
        self.queue.waiting.push_back(r);
        Ok(id)
    }

    /// Ends a request now (its blocks return to the pool at once); its `Finished` event, with
    /// reason `Interrupted`, comes with the next step. False if it is not queued or running.
    pub fn abort(&mut self, id: RequestId) -> bool {
        let q = &mut self.queue;
        let r = if let Some(i) = q.running.iter().position(|r| r.id == id) {
            q.running.remove(i)
        } else if let Some(i) = q.waiting.iter().position(|r| r.id == id) {
            q.waiting.remove(i).expect("found")
        } else {
            return false;
        };
        let (_, kv) = self.lease.parts();
        let tokenizer = self.tokenizer.borrow();
        self.outbox.push(commit::retire(kv, r, FinishReason::Interrupted, tokenizer));
        true
    }

    /// Whether a step has anything to do (or events to hand out).
    pub fn has_work(&self) -> bool {
        !self.queue.waiting.is_empty() || !self.queue.running.is_empty() || !self.outbox.is_empty()
    }

    pub fn waiting(&self) -> usize {
        self.queue.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.queue.running.len()
    }

    /// Runs one step (plan, run, commit) and returns its events. An engine error fails the
    /// requests of that step (each gets `Failed`) and leaves the others queued.
    pub async fn step(&mut self) -> Vec<(RequestId, Event)> {
        let mut events = std::mem::take(&mut self.outbox);
        let Scheduler { lease, tokenizer, config, queue, spec, stats, masks, adapters, .. } = self;
        let (model, kv) = lease.parts();
        for (adapter, e) in adapters.place(model, &mut queue.running, &mut queue.waiting) {
            // Only waiting requests can be of an adapter that is not in a slot.
            let (failed, keep) = std::mem::take(&mut queue.waiting)
                .into_iter()
                .partition(|r| r.adapter == Some(adapter));
            queue.waiting = keep;
            for mut r in Vec::from_iter(failed) {
                kv.free(&mut r);
                events.push((
                    r.id,
                    Event::Failed(Error::Backend {
                        backend: model.backend.name(),
                        reason: format!("loading the request's LoRA adapter: {e}"),
                    }),
                ));
            }
        }
        let limits = Limits {
            max_seqs: config.max_seqs,
            max_tokens: config.max_batched_tokens,
            context: model.context(),
        };
        let policy = spec.as_ref().map(|s| DraftPolicy {
            max_draft: s.max_draft,
            model: matches!(s.drafter, Drafter::Model(_)),
        });
        let mut plan = plan::plan(queue, kv, limits, policy);
        stats.preemptions += plan.preempted.len() as u64;
        stats.cached_prompt_tokens += plan.cached_tokens;
        for (r, e) in plan.refused.drain(..) {
            events.push((r.id, Event::Failed(e)));
        }
        if plan.chunks.is_empty() {
            return events;
        }
        let draft = spec.as_mut().and_then(Speculation::draft_mut);
        let result = run::run(model, draft, &mut queue.running, &mut plan, masks).await;
        stats.steps += 1;
        let ctx = Ctx {
            tokenizer: <T as Borrow<Tokenizer>>::borrow(tokenizer),
            vocab: model.config.vocab_size,
            context: model.context(),
        };
        match result {
            Ok(outs) => {
                stats.peak_blocks_used = stats.peak_blocks_used.max(kv.used_blocks());
                stats.peak_running = stats.peak_running.max(queue.running.len());
                let closing =
                    commit::commit(queue, kv, &plan.chunks, outs, &ctx, stats, &mut events);
                events.extend(closing);
            }
            Err(e) => commit::fail(queue, kv, &plan.chunks, &e, &mut events),
        }
        let requests: Vec<&Request> = queue.running.iter().chain(&queue.waiting).collect();
        adapters.sweep(&requests);
        events
    }
}
