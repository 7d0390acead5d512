//! Planning a step: which sequences, which chunks, which drafts and which blocks. A plain
//! value made from plain state (the queues and the block pools), with no backend, so its
//! policy is unit-tested below.

use std::collections::VecDeque;

use super::kv_manager::KvManager;
use super::request::{Request, RequestId};
use super::speculate::ngram_draft;
use crate::model::Want;
use crate::Error;

/// The requests: waiting ones (first come, first served; preempted ones go back to the front)
/// and running ones, in admission order (the last is the first to be preempted).
#[derive(Default)]
pub(super) struct Queue {
    pub waiting: VecDeque<Request>,
    pub running: Vec<Request>,
}

/// What bounds a step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_seqs: usize,
    pub max_tokens: usize,
    /// Longest context one sequence may reach.
    pub context: usize,
}

/// Speculative decoding as planning sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct DraftPolicy {
    /// Most draft tokens per sequence and step.
    pub max_draft: usize,
    /// Drafts come from a draft model (filled in by the run, its blocks reserved here), not
    /// from prompt lookup (known now).
    pub model: bool,
}

/// One scheduled chunk: a running sequence's index, how many tokens from its computed
/// position, whether they are decode rows, and whether they produce its next token. A
/// verification's chunk is its last token and then its draft (len = 1 + draft.len()).
#[derive(Debug)]
pub(super) struct Planned {
    pub seq: usize,
    pub len: usize,
    pub decode: bool,
    pub samples: bool,
    /// Draft tokens wanted (a draft model fills `draft` up to this before the step).
    pub k: usize,
    pub draft: Vec<u32>,
    /// What the rows ask of the step (set by the run, once the draft is known).
    pub want: Want,
    /// Whether `want` used the request's next random draws, taken only for the tokens it
    /// emits.
    pub peeked: bool,
}

/// A step's plan. Planning has already moved requests between the queues and reserved the
/// blocks of every chunk (and of a draft model's catch-up).
#[derive(Default)]
pub(super) struct Plan {
    pub chunks: Vec<Planned>,
    /// Preempted to make room, in order (their blocks freed, back at the queue's front).
    pub preempted: Vec<RequestId>,
    /// Requests that could never fit the KV pool, out of the queues, with the reason.
    pub refused: Vec<(Request, Error)>,
    /// Prompt tokens taken from the prefix cache at admission.
    pub cached_tokens: u64,
}

/// Plans a step: running sequences first (in admission order, each its next chunk, drafts
/// only into free blocks, preempting the most recently admitted when blocks run out), then
/// waiting requests while the token budget, the sequence cap and the pool allow.
pub(super) fn plan(
    q: &mut Queue,
    kv: &mut KvManager,
    limits: Limits,
    spec: Option<DraftPolicy>,
) -> Plan {
    let mut plan = Plan::default();
    schedule(q, kv, limits, spec, &mut plan);
    if spec.is_some_and(|s| s.model) {
        for p in plan.chunks.iter_mut().filter(|p| p.k > 0) {
            let k = kv.reserve_draft(&mut q.running[p.seq], p.k);
            // The target blocks of the dropped draft tokens go back at commit.
            p.len -= p.k - k;
            p.k = k;
        }
    }
    plan
}

fn schedule(
    q: &mut Queue,
    kv: &mut KvManager,
    limits: Limits,
    spec: Option<DraftPolicy>,
    plan: &mut Plan,
) {
    let mut budget = limits.max_tokens;
    let chunk = kv.max_chunk(limits.max_tokens);
    let mut i = 0;
    while i < q.running.len() && budget > 0 && plan.chunks.len() < limits.max_seqs {
        let (len, decode) = next_chunk(&q.running[i], budget.min(chunk));
        let (k, draft) = plan_draft(&q.running[i], kv, limits, spec, budget);
        let len = len + k;
        if !make_room(q, kv, i, len, chunk, plan) {
            // Sequence i itself was the newest and went back to the queue: nothing waiting
            // can fit either.
            return;
        }
        let r = &mut q.running[i];
        kv.grow(r, r.computed() + len);
        let samples = r.computed() + len - k == r.tokens.len();
        plan.chunks.push(Planned {
            seq: i,
            len,
            decode,
            samples,
            k,
            draft,
            want: Want::None,
            peeked: false,
        });
        budget -= len;
        i += 1;
    }
    // Waiting requests in order, but for those whose LoRA adapter has no slot yet: they wait
    // without holding up the others.
    let mut w = 0;
    while budget > 0 && plan.chunks.len() < limits.max_seqs && q.running.len() == i {
        if q.waiting.get(w).is_some_and(|r| r.adapter.is_some() && r.lora_slot.is_none()) {
            w += 1;
            continue;
        }
        let Some(mut r) = q.waiting.remove(w) else { break };
        if let Err(e) = kv.ever_fits(&r, r.tokens.len(), chunk) {
            plan.refused.push((r, e));
            continue;
        }
        let Some(cached) = kv.admit(&mut r, chunk) else {
            q.waiting.insert(w, r);
            break;
        };
        plan.cached_tokens += cached.min(r.prompt_len) as u64;
        r.admit(cached);
        let (len, decode) = next_chunk(&r, budget.min(chunk));
        let end = r.computed() + len;
        kv.grow(&mut r, end);
        plan.chunks.push(Planned {
            seq: q.running.len(),
            len,
            decode,
            samples: r.computed() + len == r.tokens.len(),
            k: 0,
            draft: vec![],
            want: Want::None,
            peeked: false,
        });
        budget -= len;
        q.running.push(r);
        i += 1;
    }
}

/// How many tokens to draft for `r` this step, and the draft when it is known now (prompt
/// lookup; a draft model's comes in the run): only in steady decode, within the step's token
/// budget, the request's max_tokens and context, and the blocks free now.
fn plan_draft(
    r: &Request,
    kv: &KvManager,
    limits: Limits,
    spec: Option<DraftPolicy>,
    budget: usize,
) -> (usize, Vec<u32>) {
    let Some(spec) = spec else { return (0, vec![]) };
    if r.generated() == 0 || r.computed() + 1 != r.tokens.len() {
        return (0, vec![]);
    }
    let left = r.params.max_tokens.saturating_sub(r.generated() + 1);
    let k = r
        .spec
        .k(spec.max_draft)
        .min(budget - 1)
        .min(left)
        .min(limits.context.saturating_sub(r.tokens.len()));
    let k = kv.draft_room(r, k);
    if spec.model {
        (k, vec![])
    } else {
        let draft = ngram_draft(&r.tokens, k);
        (draft.len(), draft)
    }
}

/// Makes room for running sequence `i` to grow by `len` positions, preempting the most
/// recently admitted sequences (never one already planned). False when `i` itself had to go
/// (refused instead when it could never fit the whole pool).
fn make_room(
    q: &mut Queue,
    kv: &mut KvManager,
    i: usize,
    len: usize,
    chunk: usize,
    plan: &mut Plan,
) -> bool {
    let end = q.running[i].computed() + len;
    loop {
        if kv.fits(&q.running[i], end) {
            return true;
        }
        let victim = q.running.len() - 1;
        let mut v = q.running.pop().expect("i is running");
        kv.free(&mut v);
        debug_assert!(plan.chunks.iter().all(|p| p.seq != victim));
        if victim == i {
            if let Err(e) = kv.ever_fits(&v, end, chunk) {
                plan.refused.push((v, e));
                return false;
            }
        }
        v.usage.preemptions += 1;
        plan.preempted.push(v.id);
        q.waiting.push_front(v);
        if victim == i {
            return false;
        }
    }
}

/// The next chunk of `r` within `budget` tokens: prompt positions as prompt rows (as many as
/// fit), generated ones as one decode row.
fn next_chunk(r: &Request, budget: usize) -> (usize, bool) {
    let at = r.computed();
    if at < r.prompt_len {
        ((r.prompt_len - at).min(budget), false)
    } else {
        (1, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvBlocks;
    use crate::sampling::{Sampler, SamplingParams};
    use crate::scheduler::GenerateParams;

    const BS: usize = 4;

    fn req(id: RequestId, prompt: Vec<u32>) -> Request {
        let params = GenerateParams { max_tokens: 100, ..GenerateParams::default() };
        let sampler = Sampler::new(SamplingParams::default()).unwrap();
        Request::new(id, prompt, params, sampler)
    }

    /// `len` tokens no other request of a test shares.
    fn tokens(id: RequestId, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| 1000 * (id as u32 + 1) + i).collect()
    }

    fn queue(reqs: Vec<Request>) -> Queue {
        Queue { waiting: reqs.into(), running: vec![] }
    }

    /// A KV manager over a pool of `blocks` blocks of `BS` positions, with no draft model.
    fn pool(blocks: usize) -> KvManager {
        KvManager::new(KvBlocks::new(BS, blocks, 0))
    }

    /// The same over a model whose every layer slides over `window` positions.
    fn sliding_pool(blocks: usize, window: usize) -> KvManager {
        KvManager::new(KvBlocks::new(BS, blocks, window))
    }

    fn limits(max_seqs: usize, max_tokens: usize) -> Limits {
        Limits { max_seqs, max_tokens, context: 1 << 20 }
    }

    /// What a run and commit would leave: every chunk computed and accepted, a token for each
    /// chunk that samples.
    fn fake_step(q: &mut Queue, kv: &mut KvManager, plan: &Plan) {
        for p in &plan.chunks {
            let r = &mut q.running[p.seq];
            let old = r.computed();
            if p.samples {
                r.tokens.push(7);
            }
            kv.commit(r, old + p.len, old + p.len, p.decode);
        }
    }

    fn lens(plan: &Plan) -> Vec<(usize, usize, bool)> {
        plan.chunks.iter().map(|p| (p.seq, p.len, p.decode)).collect()
    }

    #[test]
    fn admission_fills_the_token_budget_first_come_first_served() {
        let mut kv = pool(100);
        let mut q = queue((0..3).map(|id| req(id, tokens(id, 10))).collect());
        let p = plan(&mut q, &mut kv, limits(8, 16), None);
        // The second prompt gets what is left of the budget; the third waits.
        assert_eq!(lens(&p), [(0, 10, false), (1, 6, false)]);
        assert_eq!((p.chunks[0].samples, p.chunks[1].samples), (true, false));
        assert_eq!((q.running.len(), q.waiting.len()), (2, 1));
        fake_step(&mut q, &mut kv, &p);
        // Decodes first, then the rest of the second prompt, then the third whole.
        let p = plan(&mut q, &mut kv, limits(8, 16), None);
        assert_eq!(lens(&p), [(0, 1, true), (1, 4, false), (2, 10, false)]);
        fake_step(&mut q, &mut kv, &p);
        // The sequence cap holds a fourth request back even with budget left.
        q.waiting.push_back(req(3, tokens(3, 2)));
        let p = plan(&mut q, &mut kv, limits(3, 16), None);
        assert_eq!(lens(&p), [(0, 1, true), (1, 1, true), (2, 1, true)]);
        assert_eq!(q.waiting.len(), 1);
    }

    #[test]
    fn admission_waits_for_the_blocks_of_the_whole_prompt() {
        let mut kv = pool(4);
        let mut q = queue(vec![req(0, tokens(0, 9)), req(1, tokens(1, 9))]);
        // The first takes 3 of 4 blocks; the second's 3 cannot be had, though its first chunk
        // would fit the budget and one block.
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        assert_eq!(lens(&p), [(0, 9, false)]);
        assert_eq!(q.waiting.len(), 1);
        assert!(p.refused.is_empty() && p.preempted.is_empty());
    }

    #[test]
    fn preemption_takes_the_most_recently_admitted_first() {
        // Three prompts of two blocks each fill the six blocks.
        let mut kv = pool(6);
        let mut q = queue((0..3).map(|id| req(id, tokens(id, 8))).collect());
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        assert_eq!(p.chunks.len(), 3);
        fake_step(&mut q, &mut kv, &p);
        // Each decode needs a third block: the newest goes, the two older ones run.
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        assert_eq!(p.preempted, [2]);
        assert_eq!(lens(&p), [(0, 1, true), (1, 1, true)]);
        assert_eq!(q.waiting.front().map(|r| (r.id, r.usage.preemptions)), Some((2, 1)));
        assert_eq!(q.waiting.front().unwrap().computed(), 0);
        fake_step(&mut q, &mut kv, &p);
        // Then the second of the two makes way for the first, when the first's decode at
        // position 12 needs a fourth block; the other one waits behind it.
        for _ in 0..3 {
            let p = plan(&mut q, &mut kv, limits(8, 64), None);
            assert!(p.preempted.is_empty());
            assert_eq!(lens(&p), [(0, 1, true), (1, 1, true)]);
            fake_step(&mut q, &mut kv, &p);
        }
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        assert_eq!(p.preempted, [1]);
        assert_eq!(lens(&p), [(0, 1, true)]);
        let waiting: Vec<RequestId> = q.waiting.iter().map(|r| r.id).collect();
        assert_eq!(waiting, [1, 2]);
    }

    #[test]
    fn a_prompt_starting_with_cached_blocks_computes_only_the_rest() {
        let mut kv = pool(20);
        let mut q = queue(vec![req(0, tokens(0, 9))]);
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        fake_step(&mut q, &mut kv, &p);
        let mut done = q.running.pop().unwrap();
        let first_blocks = done.kv.blocks[..2].to_vec();
        kv.free(&mut done);
        // Same first 8 tokens (two full blocks), then its own.
        let mut prompt = tokens(0, 8);
        prompt.extend([5, 6]);
        q.waiting.push_back(req(1, prompt));
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        assert_eq!(p.cached_tokens, 8);
        assert_eq!(lens(&p), [(0, 2, false)]);
        assert_eq!(q.running[0].usage.cached_tokens, 8);
        // The very blocks the first request filled, shared through the cache.
        assert_eq!(q.running[0].kv.blocks[..2], first_blocks[..]);
    }

    /// A request past its prompt with one generated token: positions 0..8 computed, 9 tokens.
    fn decoding(kv: &mut KvManager, prompt: Vec<u32>) -> Queue {
        let mut q = queue(vec![req(0, prompt)]);
        let p = plan(&mut q, kv, limits(8, 64), None);
        fake_step(&mut q, kv, &p);
        q
    }

    #[test]
    fn drafts_go_only_into_free_blocks() {
        let model = Some(DraftPolicy { max_draft: 8, model: true });
        // Three blocks: the sequence's two and one free, so 12 positions: 9 tokens and 3 more.
        let mut kv = pool(3);
        let mut q = decoding(&mut kv, tokens(0, 8));
        let p = plan(&mut q, &mut kv, limits(8, 64), model);
        assert_eq!((p.chunks[0].k, p.chunks[0].len), (3, 4));
        assert!(p.preempted.is_empty());

        // The draft model's pool bounds it too: 3 blocks of it hold the 9 tokens and 3 draft
        // tokens fed (the last draft token is only proposed), so 4 draft tokens.
        let mut kv = pool(8);
        let mut q = decoding(&mut kv, tokens(0, 8));
        kv.replace_draft(Some(KvBlocks::new(BS, 3, 0)));
        let p = plan(&mut q, &mut kv, limits(8, 64), model);
        assert_eq!((p.chunks[0].k, p.chunks[0].len), (4, 5));
        assert_eq!(q.running[0].spec.draft_kv.blocks.len(), 3);
        // Two draft blocks cannot hold the tokens at all: a plain decode.
        let mut kv = pool(8);
        let mut q = decoding(&mut kv, tokens(0, 8));
        kv.replace_draft(Some(KvBlocks::new(BS, 2, 0)));
        let p = plan(&mut q, &mut kv, limits(8, 64), model);
        assert_eq!((p.chunks[0].k, p.chunks[0].len), (0, 1));
        // The target blocks reserved for the draft go back at commit.
        fake_step(&mut q, &mut kv, &p);
        assert_eq!(q.running[0].kv.blocks.len(), 3);

        // Prompt lookup: the draft is known at once, within the free blocks.
        let mut kv = pool(3);
        let mut q = decoding(&mut kv, vec![1, 2, 7, 1, 2, 7, 1, 2]);
        let ngram = Some(DraftPolicy { max_draft: 8, model: false });
        let p = plan(&mut q, &mut kv, limits(8, 64), ngram);
        assert_eq!(p.chunks[0].draft, [1, 2, 7]);
        assert_eq!(p.chunks[0].len, 4);
    }

    #[test]
    fn a_request_that_can_never_fit_is_refused_not_stuck() {
        // Two blocks hold 8 positions; a 10-token prompt can never fit, even alone.
        let mut kv = pool(2);
        let mut q = queue(vec![req(0, tokens(0, 10)), req(1, tokens(1, 5))]);
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        assert_eq!(p.refused.len(), 1);
        let (r, e) = &p.refused[0];
        assert_eq!(r.id, 0);
        assert!(
            matches!(e, Error::RequestTooLarge { tokens: 10, limit: 8, what: "the KV cache", .. }),
            "{e}"
        );
        // The one behind it is admitted in the same step.
        assert_eq!(lens(&p), [(0, 5, false)]);
        assert_eq!(q.running[0].id, 1);
        assert!(q.waiting.is_empty());
    }

    #[test]
    fn a_sliding_model_admits_by_its_window_not_its_length() {
        // A 40-token prompt needs 10 blocks of a 6-block pool: refused when every block is kept.
        let mut kv = pool(6);
        let mut q = queue(vec![req(0, tokens(0, 40))]);
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        assert_eq!(p.refused.len(), 1);

        // With a window of 8 a chunk's queries read at most 7 positions before it: chunks of
        // 13 (5 blocks of room less 7) never hold more than the 6 blocks.
        let mut kv = sliding_pool(6, 8);
        let mut q = queue(vec![req(0, tokens(0, 40))]);
        let mut chunks = vec![];
        while q.running.first().is_none_or(|r| r.computed() < 40) {
            let p = plan(&mut q, &mut kv, limits(8, 64), None);
            assert!(p.refused.is_empty() && p.preempted.is_empty());
            assert!(kv.used_blocks() <= 6, "{} blocks", kv.used_blocks());
            chunks.push(p.chunks[0].len);
            fake_step(&mut q, &mut kv, &p);
        }
        assert_eq!(chunks, [13, 13, 13, 1]);
        // Positions 0..40 computed; the next query (40) reads from 33 on: blocks 8 and 9.
        let r = &q.running[0];
        assert_eq!((r.kv.blocks.len(), kv.target().live_blocks(&r.kv)), (10, 2));
    }

    #[test]
    fn a_sliding_decode_keeps_its_blocks_bounded_by_the_window() {
        let mut kv = sliding_pool(6, 8);
        let mut q = queue(vec![req(0, tokens(0, 5))]);
        // 100 tokens after a 5-token prompt: 105 positions, 27 blocks of table, in 6 blocks.
        for _ in 0..100 {
            let p = plan(&mut q, &mut kv, limits(8, 64), None);
            assert!(p.refused.is_empty() && p.preempted.is_empty());
            // A query reads its own position and the 7 before: at most 3 blocks of 4.
            assert!(kv.used_blocks() <= 3, "{} blocks", kv.used_blocks());
            fake_step(&mut q, &mut kv, &p);
        }
        let mut r = q.running.pop().unwrap();
        assert_eq!((r.computed(), r.kv.blocks.len()), (104, 26));
        // Every block back once, none twice (a double release would count more than 6).
        kv.free(&mut r);
        assert_eq!(kv.target().free_blocks(), 6);
    }

    #[test]
    fn a_sliding_sequence_rolls_back_and_hits_the_prefix_cache() {
        let mut kv = sliding_pool(20, 8);
        let mut q = queue(vec![req(0, tokens(0, 30))]);
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        // A draft of 3 rejected: positions 30..34 fed, only 30 valid. Blocks 0..5 are behind
        // the window of position 30 (from 23 on) and were given back at the prompt's commit.
        fake_step(&mut q, &mut kv, &p);
        let r = &mut q.running[0];
        assert_eq!(kv.target().live_blocks(&r.kv), 3);
        kv.grow(r, 34);
        kv.commit(r, 34, 30, true);
        assert_eq!((r.kv.blocks.len(), kv.target().live_blocks(&r.kv)), (8, 3));
        let mut done = q.running.pop().unwrap();
        kv.free(&mut done);
        assert_eq!(kv.target().free_blocks(), 20);
        // Every full prompt block was cached while live: the same prompt takes the whole chain
        // (28 positions) and keeps only the blocks its window reaches.
        q.waiting.push_back(req(1, tokens(0, 30)));
        let p = plan(&mut q, &mut kv, limits(8, 64), None);
        assert_eq!((p.cached_tokens, lens(&p)), (28, vec![(0, 2, false)]));
        let r = &q.running[0];
        assert_eq!((r.kv.blocks.len(), kv.target().live_blocks(&r.kv)), (8, 3));
    }
}
