//! Speculative decoding inside the scheduler, so every backend and front end gets it.
//!
//! A running sequence in steady decode may be given a draft of K tokens: from its own text
//! (prompt lookup: the tokens that followed the latest earlier occurrence of its last 3, 2 or 1
//! tokens), or from a smaller draft model with the same vocabulary, run greedily on the same
//! backend with its own paged KV cache. The target then verifies the draft in one step: the
//! sequence's chunk is its last token plus the K draft tokens, K + 1 decode rows (each computed
//! exactly as that token alone after its context, see [`crate::model::Chunk::decode`]), and
//! each row draws the token the target would draw at that position without speculation, with
//! that position's own random draw. Tokens are taken while the draw equals the draft, plus the
//! first that differs (or the one after a fully accepted draft).
//!
//! Why that is the standard rejection rule: a greedy draft (and a prompt-lookup one) proposes
//! x with probability 1, q = δ_x. The rule accepts x with probability min(1, p(x)/q(x)) = p(x)
//! and otherwise draws from norm(max(0, p − q)), which is p without x, renormalized. Drawing
//! t ~ p by inverse CDF with the position's uniform and accepting iff t = x realizes exactly
//! that: P(t = x) = p(x), and t given t ≠ x is p without x, renormalized. So the output's
//! distribution is the target's, and more: with a seed, the tokens are the very tokens plain
//! decoding draws (greedy ones included), whatever the draft, the draft length or the batch.
//!
//! Planning gives a draft only blocks free at the time (in the target's pool and the draft
//! model's), so a draft never preempts anyone. Rejected rows cost nothing to undo: the
//! sequence's block table is truncated to its accepted positions (blocks past them go back to
//! the pool; the rows written past the end of a kept block are overwritten later and never
//! read meanwhile), and a full block is offered to the prefix cache only once every position
//! in it is accepted. The draft model's cache is truncated the same way.

use super::plan::Planned;
use super::request::Request;
use crate::backend::Backend;
use crate::kv::Sequence;
use crate::model::{Chunk, ChunkOut, Model, Want};
use crate::ops::SampleRow;
use crate::{Error, Result};

/// Most draft tokens a sequence may be given per step.
pub const MAX_DRAFT_TOKENS: usize = 16;

/// Where draft tokens come from.
pub enum Drafter<B: Backend> {
    /// Prompt lookup: the tokens after the latest earlier occurrence of the sequence's last
    /// n tokens (n = 3, 2, 1) in its prompt and output. Costs no model.
    Ngram,
    /// A second, smaller model with the target's vocabulary, decoding greedily with its own
    /// KV pool.
    Model(Box<Model<B>>),
}

/// A scheduler's speculative decoding: the drafter and the most tokens drafted per step.
pub struct Speculation<B: Backend> {
    pub drafter: Drafter<B>,
    /// K: most draft tokens a sequence is given per step (1 to [`MAX_DRAFT_TOKENS`]); each
    /// sequence drafts fewer while its recent drafts keep failing.
    pub max_draft: usize,
}

impl<B: Backend> Speculation<B> {
    pub fn ngram(max_draft: usize) -> Self {
        Speculation { drafter: Drafter::Ngram, max_draft }
    }

    pub fn draft_model(model: Model<B>, max_draft: usize) -> Self {
        Speculation { drafter: Drafter::Model(Box::new(model)), max_draft }
    }

    /// The draft model, if any.
    pub fn draft(&self) -> Option<&Model<B>> {
        match &self.drafter {
            Drafter::Model(m) => Some(m),
            Drafter::Ngram => None,
        }
    }

    pub(super) fn draft_mut(&mut self) -> Option<&mut Model<B>> {
        match &mut self.drafter {
            Drafter::Model(m) => Some(m),
            Drafter::Ngram => None,
        }
    }

    /// Refuses what could never work with `target`: no draft tokens, too many, or a draft
    /// model whose vocabulary or context differs.
    pub(super) fn check(&self, target: &Model<B>) -> Result<()> {
        if !(1..=MAX_DRAFT_TOKENS).contains(&self.max_draft) {
            return Err(Error::InvalidParameter(format!(
                "draft tokens must be 1 to {MAX_DRAFT_TOKENS}, got {}",
                self.max_draft
            )));
        }
        if let Drafter::Model(d) = &self.drafter {
            if d.config.vocab_size != target.config.vocab_size {
                let (dv, tv) = (d.config.vocab_size, target.config.vocab_size);
                return Err(Error::InvalidParameter(format!("the draft model's vocabulary has {dv} tokens, the target's {tv}: they must share a tokenizer")));
            }
            if d.context() < target.context() {
                let (dc, tc) = (d.context(), target.context());
                return Err(Error::InvalidParameter(format!(
                    "the draft model's context ({dc}) is shorter than the target's ({tc})"
                )));
            }
        }
        Ok(())
    }
}

/// A sequence's speculation state.
#[derive(Debug, Clone)]
pub(super) struct SpecState {
    /// Recent share of draft tokens accepted (exponential moving average), from 1.
    rate: f32,
    /// The draft model's view of this sequence's cache.
    pub draft_kv: Sequence,
}

impl Default for SpecState {
    fn default() -> Self {
        SpecState { rate: 1.0, draft_kv: Sequence::default() }
    }
}

impl SpecState {
    /// How many tokens to draft now, at most `max`: in proportion to the recent acceptance
    /// rate, at least one (a verification of 2 rows costs about what a decode costs).
    pub fn k(&self, max: usize) -> usize {
        ((self.rate * max as f32).ceil() as usize).clamp(1, max)
    }

    /// Takes one verification's outcome into the rate.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        if drafted > 0 {
            self.rate = 0.6 * self.rate + 0.4 * accepted as f32 / drafted as f32;
        }
    }
}

/// Prompt lookup: the (up to) `k` tokens that followed the latest earlier occurrence of the
/// last n tokens of `tokens`, for n = 3, then 2, then 1; empty if none occurs.
pub fn ngram_draft(tokens: &[u32], k: usize) -> Vec<u32> {
    for n in (1..=3).rev() {
        if tokens.len() <= n {
            continue;
        }
        let suffix = &tokens[tokens.len() - n..];
        // Starts before len - n, so at least one token follows the occurrence.
        if let Some(j) = (0..tokens.len() - n).rev().find(|&j| &tokens[j..j + n] == suffix) {
            let from = j + n;
            return tokens[from..(from + k).min(tokens.len())].to_vec();
        }
    }
    vec![]
}

/// One draft-model chunk of a drafting round: which plan entry, its tokens, and whether they
/// end at the sequence's newest token (so the row's greedy token is the next draft token).
struct DraftJob {
    plan: usize,
    tokens: Vec<u32>,
    decode: bool,
    proposes: bool,
}

/// Runs the draft model for every planned verification that wants a model's draft (`p.k > 0`
/// with an empty draft; planning reserved its draft blocks) until each has its `k` tokens:
/// first catching its cache up on the sequence's tokens (prompt positions as prompt rows,
/// generated ones as decode rows, as the target computes them, so a draft never depends on
/// the batch), then one greedy decode row per round. A failed draft step leaves every draft as
/// it stands. Then each planned chunk's length is set to its last token plus its draft.
pub(super) async fn draft_with_model<B: Backend>(
    draft: &mut Model<B>,
    running: &mut [Request],
    plan: &mut [Planned],
) {
    let greedy = Want::Tokens(vec![SampleRow::greedy()]);
    loop {
        let mut budget = draft.max_step_tokens();
        let mut jobs: Vec<DraftJob> = vec![];
        for (j, p) in plan.iter_mut().enumerate() {
            if p.draft.len() >= p.k || budget == 0 {
                continue;
            }
            let r = &running[p.seq];
            let total = r.tokens.len() + p.draft.len();
            let at = r.spec.draft_kv.len;
            let (end, decode) = if at < r.prompt_len {
                (r.prompt_len.min(at + budget), false)
            } else {
                (total.min(at + budget), true)
            };
            let tokens: Vec<u32> = (at..end)
                .map(|i| if i < r.tokens.len() { r.tokens[i] } else { p.draft[i - r.tokens.len()] })
                .collect();
            budget -= tokens.len();
            jobs.push(DraftJob { plan: j, tokens, decode, proposes: end == total });
        }
        if jobs.is_empty() {
            break;
        }
        let result = {
            let chunks: Vec<Chunk> = jobs
                .iter()
                .map(|job| Chunk {
                    seq: &running[plan[job.plan].seq].spec.draft_kv,
                    tokens: &job.tokens,
                    decode: job.decode,
                    want: if job.proposes { &greedy } else { &Want::None },
                    // The draft model runs without the request's adapter: its proposals are
                    // only guesses, and verification runs through the adapter.
                    adapter: None,
                })
                .collect();
            draft.step(&chunks).await
        };
        let Ok(outs) = result else {
            for p in plan.iter_mut() {
                p.k = p.draft.len();
            }
            break;
        };
        for (job, out) in jobs.iter().zip(outs) {
            let p = &mut plan[job.plan];
            running[p.seq].spec.draft_kv.len += job.tokens.len();
            if let ChunkOut::Tokens(t) = out {
                p.draft.push(t[0]);
            }
        }
    }
    // Every decode chunk, so one whose draft came back empty feeds its last token alone.
    for p in plan.iter_mut().filter(|p| p.decode) {
        p.k = p.draft.len();
        p.len = 1 + p.k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_prefers_the_longest_then_the_latest_match() {
        // "1 2 3" occurs at 0 and 5; the latest earlier one (5) is followed by 9 8.
        let t = [1, 2, 3, 4, 5, 1, 2, 3, 9, 8, 7, 1, 2, 3];
        assert_eq!(ngram_draft(&t, 2), vec![9, 8]);
        assert_eq!(ngram_draft(&t, 10), vec![9, 8, 7, 1, 2, 3]);
        // No trigram or bigram repeats; the last token 4 occurred at 1, followed by 6 4.
        assert_eq!(ngram_draft(&[7, 4, 6, 4], 3), vec![6, 4]);
        assert_eq!(ngram_draft(&[1, 2, 3], 4), Vec::<u32>::new());
        assert_eq!(ngram_draft(&[5], 4), Vec::<u32>::new());
    }

    #[test]
    fn draft_length_follows_the_acceptance_rate() {
        let mut s = SpecState::default();
        assert_eq!(s.k(5), 5);
        for _ in 0..10 {
            s.observe(4, 0);
        }
        assert_eq!(s.k(5), 1);
        for _ in 0..10 {
            s.observe(4, 4);
        }
        assert_eq!(s.k(5), 5);
    }
}
