//! Running a plan on the backend: a draft model's rounds first (when one drafts), then what
//! each chunk's rows ask for, then the target's one step. No block is allocated or freed here:
//! planning reserved them all and the commit settles them.

use super::plan::{Plan, Planned};
use super::request::Request;
use super::speculate::draft_with_model;
use crate::backend::Backend;
use crate::model::{Chunk, ChunkOut, Model, Want};
use crate::ops::SampleRow;
use crate::Result;

/// Runs `plan` over the running requests: fills drafts (with `draft`, a draft model), sets
/// each chunk's `want`, and runs the step. On error nothing was committed.
pub(super) async fn run<B: Backend>(
    model: &mut Model<B>,
    draft: Option<&mut Model<B>>,
    running: &mut [Request],
    plan: &mut Plan,
) -> Result<Vec<ChunkOut>> {
    if let Some(draft) = draft {
        draft_with_model(draft, running, &mut plan.chunks).await;
    }
    let on_device = model.samples_on_device();
    for p in plan.chunks.iter_mut() {
        (p.want, p.peeked) = row_want(on_device, &mut running[p.seq], p);
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
        })
        .collect();
    model.step(&chunks).await
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
