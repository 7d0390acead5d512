//! Generation parameters in every combination, over hostile logits (NaN, infinities, empty
//! rows): invalid ones are refused; valid ones draw a token inside the row, greedy is argmax,
//! and log-probabilities are sorted, never NaN and never above 0.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tandem_core::generate::GenerateParams;
use tandem_core::sampling::{argmax, sample_row, Sampler, SamplingParams};

#[derive(Arbitrary, Debug)]
struct Input {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    logprobs: Option<u8>,
    seed: u64,
    max_tokens: u32,
    stop: Vec<String>,
    ignore_eos: bool,
    logits: Vec<f32>,
    prompt: Vec<u32>,
    generated: Vec<u32>,
    draws: u8,
}

fuzz_target!(|i: Input| {
    let sampling = SamplingParams {
        temperature: i.temperature,
        top_k: i.top_k as usize,
        top_p: i.top_p,
        min_p: i.min_p,
        repetition_penalty: i.repetition_penalty,
        presence_penalty: i.presence_penalty,
        frequency_penalty: i.frequency_penalty,
        logprobs: i.logprobs.map(usize::from),
        seed: i.seed,
    };
    let params = GenerateParams {
        max_tokens: i.max_tokens as usize,
        sampling: sampling.clone(),
        stop: i.stop,
        ignore_eos: i.ignore_eos,
        constraint: None,
        adapter: None,
    };
    let _ = params.validate();
    let Ok(mut sampler) = Sampler::new(sampling.clone()) else {
        assert!(sampling.validate().is_err());
        return;
    };
    if i.logits.is_empty() {
        return;
    }
    let n = i.logits.len();
    for d in 0..=i.draws % 4 {
        let mut logits = i.logits.clone();
        let (t, lp) = sampler.sample_with_logprobs(&mut logits, &i.prompt, &i.generated);
        assert!((t as usize) < n, "token {t} outside {n} logits");
        if sampling.temperature == 0.0 && !sampling.penalizes() {
            assert_eq!(t, argmax(&i.logits));
        }
        if i.logits.iter().any(|l| l.is_finite())
            && sampling.temperature > 0.0
            && !sampling.penalizes()
        {
            assert!(i.logits[t as usize].is_finite(), "drew a non-finite logit");
        }
        match (sampling.logprobs, lp) {
            (None, None) => {}
            (Some(k), Some(lp)) => {
                assert_eq!(lp.top.len(), k.min(n));
                assert!(!lp.logprob.is_nan() && lp.logprob <= 1e-4, "{lp:?}");
                assert!(
                    lp.top.iter().all(|&(id, l)| (id as usize) < n && !l.is_nan() && l <= 1e-4),
                    "{lp:?}"
                );
                assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1), "{lp:?}");
            }
            other => panic!("logprobs asked {:?}, got {:?}", sampling.logprobs, other.1),
        }
        let u = (d as f32 * 0.3 + (i.seed % 1000) as f32 / 1000.0).fract();
        if sampling.temperature > 0.0 {
            let t = sample_row(
                &i.logits,
                sampling.temperature,
                sampling.top_k,
                sampling.top_p,
                sampling.min_p,
                u,
            );
            assert!((t as usize) < n);
        }
    }
});
