//! The scheduler's KV manager: every block operation of a step goes through it (admission with
//! a prefix-cache lookup, growth, preemption and release, the rollback of rejected drafts and
//! the prefix-cache insert at commit), on the target's pool and, with a draft model, on the
//! draft's.
//!
//! It owns those pools' block accounting ([`KvBlocks`], plain data, so planning runs and is
//! tested without a backend), taken from the models for the scheduler's life (see
//! `super::lease`): while it holds them, the models have none, so nothing else can allocate or
//! free a block of theirs.

use super::request::Request;
use crate::kv::KvBlocks;
use crate::Error;

pub(super) struct KvManager {
    target: KvBlocks,
    /// The draft model's pool, when a draft model drafts.
    draft: Option<KvBlocks>,
}

impl KvManager {
    pub fn new(target: KvBlocks) -> Self {
        KvManager { target, draft: None }
    }

    /// The target's pool, given back when the scheduler ends.
    pub fn into_target(self) -> KvBlocks {
        self.target
    }

    pub fn target(&self) -> &KvBlocks {
        &self.target
    }

    pub fn draft(&self) -> Option<&KvBlocks> {
        self.draft.as_ref()
    }

    /// Takes a new draft model's pool (or none) and gives back the previous one. Requests'
    /// draft blocks must have been freed first ([`Self::free_draft`]).
    pub fn replace_draft(&mut self, draft: Option<KvBlocks>) -> Option<KvBlocks> {
        std::mem::replace(&mut self.draft, draft)
    }

    /// Target blocks in use (not free, not idle-cached).
    pub fn used_blocks(&self) -> usize {
        self.target.total_blocks() - self.target.free_blocks()
    }

    /// Whether `r` can hold `len` positions with the target blocks free now.
    pub fn fits(&self, r: &Request, len: usize) -> bool {
        self.target.blocks_needed(&r.kv, len) <= self.target.free_blocks()
    }

    /// The longest chunk to plan within a step's `budget`: in a pool that gives back the
    /// blocks behind a sliding window, one whose blocks fit the whole pool.
    pub fn max_chunk(&self, budget: usize) -> usize {
        budget.min(self.target.max_chunk())
    }

    /// Whether `len` positions of one request, computed in chunks of at most `chunk`, fit the
    /// whole target pool (the error when not).
    pub fn ever_fits(&self, r: &Request, len: usize, chunk: usize) -> Result<(), Error> {
        let limit = self.target.capacity();
        if self.target.ever_fits(len, chunk) {
            return Ok(());
        }
        Err(Error::RequestTooLarge {
            tokens: len,
            prompt: r.prompt_len,
            max_tokens: r.params.max_tokens,
            limit,
            what: "the KV cache",
        })
    }

    /// Admits a waiting request: takes the cached blocks of its leading tokens, then keeps them
    /// only if the blocks of everything still to compute can be had now (in a sliding pool,
    /// the most it holds at once computing it in chunks of at most `chunk`). Returns the
    /// cached positions, or `None` (nothing held) when it does not fit yet.
    pub fn admit(&mut self, r: &mut Request, chunk: usize) -> Option<usize> {
        let t = &mut self.target;
        let cached = t.take_cached_prefix(&mut r.kv, &r.tokens, r.prompt_len);
        t.slide(&mut r.kv);
        let len = r.tokens.len();
        let peak = t.peak_blocks(len, chunk).saturating_sub(t.live_blocks(&r.kv));
        if t.blocks_needed(&r.kv, len).min(peak) > t.free_blocks() {
            self.target.release(&mut r.kv);
            return None;
        }
        Some(cached)
    }

    /// Gives `r` the blocks to hold `len` positions; the caller has checked they fit.
    pub fn grow(&mut self, r: &mut Request, len: usize) {
        self.target.reserve(&mut r.kv, len).expect("room was checked");
    }

    /// Returns every block of `r` (the target's and the draft model's) to their pools (it
    /// finished, failed or was preempted: a resumed request recomputes, mostly from the prefix
    /// cache).
    pub fn free(&mut self, r: &mut Request) {
        self.target.release(&mut r.kv);
        self.free_draft(r);
    }

    /// Returns `r`'s draft-model blocks (speculation changed, or `r` ended).
    pub fn free_draft(&mut self, r: &mut Request) {
        if let Some(draft) = self.draft.as_mut() {
            draft.release(&mut r.spec.draft_kv);
        }
    }

    /// The longest draft up to `k` tokens after `r`'s tokens whose target blocks are free now
    /// (a draft never preempts anyone).
    pub fn draft_room(&self, r: &Request, mut k: usize) -> usize {
        while k > 0 && !self.fits(r, r.tokens.len() + k) {
            k -= 1;
        }
        k
    }

    /// Readies the draft model's cache of `r` for a draft of up to `k` tokens: its cached
    /// prefix when it holds nothing, then blocks for `r`'s tokens and all but the last draft
    /// token (the last is proposed, never fed). Returns the draft length its free blocks allow.
    pub fn reserve_draft(&mut self, r: &mut Request, mut k: usize) -> usize {
        let Some(draft) = self.draft.as_mut() else { return k };
        if r.spec.draft_kv.blocks.is_empty() {
            draft.take_cached_prefix(&mut r.spec.draft_kv, &r.tokens, r.prompt_len);
            draft.slide(&mut r.spec.draft_kv);
        }
        while k > 0 && draft.reserve(&mut r.spec.draft_kv, r.tokens.len() + k - 1).is_err() {
            k -= 1;
        }
        k
    }

    /// After a step fed `r` up to `fed` positions of which the first `valid` hold accepted
    /// tokens: rejected draft positions are rolled back (blocks holding none of the rest go
    /// back to the pool) and newly full blocks are offered to the prefix cache, in the target's
    /// pool and, after a decode row, the draft model's; then blocks behind a sliding window go
    /// back (cached first, so they stay findable until the pool needs them).
    pub fn commit(&mut self, r: &mut Request, fed: usize, valid: usize, decode: bool) {
        r.kv.len = fed;
        self.target.truncate(&mut r.kv, valid);
        self.target.cache_full_blocks(&mut r.kv, &r.tokens, r.prompt_len);
        self.target.slide(&mut r.kv);
        if let (true, Some(draft)) = (decode, self.draft.as_mut()) {
            let d = &mut r.spec.draft_kv;
            let keep = d.len.min(valid);
            draft.truncate(d, keep);
            draft.cache_full_blocks(d, &r.tokens, r.prompt_len);
            draft.slide(d);
        }
    }
}
