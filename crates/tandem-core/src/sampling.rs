//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, and the
//! repetition, presence and frequency penalties, with a seeded generator so a run can be
//! repeated exactly; and the log-probabilities a request may ask for alongside.

use std::collections::HashMap;

use crate::{Error, Result};

/// Most alternatives a request may ask log-probabilities for (OpenAI's chat API allows 20).
pub const MAX_LOGPROBS: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches top_p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens already seen (prompt or
    /// generated); 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token generated so far (OpenAI's, -2..=2); 0
    /// is off. The prompt does not count (as vLLM and OpenAI).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated so far (OpenAI's,
    /// -2..=2); 0 is off. The prompt does not count.
    pub frequency_penalty: f32,
    /// Report each generated token's log-probability and those of this many most likely
    /// tokens ([`TokenLogprobs`]); `None` reports nothing.
    pub logprobs: Option<usize>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidParameter(what));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!("repetition_penalty must be > 0, got {}", self.repetition_penalty));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_LOGPROBS) {
            return bad(format!(
                "logprobs: at most {MAX_LOGPROBS} alternatives per token, got {n}"
            ));
        }
        Ok(())
    }

    /// Whether any penalty is on (they need the request's history, so the host samples).
    pub fn penalizes(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// Whether the next token must be chosen on the host from the whole row of logits: for
    /// penalties, and for log-probabilities (they need the whole distribution).
    pub fn needs_logits(&self) -> bool {
        self.penalizes() || self.logprobs.is_some()
    }
}

/// A generated token's log-probability and the most likely tokens', under the model's raw
/// distribution: log_softmax of the logits as the model produced them, before penalties,
/// temperature or truncation (what vLLM returns by default, and OpenAI's `logprobs`). So the
/// numbers describe the model, not the sampler, and a greedy token is the top entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's; -inf if the model gave it no probability (a NaN or -inf logit).
    pub logprob: f32,
    /// The most likely tokens with their logprobs, most likely first (ties: lower id first),
    /// as many as [`SamplingParams::logprobs`] asked (fewer if the vocabulary is smaller).
    pub top: Vec<(u32, f32)>,
}

/// [`TokenLogprobs`] of `chosen` and the `top` most likely tokens, from raw `logits` ([vocab]).
/// Non-finite logits count as probability 0; the sum runs in f64 so large vocabularies lose
/// nothing to rounding.
pub fn logprobs(logits: &[f32], chosen: u32, top: usize) -> TokenLogprobs {
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().filter(|l| l.is_finite()).map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let lp = |l: f32| if l.is_finite() { (l as f64 - lse) as f32 } else { f32::NEG_INFINITY };
    // Non-finite logits rank last, then ties go to the lower id.
    let key = |l: f32| if l.is_finite() { l } else { f32::NEG_INFINITY };
    let order = |a: &(u32, f32), b: &(u32, f32)| key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0));
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let n = top.min(all.len());
    if n > 0 && n < all.len() {
        all.select_nth_unstable_by(n - 1, order);
    }
    all.truncate(n);
    all.sort_unstable_by(order);
    let chosen = logits.get(chosen as usize).map_or(f32::NEG_INFINITY, |&l| lp(l));
    TokenLogprobs { logprob: chosen, top: all.into_iter().map(|(id, l)| (id, lp(l))).collect() }
}

/// SplitMix64: tiny, seedable and identical on every platform (wasm has no OS entropy to
/// fall back on, and runs must be repeatable from `seed`).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Sampler { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token from `logits` ([vocab]) for a request that has `prompt` and has generated
    /// `generated` so far (the repetition penalty looks at both, presence and frequency at the
    /// generated tokens). Modifies `logits`.
    pub fn sample(&mut self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) -> u32 {
        self.penalize(logits, prompt, generated);
        let p = &self.params;
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let u = self.rng.next_f32();
        sample_row(logits, p.temperature, p.top_k, p.top_p, p.min_p, u)
    }

    /// [`Sampler::sample`], and the chosen token's [`TokenLogprobs`] (of the logits before any
    /// penalty) when the parameters ask for them.
    pub fn sample_with_logprobs(
        &mut self,
        logits: &mut [f32],
        prompt: &[u32],
        generated: &[u32],
    ) -> (u32, Option<TokenLogprobs>) {
        let Some(top) = self.params.logprobs else {
            return (self.sample(logits, prompt, generated), None);
        };
        // Penalties rewrite the logits in place; only then is a copy of the raw ones needed.
        let raw = self.params.penalizes().then(|| logits.to_vec());
        let t = self.sample(logits, prompt, generated);
        (t, Some(logprobs(raw.as_deref().unwrap_or(logits), t, top)))
    }

    /// Applies the penalties in vLLM's order: repetition, then frequency, then presence.
    fn penalize(&self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut done = vec![false; logits.len()];
            for &t in prompt.iter().chain(generated) {
                if let (Some(l), Some(d)) = (logits.get_mut(t as usize), done.get_mut(t as usize)) {
                    if !std::mem::replace(d, true) {
                        *l = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in generated {
                *counts.entry(t).or_default() += 1;
            }
            for (t, count) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * count as f32;
                    *l -= p.presence_penalty;
                }
            }
        }
    }

    /// The next uniform draw, for sampling on the device with the Sample op.
    pub fn next_uniform(&mut self) -> f32 {
        self.rng.next_f32()
    }

    /// The next `n` draws [`Sampler::next_uniform`] would give, without taking them: a
    /// speculative verification draws each row's token with the draw that position gets
    /// without speculation, then takes only as many as it emitted tokens.
    pub fn peek_uniforms(&self, n: usize) -> Vec<f32> {
        let mut rng = self.rng.clone();
        (0..n).map(|_| rng.next_f32()).collect()
    }
}

/// The Sample op's reference for one row: greedy ([`argmax`]) at temperature 0, else
/// [`sample_row`] with the row's parameters.
pub fn sample_with(logits: &[f32], row: &crate::ops::SampleRow) -> u32 {
    if row.temperature == 0.0 {
        return argmax(logits);
    }
    sample_row(logits, row.temperature, row.top_k as usize, row.top_p, row.min_p, row.uniform)
}

/// Draws a token from softmax(logits / temperature), restricted in this order:
/// 1. top_k > 0: keep tokens whose logit is >= the k-th largest (ties at the edge all stay);
/// 2. top_p < 1: keep a token if the probability (among those kept so far) of tokens with a
///    strictly larger logit is < top_p (ties stay together);
/// 3. min_p > 0: keep a token if its probability is >= min_p times the largest.
///
/// Then, walking the kept tokens in ascending id order, returns the first whose running sum of
/// weights exceeds `uniform` x their total. Walking in id order (not probability order) lets a
/// GPU do the draw with a plain prefix sum. NaN logits are never drawn; if no logit is finite
/// and above -inf the result is [`argmax`]'s. `temperature` must be > 0.
///
/// This is the reference of the Sample op: every backend must return the same token.
pub fn sample_row(
    logits: &[f32],
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    uniform: f32,
) -> u32 {
    // Candidates with a finite scaled logit, most likely first (ties: lower id first).
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l / temperature))
        .collect();
    if cand.is_empty() {
        return argmax(logits);
    }
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if top_k > 0 && top_k < cand.len() {
        let edge = cand[top_k - 1].1;
        cand.retain(|c| c.1 >= edge);
    }
    let max = cand[0].1;
    let weights: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
    let total: f32 = weights.iter().sum();
    let mut keep = cand.len();
    if top_p < 1.0 {
        // Walk groups of equal logits; a group stays while the mass above it is < top_p.
        let mut above = 0.0f32;
        let mut i = 0;
        while i < cand.len() {
            let mut j = i;
            let mut group = 0.0f32;
            while j < cand.len() && cand[j].1 == cand[i].1 {
                group += weights[j];
                j += 1;
            }
            if above / total >= top_p {
                keep = i;
                break;
            }
            above += group;
            i = j;
        }
    }
    if min_p > 0.0 {
        // The largest weight is exp(0) = 1.
        keep = keep.min(weights.iter().take_while(|&&w| w >= min_p).count());
    }
    let mut kept: Vec<(u32, f32)> =
        cand[..keep].iter().zip(&weights).map(|(c, &w)| (c.0, w)).collect();
    kept.sort_by_key(|k| k.0);
    let kept_total: f32 = kept.iter().map(|k| k.1).sum();
    let target = uniform * kept_total;
    let mut acc = 0.0f32;
    for &(id, w) in &kept {
        acc += w;
        if acc > target {
            return id;
        }
    }
    kept.last().map_or(0, |k| k.0)
}

/// Index of the largest logit; the lowest index wins ties and NaN never wins (as the Argmax op).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        match best {
            _ if v.is_nan() => {}
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(f: impl FnOnce(&mut SamplingParams)) -> Sampler {
        let mut p = SamplingParams { temperature: 1.0, ..Default::default() };
        f(&mut p);
        Sampler::new(p).unwrap()
    }

    #[test]
    fn greedy_is_argmax_and_ignores_nan() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&mut [0.5, f32::NAN, 2.0, 2.0, -1.0], &[], &[]), 2);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.1, 3.0, 2.9, -5.0];
        for mut s in
            [sampler(|p| p.top_k = 1), sampler(|p| p.top_p = 1e-6), sampler(|p| p.min_p = 0.999)]
        {
            for _ in 0..50 {
                assert_eq!(s.sample(&mut logits.clone(), &[], &[]), 1);
            }
        }
    }

    #[test]
    fn top_k_restricts_and_seed_repeats() {
        let logits: Vec<f32> = (0..100).map(|i| i as f32 * 0.01).collect();
        let run = |seed| {
            let mut s = sampler(|p| {
                p.top_k = 3;
                p.seed = seed
            });
            (0..200).map(|_| s.sample(&mut logits.clone(), &[], &[])).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        assert!(a.iter().all(|t| (97..100).contains(t)), "{a:?}");
        assert!((97..100).all(|t| a.contains(&t)), "all three should appear in 200 draws");
    }

    #[test]
    fn ties_at_the_top_k_edge_stay_together() {
        let logits = [1.0, 3.0, 2.0, 2.0, 0.5];
        let drawn: Vec<u32> =
            (0..64).map(|i| sample_row(&logits, 1.0, 2, 1.0, 0.0, i as f32 / 64.0)).collect();
        assert!(drawn.iter().all(|t| [1, 2, 3].contains(t)), "{drawn:?}");
        assert!([1, 2, 3].iter().all(|t| drawn.contains(t)), "{drawn:?}");
    }

    #[test]
    fn the_draw_walks_kept_tokens_in_id_order() {
        // Equal weights: uniform u picks the token at floor(u * kept) in ascending id order.
        let logits = [0.0, 5.0, 0.0, 5.0, 5.0, 5.0];
        assert_eq!(sample_row(&logits, 1.0, 0, 1.0, 0.5, 0.0), 1);
        assert_eq!(sample_row(&logits, 1.0, 0, 1.0, 0.5, 0.3), 3);
        assert_eq!(sample_row(&logits, 1.0, 0, 1.0, 0.5, 0.6), 4);
        assert_eq!(sample_row(&logits, 1.0, 0, 1.0, 0.5, 0.99), 5);
        // top_p keeps a group while the mass above it is below top_p.
        let logits = [2.0f32.ln(), 1.0f32.ln(), 1.0f32.ln()]; // probabilities 0.5, 0.25, 0.25
        assert_eq!(
            (0..10).map(|i| sample_row(&logits, 1.0, 0, 0.5, 0.0, i as f32 / 10.0)).max(),
            Some(0)
        );
        assert_eq!(
            (0..10).map(|i| sample_row(&logits, 1.0, 0, 0.51, 0.0, i as f32 / 10.0)).max(),
            Some(2)
        );
        assert_eq!(sample_row(&[f32::NAN, f32::NAN], 1.0, 0, 1.0, 0.0, 0.5), 0);
    }

    #[test]
    fn repetition_penalty_steers_away_from_seen_tokens() {
        let mut s =
            Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() }).unwrap();
        assert_eq!(s.sample(&mut [1.0, 1.5, 0.9], &[1], &[]), 0);
        // Once per distinct token, however often it was seen (as HF and vLLM): 1.5 / 2 beats
        // 0.7, 1.5 / 4 would not.
        let mut logits = [0.7, 1.5, -1.0];
        s.penalize(&mut logits, &[1, 2], &[1, 1, 2]);
        assert_eq!(logits, [0.7, 0.75, -2.0]);
    }

    fn penalties(presence: f32, frequency: f32) -> Sampler {
        Sampler::new(SamplingParams {
            presence_penalty: presence,
            frequency_penalty: frequency,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens_only() {
        // logit[t] -= frequency * count(t) + presence * (count(t) > 0), counts over the output.
        let mut logits = [1.0f32; 5];
        penalties(0.25, 0.5).penalize(&mut logits, &[3, 3, 4], &[1, 1, 2, 1]);
        assert_eq!(logits, [1.0, 1.0 - 1.5 - 0.25, 1.0 - 0.5 - 0.25, 1.0, 1.0]);
        // Negative values favour repeats.
        let mut logits = [0.0f32; 3];
        penalties(-1.0, -2.0).penalize(&mut logits, &[], &[2, 2]);
        assert_eq!(logits, [0.0, 0.0, 5.0]);
        // They steer a greedy choice: token 1 leads by 0.4 and was generated twice.
        let pick = |presence, frequency| {
            penalties(presence, frequency).sample(&mut [2.0, 2.4, 0.0], &[1, 1, 1, 1], &[1, 1])
        };
        assert_eq!(pick(0.0, 0.0), 1);
        assert_eq!(pick(0.0, 0.1), 1);
        assert_eq!(pick(0.0, 0.3), 0);
        assert_eq!(pick(0.3, 0.0), 1);
        assert_eq!(pick(0.5, 0.0), 0);
        // Four prompt copies of token 1 do not count.
        assert_eq!(penalties(2.0, 2.0).sample(&mut [2.0, 2.4, 0.0], &[1, 1, 1, 1], &[]), 1);
    }

    #[test]
    fn logprobs_are_the_raw_log_softmax() {
        let logits: Vec<f32> =
            (0..1000).map(|i| ((i * 7919) % 1009) as f32 * 0.013 - 4.0).collect();
        let all = logprobs(&logits, 3, logits.len());
        assert_eq!(all.top.len(), logits.len());
        let total: f64 = all.top.iter().map(|&(_, l)| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "probabilities sum to {total}");
        assert!(all.top.iter().all(|&(_, l)| l <= 0.0));
        assert!(all.top.windows(2).all(|w| w[0].1 >= w[1].1), "most likely first");
        assert_eq!(all.logprob, all.top.iter().find(|t| t.0 == 3).unwrap().1);
        // The greedy token is the top entry, with the largest logprob.
        let best = argmax(&logits);
        let lp = logprobs(&logits, best, 5);
        assert_eq!(lp.top[0], (best, lp.logprob));
        assert_eq!(lp.top, all.top[..5]);
        // Known values: probabilities 1/4 and 3/4; NaN and -inf have none and rank last.
        let lp = logprobs(&[0.0, 3.0f32.ln(), f32::NAN, f32::NEG_INFINITY], 0, 4);
        assert!((lp.logprob - 0.25f32.ln()).abs() < 1e-6, "{lp:?}");
        assert_eq!(lp.top[0].0, 1);
        assert!((lp.top[0].1 - 0.75f32.ln()).abs() < 1e-6, "{lp:?}");
        assert_eq!(lp.top[2..], [(2, f32::NEG_INFINITY), (3, f32::NEG_INFINITY)]);
        // Ties: lower id first; asking for more than the vocabulary gives it all.
        assert_eq!(
            logprobs(&[1.0, 2.0, 2.0], 0, 9).top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 2, 0]
        );
        assert_eq!(
            logprobs(&[f32::NAN; 3], 1, 1),
            TokenLogprobs { logprob: f32::NEG_INFINITY, top: vec![(0, f32::NEG_INFINITY)] }
        );
    }

    #[test]
    fn logprobs_describe_the_model_not_the_penalties() {
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 2.0,
            logprobs: Some(2),
            ..Default::default()
        })
        .unwrap();
        let raw = [2.0f32, 3.0, 0.0];
        let (t, lp) = s.sample_with_logprobs(&mut raw.clone(), &[], &[1]);
        assert_eq!(t, 0, "the penalty moved the choice");
        assert_eq!(lp, Some(logprobs(&raw, 0, 2)));
        assert_eq!(lp.unwrap().top[0].0, 1);
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample_with_logprobs(&mut raw.clone(), &[], &[]), (1, None));
    }

    #[test]
    fn bad_parameters_are_errors() {
        for p in [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { temperature: f32::NAN, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { min_p: 1.5, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
            SamplingParams { presence_penalty: 2.5, ..Default::default() },
            SamplingParams { frequency_penalty: -2.01, ..Default::default() },
            SamplingParams { frequency_penalty: f32::NAN, ..Default::default() },
            SamplingParams { logprobs: Some(MAX_LOGPROBS + 1), ..Default::default() },
        ] {
            assert!(Sampler::new(p).is_err());
        }
        let edge = SamplingParams {
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            logprobs: Some(MAX_LOGPROBS),
            ..Default::default()
        };
        assert!(Sampler::new(edge).is_ok());
    }
}
