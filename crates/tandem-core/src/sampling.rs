//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p and a
//! repetition penalty, with a seeded generator so a run can be repeated exactly.

use crate::{Error, Result};

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
    /// Divides positive (multiplies negative) logits of tokens already seen; 1 is off.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidParameter(what));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature must be a finite number >= 0, got {}", self.temperature));
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
        Ok(())
    }
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

    /// Picks a token from `logits` ([vocab]); `seen` are the tokens the repetition penalty
    /// applies to. Modifies `logits`.
    pub fn sample(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let u = self.rng.next_f32();
        sample_row(logits, p.temperature, p.top_k, p.top_p, p.min_p, u)
    }

    /// The next uniform draw, for sampling on the device with the Sample op.
    pub fn next_uniform(&mut self) -> f32 {
        self.rng.next_f32()
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
pub fn sample_row(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, min_p: f32, uniform: f32) -> u32 {
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
    let mut kept: Vec<(u32, f32)> = cand[..keep].iter().zip(&weights).map(|(c, &w)| (c.0, w)).collect();
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
        assert_eq!(s.sample(&mut [0.5, f32::NAN, 2.0, 2.0, -1.0], &[]), 2);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.1, 3.0, 2.9, -5.0];
        for mut s in [sampler(|p| p.top_k = 1), sampler(|p| p.top_p = 1e-6), sampler(|p| p.min_p = 0.999)] {
            for _ in 0..50 {
                assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
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
            (0..200).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
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
        let drawn: Vec<u32> = (0..64).map(|i| sample_row(&logits, 1.0, 2, 1.0, 0.0, i as f32 / 64.0)).collect();
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
        assert_eq!((0..10).map(|i| sample_row(&logits, 1.0, 0, 0.5, 0.0, i as f32 / 10.0)).max(), Some(0));
        assert_eq!((0..10).map(|i| sample_row(&logits, 1.0, 0, 0.51, 0.0, i as f32 / 10.0)).max(), Some(2));
        assert_eq!(sample_row(&[f32::NAN, f32::NAN], 1.0, 0, 1.0, 0.0, 0.5), 0);
    }

    #[test]
    fn repetition_penalty_steers_away_from_seen_tokens() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() }).unwrap();
        assert_eq!(s.sample(&mut [1.0, 1.5, 0.9], &[1]), 0);
    }

    #[test]
    fn bad_parameters_are_errors() {
        for p in [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { temperature: f32::NAN, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { min_p: 1.5, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
        ] {
            assert!(Sampler::new(p).is_err());
        }
    }
}
