//! Speculative decoding end to end, generic over the backend: with prompt-lookup drafts and
//! with a draft model, every request's tokens equal plain decoding's (greedy and seeded
//! sampling alike), alone or batched, the KV blocks in use after every step are a plain run's,
//! nothing leaks, and the sampled distribution at a position is plain sampling's.

use std::collections::BTreeMap;

use tandem_core::generate::{FinishReason, GenerateParams};
use tandem_core::loader::{self, ModelSource};
use tandem_core::model::{Model, ModelOptions};
use tandem_core::sampling::SamplingParams;
use tandem_core::scheduler::{Event, Scheduler, SchedulerConfig, SchedulerStats, Speculation};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::Backend;

use crate::batch::{self, Done, Req};
use crate::e2e::{self, Skip};

/// Runs `reqs` concurrently under `config` with `spec` lent to the scheduler (handed back
/// after), checking that every block of the target's and the draft's pools is back.
pub fn run_spec<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    reqs: &[Req],
    config: SchedulerConfig,
    spec: &mut Option<Speculation<B>>,
) -> (Vec<Done>, SchedulerStats) {
    model.kv_blocks_mut().expect("blocks").evict_idle();
    let mut sched = Scheduler::new(&mut *model, tok, config).expect("scheduler");
    sched.set_speculation(spec.take()).expect("speculation");
    let done = batch::run_all(&mut sched, reqs, &[]);
    let stats = sched.stats;
    *spec = sched.set_speculation(None).expect("off");
    drop(sched);
    let name = model.backend.name();
    let kv = model.kv_blocks().expect("blocks back in the model");
    assert_eq!(kv.free_blocks(), kv.total_blocks(), "{name}: every target block back in the pool");
    if let Some(d) = spec.as_ref().and_then(|s| s.draft()) {
        let kv = d.kv_blocks().expect("blocks back in the draft model");
        assert_eq!(
            kv.free_blocks(),
            kv.total_blocks(),
            "{name}: every draft block back in the pool"
        );
    }
    (done, stats)
}

/// Asserts each of `got` equals `want` (tokens, text, finish reason) and that speculation both
/// accepted and rejected draft tokens (so verification and rollback both ran).
pub fn assert_same(got: &[Done], want: &[Done], stats: &SchedulerStats, what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.tokens, w.tokens, "{what}: request {i} tokens with speculation vs without");
        assert_eq!(g.text, w.text, "{what}: request {i} text");
        assert_eq!(g.reason, w.reason, "{what}: request {i} finish reason");
    }
    let used: usize = got.iter().map(|d| d.usage.draft_tokens).sum();
    assert_eq!(used as u64, stats.draft_tokens, "{what}: usage counts every draft token");
    let accepted: usize = got.iter().map(|d| d.usage.accepted_tokens).sum();
    assert_eq!(accepted as u64, stats.accepted_tokens, "{what}: usage counts every accepted token");
    assert_spec_ran(stats, &format!("{what}: {} requests equal plain decoding", got.len()));
}

/// Asserts that speculation both accepted and rejected draft tokens (so verification and
/// rollback both ran), and says how it went.
pub fn assert_spec_ran(stats: &SchedulerStats, what: &str) {
    let (drafted, accepted) = (stats.draft_tokens, stats.accepted_tokens);
    assert!(accepted > 0, "{what}: no draft token was accepted: {stats:?}");
    assert!(
        drafted > accepted,
        "{what}: no draft token was rejected, so no rollback ran: {stats:?}"
    );
    eprintln!("{what}; {accepted}/{drafted} draft tokens accepted in {} steps", stats.steps);
}

/// One request alone, plain, through a fresh scheduler (the reference).
pub fn plain<B: Backend>(model: &mut Model<B>, tok: &Tokenizer, reqs: &[Req]) -> Vec<Done> {
    batch::solo(model, tok, reqs)
}

/// One request alone with speculation, step by step: after every step the target's blocks in
/// use are exactly those a plain run holds at that many generated tokens (its positions up to
/// the newest token's), and the draft model's never more. Returns what it produced.
pub fn solo_checking_blocks<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    req: &Req,
    spec: &mut Option<Speculation<B>>,
) -> (Done, SchedulerStats) {
    model.kv_blocks_mut().expect("blocks").evict_idle();
    if let Some(d) = spec.as_mut().and_then(|s| match &mut s.drafter {
        tandem_core::scheduler::Drafter::Model(m) => Some(m),
        _ => None,
    }) {
        d.kv_blocks_mut().expect("blocks").evict_idle();
    }
    let bs = model.kv.block_size;
    let name = model.backend.name();
    let mut sched =
        Scheduler::new(&mut *model, tok, SchedulerConfig { max_seqs: 1, max_batched_tokens: 64 })
            .expect("scheduler");
    sched.set_speculation(spec.take()).expect("speculation");
    sched.add(req.prompt.clone(), req.params.clone()).expect("add");
    let (mut tokens, mut text, mut out) = (vec![], String::new(), None);
    while sched.has_work() {
        for (_, ev) in pollster::block_on(sched.step()) {
            match ev {
                Event::Token { id, text: s, .. } => {
                    tokens.push(id);
                    text.push_str(&s);
                }
                Event::Finished { reason, text: s, usage } => {
                    text.push_str(&s);
                    out = Some(Done {
                        tokens: std::mem::take(&mut tokens),
                        text: std::mem::take(&mut text),
                        reason,
                        usage,
                    });
                }
                Event::Failed(e) => panic!("{name}: failed: {e}"),
            }
        }
        if tokens.is_empty() && out.is_none() {
            continue; // still in the prompt
        }
        // A plain run holds the positions up to the newest token's (that one is fed next).
        let expected =
            if out.is_some() { 0 } else { (req.prompt.len() + tokens.len() - 1).div_ceil(bs) };
        let kv = sched.kv_blocks();
        assert_eq!(
            kv.total_blocks() - kv.free_blocks(),
            expected,
            "{name}: target blocks in use after {} tokens",
            tokens.len()
        );
        if let Some(d) = sched.draft_kv_blocks() {
            let used = d.total_blocks() - d.free_blocks();
            assert!(
                used <= expected,
                "{name}: draft blocks in use {used} > {expected} after {} tokens",
                tokens.len()
            );
        }
    }
    let stats = sched.stats;
    *spec = sched.set_speculation(None).expect("off");
    drop(sched);
    let kv = model.kv_blocks().expect("blocks back in the model");
    assert_eq!(kv.free_blocks(), kv.total_blocks(), "{name}: every block back");
    (out.expect("finished"), stats)
}

fn stories(opts: &ModelOptions) -> Result<(ModelSource, Tokenizer, ModelOptions), Skip> {
    let source = loader::open(&e2e::stories_dir()?).expect("open stories260K");
    let tok = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    Ok((source, tok, opts.clone()))
}

/// A prompt that the story will quote from (prompt lookup has something to find).
pub fn story_prompt(tok: &Tokenizer) -> Vec<u32> {
    let mut p = vec![tok.bos_id().expect("bos")];
    p.extend(tok.encode("Lily and Ben went to the park. Lily saw a big red ball. Ben said, \"Lily, look at the ball!\" Lily and Ben").expect("encode"));
    p
}

/// stories260K, greedy and seeded sampling, prompt lookup and a draft model (the same weights
/// in f16, so drafts mostly but not always agree): each request alone equals plain decoding
/// with the KV blocks a plain run holds after every step; then 8 requests at once (and again
/// in a pool tight enough to preempt) each equal their plain solo runs.
pub fn stories_battery<B: Backend>(make: &dyn Fn() -> B) -> Result<(), Skip> {
    let (source, tok, opts) =
        stories(&ModelOptions { block_size: 4, kv_blocks: Some(400), ..Default::default() })?;
    let mut model = e2e::load(make(), &source, &opts);
    let draft_opts = ModelOptions { weight_dtype: Some(tandem_core::DType::F16), ..opts.clone() };
    let spec_kinds: Vec<(&str, Speculation<B>)> = vec![
        ("ngram k=4", Speculation::ngram(4)),
        ("draft model k=3", Speculation::draft_model(e2e::load(make(), &source, &draft_opts), 3)),
    ];
    let mut reqs = vec![];
    for (i, sampling) in [
        SamplingParams::default(),
        SamplingParams { temperature: 0.8, top_p: 0.95, seed: 7, ..Default::default() },
    ]
    .into_iter()
    .enumerate()
    {
        let stop = if i == 0 { vec![] } else { vec!["park".to_string()] };
        reqs.push(Req {
            prompt: story_prompt(&tok),
            params: GenerateParams {
                max_tokens: 120,
                sampling,
                stop,
                ignore_eos: true,
                constraint: None,
                adapter: None,
            },
        });
    }
    let mut alone = plain(&mut model, &tok, &reqs);
    // A stop string from the middle of the greedy story: speculation must stop exactly where
    // plain decoding does, never emitting an accepted draft token past it.
    let words: Vec<&str> = alone[0].text.split_whitespace().filter(|w| w.len() >= 4).collect();
    let stop = words[words.len() / 2].to_string();
    let stopping = Req {
        prompt: story_prompt(&tok),
        params: GenerateParams { max_tokens: 120, stop: vec![stop.clone()], ..Default::default() },
    };
    let stopped = plain(&mut model, &tok, std::slice::from_ref(&stopping)).remove(0);
    assert_eq!(stopped.reason, FinishReason::Stop, "plain decoding meets the stop string {stop:?}");
    reqs.push(stopping);
    alone.push(stopped);
    let mix = batch::mix(&tok, 8, 0, 40);
    let mix_alone = plain(&mut model, &tok, &mix);
    for (what, spec) in spec_kinds {
        let mut spec = Some(spec);
        let mut total = SchedulerStats::default();
        for (r, a) in reqs.iter().zip(&alone) {
            let (d, stats) = solo_checking_blocks(&mut model, &tok, r, &mut spec);
            assert_eq!(d.tokens, a.tokens, "{what}: tokens alone ({:?})", r.params.sampling);
            assert_eq!(d.text, a.text, "{what}: text alone");
            assert_eq!(d.reason, a.reason, "{what}: finish reason alone");
            assert_eq!(
                (d.usage.draft_tokens as u64, d.usage.accepted_tokens as u64),
                (stats.draft_tokens, stats.accepted_tokens),
                "{what}: usage"
            );
            total.steps += stats.steps;
            total.draft_tokens += stats.draft_tokens;
            total.accepted_tokens += stats.accepted_tokens;
        }
        assert_spec_ran(&total, &format!("stories260K {what}, alone, greedy and sampled"));
        let wide = SchedulerConfig { max_seqs: 16, max_batched_tokens: 48 };
        let (done, stats) = run_spec(&mut model, &tok, &mix, wide, &mut spec);
        assert_same(&done, &mix_alone, &stats, &format!("stories260K {what}, 8 at once"));
        // A pool of 24 blocks of 4 positions: the 8 requests cannot all hold their contexts.
        let mut tight_model =
            e2e::load(make(), &source, &ModelOptions { kv_blocks: Some(24), ..opts.clone() });
        let (done, stats) = run_spec(&mut tight_model, &tok, &mix, wide, &mut spec);
        assert!(stats.preemptions > 0, "{what}: the tight pool was meant to preempt: {stats:?}");
        assert_same(
            &done,
            &mix_alone,
            &stats,
            &format!("stories260K {what}, 8 at once with preemption"),
        );
    }
    Ok(())
}

/// The distribution of the token sampled at generated position `at`, over `n` seeded runs
/// from `first_seed` on, with or without prompt-lookup speculation; and each run's tokens.
fn sampled_at<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    prompt: &[u32],
    at: usize,
    seeds: std::ops::Range<u64>,
    spec: bool,
) -> (BTreeMap<u32, u64>, Vec<Vec<u32>>, SchedulerStats) {
    let reqs: Vec<Req> = seeds
        .map(|seed| {
            let sampling = SamplingParams { temperature: 1.0, seed, ..Default::default() };
            Req {
                prompt: prompt.to_vec(),
                params: GenerateParams {
                    max_tokens: at + 1,
                    sampling,
                    stop: vec![],
                    ignore_eos: true,
                    constraint: None,
                    adapter: None,
                },
            }
        })
        .collect();
    let mut s = spec.then(|| Speculation::ngram(4));
    let config = SchedulerConfig { max_seqs: 64, max_batched_tokens: 512 };
    let (done, stats) = run_spec(model, tok, &reqs, config, &mut s);
    let mut counts = BTreeMap::new();
    for d in &done {
        *counts.entry(d.tokens[at]).or_insert(0) += 1;
    }
    (counts, done.into_iter().map(|d| d.tokens).collect(), stats)
}

/// Two-sample chi-square statistic of equal-sized samples `a` and `b` and its degrees of
/// freedom; tokens seen fewer than 10 times in both together share one bin.
pub fn chi_square(a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>) -> (f64, usize) {
    let mut bins: Vec<(u64, u64)> = vec![];
    let mut rare = (0, 0);
    for t in a.keys().chain(b.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (x, y) = (a.get(t).copied().unwrap_or(0), b.get(t).copied().unwrap_or(0));
        if x + y >= 10 {
            bins.push((x, y));
        } else {
            rare = (rare.0 + x, rare.1 + y);
        }
    }
    if rare.0 + rare.1 > 0 {
        bins.push(rare);
    }
    let stat = bins.iter().map(|&(x, y)| (x as f64 - y as f64).powi(2) / (x + y) as f64).sum();
    (stat, bins.len().saturating_sub(1))
}

/// The chi-square distribution's upper 0.1% point for `df` degrees of freedom
/// (Wilson-Hilferty: within a percent for df >= 3).
pub fn chi_square_critical_001(df: usize) -> f64 {
    let (d, z) = (df as f64, 3.0902);
    d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

/// Seeded sampling at temperature 1 on stories260K: the token at generated position 6 over
/// 1500 runs with prompt-lookup speculation against 1500 plain runs with other seeds (a
/// two-sample chi-square test at the 0.1% level, deterministic with its fixed seeds), and the
/// runs with speculation token for token equal to plain runs with the same seeds.
pub fn stories_sampling_distribution<B: Backend>(backend: B) -> Result<(), Skip> {
    let (source, tok, opts) =
        stories(&ModelOptions { block_size: 4, kv_blocks: Some(2048), ..Default::default() })?;
    let mut model = e2e::load(backend, &source, &opts);
    let prompt = story_prompt(&tok);
    let (n, at) = (1500, 6);
    let (with, with_tokens, stats) = sampled_at(&mut model, &tok, &prompt, at, 0..n, true);
    let (without, _, _) = sampled_at(&mut model, &tok, &prompt, at, n..2 * n, false);
    let (stat, df) = chi_square(&with, &without);
    let crit = chi_square_critical_001(df);
    eprintln!("chi-square {stat:.1} on {df} degrees of freedom (0.1% critical value {crit:.1}); {}/{} draft tokens accepted", stats.accepted_tokens, stats.draft_tokens);
    assert!(df >= 3, "the position should have several likely tokens: {with:?}");
    assert!(
        stats.draft_tokens > stats.accepted_tokens && stats.accepted_tokens > 0,
        "drafts both accepted and rejected: {stats:?}"
    );
    assert!(stat < crit, "the sampled distribution with speculation differs from plain sampling: chi-square {stat:.1} >= {crit:.1}\nwith {with:?}\nwithout {without:?}");
    let (_, same_seeds, _) = sampled_at(&mut model, &tok, &prompt, at, 0..200, false);
    for (i, (a, b)) in with_tokens.iter().zip(&same_seeds).enumerate() {
        assert_eq!(a, b, "seed {i}: speculation drew other tokens than plain sampling");
    }
    Ok(())
}

/// SmolLM2-135M-Instruct at f32 (its Q4_1 weights dequantized) as the target, with its own
/// Q4_1 file as the draft and with prompt lookup: greedy answers to a chat prompt and to a
/// quoting prompt equal plain greedy decoding, token for token.
pub fn smollm_greedy<B: Backend>(make: &dyn Fn() -> B) -> Result<(), Skip> {
    let source = loader::open(&e2e::smollm_gguf()?).expect("open SmolLM2");
    let tok = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let opts = ModelOptions {
        context: 512,
        weight_dtype: Some(tandem_core::DType::F32),
        ..Default::default()
    };
    let mut model = e2e::load(make(), &source, &opts);
    let chat = |text: &str| {
        let messages = [tandem_core::tokenizer::ChatMessage::new("user", text)];
        tok.encode(&tok.apply_chat_template(&messages, true).expect("template")).expect("encode")
    };
    let quote = "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the old river bank.";
    let summary = "The library will be built on the corner of Main Street and Oak Avenue, next to the old train station. It will have three floors and a rooftop garden.\n\nSummarize the text above, quoting it.";
    let reqs: Vec<Req> = [chat("What is the capital of France?"), chat(quote), chat(summary)]
        .into_iter()
        .map(|prompt| Req {
            prompt,
            params: GenerateParams { max_tokens: 40, ..Default::default() },
        })
        .collect();
    let alone = plain(&mut model, &tok, &reqs);
    let draft = e2e::load(make(), &source, &ModelOptions { context: 512, ..Default::default() });
    for (what, spec) in
        [("ngram k=4", Speculation::ngram(4)), ("q4 draft k=4", Speculation::draft_model(draft, 4))]
    {
        let mut spec = Some(spec);
        let config = SchedulerConfig { max_seqs: 4, max_batched_tokens: 64 };
        let (done, stats) = run_spec(&mut model, &tok, &reqs, config, &mut spec);
        for d in &done {
            assert!(d.reason == FinishReason::Eos || d.reason == FinishReason::Length);
        }
        assert_same(&done, &alone, &stats, &format!("SmolLM2 f32 {what}"));
        eprintln!(
            "answers: {:?}",
            done.iter().map(|d| (&d.text, d.tokens.len())).collect::<Vec<_>>()
        );
    }
    Ok(())
}
