//! Committing a step's outputs: each chunk's tokens into its request (a verification's while
//! they equal its draft, and the one after), stops and finish reasons, and through the KV
//! manager the block tables (rejected draft positions rolled back) and the prefix cache.

use std::cmp::Reverse;

use super::kv_manager::KvManager;
use super::plan::{Planned, Queue};
use super::request::{Event, FinishReason, Request, RequestId};
use super::SchedulerStats;
use crate::model::ChunkOut;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What committing needs of the model and the caller.
pub(super) struct Ctx<'a> {
    pub tokenizer: &'a Tokenizer,
    pub vocab: usize,
    pub context: usize,
}

/// Takes every chunk's outputs into its request, in plan order (token events into `events`),
/// then retires the requests that ended. Returns their closing events (they follow every
/// token event of the step).
pub(super) fn commit(
    q: &mut Queue,
    kv: &mut KvManager,
    chunks: &[Planned],
    outs: Vec<ChunkOut>,
    ctx: &Ctx,
    stats: &mut SchedulerStats,
    events: &mut Vec<(RequestId, Event)>,
) -> Vec<(RequestId, Event)> {
    let mut closing = vec![];
    let mut done = vec![];
    for (p, out) in chunks.iter().zip(outs) {
        if let Some(how) = take_outputs(&mut q.running[p.seq], kv, p, out, ctx, stats, events) {
            done.push((p.seq, how));
        }
    }
    done.sort_by_key(|d| Reverse(d.0));
    for (i, how) in done {
        let mut r = q.running.remove(i);
        match how {
            Ok(reason) => closing.push(retire(kv, r, reason, ctx.tokenizer)),
            Err(e) => {
                kv.free(&mut r);
                closing.push((r.id, Event::Failed(e)));
            }
        }
    }
    closing
}

/// A step that failed fails its requests (each gets `Failed`, its blocks freed); the others
/// stay queued.
pub(super) fn fail(
    q: &mut Queue,
    kv: &mut KvManager,
    chunks: &[Planned],
    e: &Error,
    events: &mut Vec<(RequestId, Event)>,
) {
    let mut failed: Vec<usize> = chunks.iter().map(|p| p.seq).collect();
    failed.sort_unstable();
    for &i in failed.iter().rev() {
        let mut r = q.running.remove(i);
        kv.free(&mut r);
        events.push((r.id, Event::Failed(clone_error(e))));
    }
}

/// Frees an ended request's blocks (full ones stay in the prefix cache); returns its closing
/// event.
pub(super) fn retire(
    kv: &mut KvManager,
    mut r: Request,
    reason: FinishReason,
    tokenizer: &Tokenizer,
) -> (RequestId, Event) {
    kv.free(&mut r);
    let ev = r.finish(tokenizer, reason);
    (r.id, ev)
}

/// Takes a planned chunk's outputs into its request: its computed positions, then its tokens
/// in order (a verification's while they equal its draft, and the one after), stopping at the
/// first that ends the request. Rolls back the cache positions of rejected draft tokens.
/// Returns how the request ended, if it did.
fn take_outputs(
    r: &mut Request,
    kv: &mut KvManager,
    p: &Planned,
    out: ChunkOut,
    ctx: &Ctx,
    stats: &mut SchedulerStats,
    events: &mut Vec<(RequestId, Event)>,
) -> Option<Result<FinishReason>> {
    let vocab = ctx.vocab;
    let old = r.computed();
    let rows = if p.draft.is_empty() { 1 } else { p.draft.len() + 1 };
    let mut accepted = 0;
    let mut ended = None;
    for i in 0..rows {
        // Its constraint gave no mask: whatever the row chose was not held to the grammar.
        if let Some(e) = r.constraint_error.take() {
            ended = Some(Err(e));
            break;
        }
        let (t, logprobs) = match &out {
            ChunkOut::None => break,
            ChunkOut::Token(t) => (*t, None),
            ChunkOut::Tokens(t) => {
                if p.peeked {
                    r.sampler.next_uniform();
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
                let (prompt, generated) = r.tokens.split_at(r.prompt_len);
                r.sampler.sample_with_logprobs(&mut row, prompt, generated)
            }
        };
        let dormant = r.constraint.as_ref().is_some_and(|c| c.is_dormant());
        match r.push_token(ctx.tokenizer, t, logprobs, ctx.context) {
            Ok((ev, finish)) => {
                events.push((r.id, ev));
                ended = finish.map(Ok);
            }
            Err(e) => ended = Some(Err(e)),
        }
        // A constraint this token woke holds the next ones: none chosen without it is kept.
        let woke = dormant && r.constraint.as_ref().is_some_and(|c| !c.is_dormant());
        let hit = !woke && i < p.draft.len() && t == p.draft[i];
        accepted += hit as usize;
        if ended.is_some() || !hit {
            break;
        }
    }
    // Positions holding the last token and the accepted draft tokens stay; a prompt chunk
    // or a decode keeps all it computed.
    let valid = if p.draft.is_empty() { old + p.len } else { old + 1 + accepted };
    if !p.draft.is_empty() {
        r.usage.draft_tokens += p.draft.len();
        r.usage.accepted_tokens += accepted;
        r.spec.observe(p.draft.len(), accepted);
        stats.draft_tokens += p.draft.len() as u64;
        stats.accepted_tokens += accepted as u64;
    }
    // Also returns blocks reserved for a draft that came back shorter.
    kv.commit(r, old + p.len, valid, p.decode);
    ended
}

/// Errors are not Clone (some wrap io::Error); a failed step reports its message to each of
/// its requests. A lost device stays one, so front ends can tell it from other failures.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::DeviceLost { backend, reason } => {
            Error::DeviceLost { backend: backend.clone(), reason: reason.clone() }
        }
        _ => Error::Backend { backend: "step".into(), reason: e.to_string() },
    }
}
