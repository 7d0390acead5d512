//! Running a plan on the backend: a draft model's rounds first (when one drafts), drafts cut
//! where a constraint rejects them, then what each chunk's rows ask for, then the target's one
//! step, with constrained rows' masks computed meanwhile. No block is allocated or freed here:
//! planning reserved them all and the commit settles them.

use super::masks::{Job, MaskWorker};
use super::plan::{Plan, Planned};
use super::request::Request;
use super::speculate::draft_with_model;
use crate::backend::Backend;
use crate::model::{Chunk, ChunkOut, Model, Want};
use crate::ops::SampleRow;
use crate::{Error, Result};

/// Runs `plan` over the running requests: fills drafts (with `draft`, a draft model), sets
/// each chunk's `want`, and runs the step, constrained chunks' masks computed by `worker`. On
/// error nothing was committed.
pub(super) async fn run<B: Backend>(
    model: &mut Model<B>,
    draft: Option<&mut Model<B>>,
    running: &mut [Request],
    plan: &mut Plan,
    worker: &mut MaskWorker,
) -> Result<Vec<ChunkOut>> {
    if let Some(draft) = draft {
        draft_with_model(draft, running, &mut plan.chunks).await;
    }
    // A constrained request's draft ends before the first token its grammar rejects (the
    // target could only reject it there); the blocks of the cut tokens go back at commit.
    for p in plan.chunks.iter_mut().filter(|p| !p.draft.is_empty()) {
        if let Some(c) = running[p.seq].constraint.as_mut() {
            let keep = c.accepted_prefix(&p.draft);
            p.len -= p.draft.len() - keep;
            p.draft.truncate(keep);
            p.k = keep;
        }
    }
    let on_device = model.samples_on_device();
    for p in plan.chunks.iter_mut() {
        (p.want, p.peeked) = row_want(on_device, &mut running[p.seq], p);
    }
    // Constrained chunks that choose tokens this step lend their constraints to the worker.
    let (mut masked, mut jobs) = (vec![], vec![]);
    for (i, p) in plan.chunks.iter().enumerate() {
        let active = running[p.seq].constraint.as_ref().is_some_and(|c| !c.is_dormant());
        if p.samples && active {
            if let Some(constraint) = running[p.seq].constraint.take() {
                masked.push(i);
                let draft = p.draft.clone();
                jobs.push(Job { seq: p.seq, constraint, draft, masks: Ok(vec![]) });
            }
        }
    }
    // A verification feeds its last token and then its draft.
    let fed: Vec<Vec<u32>> = plan
        .chunks
        .iter()
        .map(|p| {
            let r = &running[p.seq];
            let mut t = r.tokens[r.computed()..r.computed() + p.len - p.draft.len()].to_vec();
            t.extend_from_slice(&p.draft);
            t
        })
        .collect();
    let chunks: Vec<Chunk> = plan
        .chunks
        .iter()
        .zip(&fed)
        .map(|(p, tokens)| Chunk {
            seq: &running[p.seq].kv,
            tokens,
            decode: p.decode,
            want: &p.want,
            adapter: running[p.seq].lora_slot,
        })
        .collect();
    if masked.is_empty() {
        return model.step(&chunks).await;
    }
    let words = model.config.vocab_size.div_ceil(32);
    let seqs: Vec<usize> = jobs.iter().map(|j| j.seq).collect();
    let mut pending = Some(worker.start(jobs));
    let mut back = None;
    let out = model
        .step_masked(&chunks, &masked, || {
            let mut jobs = worker.wait(pending.take().expect("waited once"));
            // A constraint that failed (or never came back) leaves its rows unmasked; its
            // request fails at commit instead of choosing a token.
            let masks = masked
                .iter()
                .map(|&i| {
                    let p = &plan.chunks[i];
                    let rows = p.draft.len() + 1;
                    match jobs.iter_mut().find(|j| j.seq == p.seq).map(|j| &mut j.masks) {
                        Some(Ok(m)) => std::mem::take(m),
                        _ => vec![u32::MAX; rows * words],
                    }
                })
                .collect();
            back = Some(jobs);
            Ok(masks)
        })
        .await;
    drop(chunks);
    let jobs = match (back, pending) {
        (Some(jobs), _) => jobs,
        (None, Some(p)) => worker.wait(p),
        (None, None) => vec![],
    };
    // Every lent constraint comes back with its job; one that does not fails its request.
    for seq in seqs {
        running[seq].constraint_error = Some(Error::Backend {
            backend: "structured output".into(),
            reason: "the constraint's mask worker failed".into(),
        });
    }
    for job in jobs {
        let r = &mut running[job.seq];
        r.constraint_error = job.masks.err();
        r.constraint = Some(job.constraint);
    }
    out
}

/// What a planned chunk's rows ask for, and whether it peeked at the request's next random
/// draws: nothing while recomputing known tokens, else the next token (a verification: a token
/// per row), drawn on the device with the request's own next draws, or logits for the host
/// when it needs the history (penalties), the whole distribution (logprobs), or the backend
/// cannot sample. Only requests that ask pay for reading back rows of logits.
fn row_want(on_device: bool, r: &mut Request, p: &Planned) -> (Want, bool) {
    if !p.samples {
        return (Want::None, false);
    }
    let sp = r.sampler.params().clone();
    let verify = !p.draft.is_empty();
    if sp.needs_logits() || (sp.temperature > 0.0 && !on_device) {
        return (if verify { Want::AllLogits } else { Want::Logits }, false);
    }
    let rows = p.draft.len() + 1;
    if sp.temperature == 0.0 {
        return if verify {
            (Want::Tokens(vec![SampleRow::greedy(); rows]), false)
        } else {
            (Want::argmax(), false)
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
        (Want::Tokens(r.sampler.peek_uniforms(rows).into_iter().map(row).collect()), true)
    } else {
        (Want::Token(row(r.sampler.next_uniform())), false)
    }
}
