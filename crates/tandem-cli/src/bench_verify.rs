//! `tandem bench --verify-tokens N,...`: what a speculative verification step costs against a
//! one-token decode step at the same context. Speculation pays when a step that scores N
//! tokens of one sequence (its decode rows: the last accepted token and N - 1 drafts) costs
//! little more than a step that scores one, which holds where a step is bound by reading the
//! weights (a GPU) and not where it is bound by arithmetic (one CPU thread). Random weights
//! accept no drafts, so this measures the step itself, on any model shape: with an acceptance
//! rate a and K drafts a step yields (1 - a^(K+1)) / (1 - a) tokens on average, and the
//! speed-up is that over the verify step's cost in one-token steps (plus the draft's time).

use std::time::Instant;
use tandem_core::model::{Chunk, Model, Want};
use tandem_core::ops::SampleRow;
use tandem_core::{Backend, Error, Result};

/// One step size's cost at one context.
pub struct VerifyCost {
    pub context: usize,
    /// Tokens the step scores (1: a plain decode step).
    pub tokens: usize,
    /// Mean milliseconds a step, best of the runs.
    pub ms: f64,
}

/// Steps of 1 and of each of `sizes` tokens after a context of `context` (one sequence,
/// prefilled first), `steps` of each a run, the runs interleaved across sizes so drift hits
/// all alike; the best run's mean per size. The steps rewrite the same KV positions and never
/// advance the sequence, so every step sees the same context.
pub fn measure<B: Backend>(
    model: &mut Model<B>,
    context: usize,
    sizes: &[usize],
    steps: usize,
    runs: usize,
) -> Result<Vec<VerifyCost>> {
    let largest = sizes.iter().copied().max().unwrap_or(1);
    if sizes.contains(&0)
        || largest > model.max_step_tokens()
        || context + largest > model.context()
    {
        return Err(Error::InvalidParameter(format!(
            "--verify-tokens: each size must be 1..={} and fit after context {context} in {} positions",
            model.max_step_tokens(),
            model.context()
        )));
    }
    let vocab = model.config.vocab_size as u32;
    let ids = |n: usize, salt: u32| -> Vec<u32> {
        (0..n as u32).map(|i| (i * 7919 + 13 + salt) % vocab).collect()
    };
    let mut seq = model.new_sequence();
    let result = (|| {
        pollster::block_on(model.forward(&mut seq, &ids(context, 0), Want::argmax()))?;
        model.kv_blocks_mut()?.reserve(&mut seq, context + largest)?;
        let mut all = vec![1];
        all.extend(sizes.iter().copied().filter(|&n| n != 1));
        let mut best = vec![f64::MAX; all.len()];
        for run in 0..runs {
            for (i, &n) in all.iter().enumerate() {
                let tokens = ids(n, 1 + run as u32);
                let want = if n == 1 {
                    Want::argmax()
                } else {
                    Want::Tokens(vec![SampleRow::greedy(); n])
                };
                let chunk = [Chunk {
                    seq: &seq,
                    tokens: &tokens,
                    decode: true,
                    want: &want,
                    adapter: None,
                }];
                // One step unmeasured: a shape's first step may build or capture its work.
                pollster::block_on(model.step(&chunk))?;
                let t = Instant::now();
                for _ in 0..steps {
                    pollster::block_on(model.step(&chunk))?;
                }
                best[i] = best[i].min(t.elapsed().as_secs_f64() / steps as f64);
            }
        }
        Ok(all
            .iter()
            .zip(&best)
            .map(|(&tokens, &s)| VerifyCost { context, tokens, ms: s * 1e3 })
            .collect())
    })();
    model.release(&mut seq);
    result
}

/// The report's lines for one context's costs (the first is the one-token step's).
pub fn describe(costs: &[VerifyCost]) -> String {
    let one = costs[0].ms;
    let rest: Vec<String> = costs[1..]
        .iter()
        .map(|c| format!("{} tokens {:.2} ms ({:.2}x)", c.tokens, c.ms, c.ms / one))
        .collect();
    format!(
        "verify steps:   at context {}: 1 token {one:.2} ms; {}",
        costs[0].context,
        rest.join("; ")
    )
}
