//! Continuous batching end to end, generic over the backend: many concurrent requests through
//! the scheduler, each one's tokens equal to the same request run alone, under every mix the
//! scheduler makes (decodes with prompt chunks, preemption, prefix-cache hits, aborts).

use std::collections::HashMap;

use tandem_core::generate::{FinishReason, GenerateParams};
use tandem_core::loader;
use tandem_core::model::{Model, ModelOptions};
use tandem_core::sampling::SamplingParams;
use tandem_core::scheduler::{Event, RequestId, Scheduler, SchedulerConfig, Usage};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::Backend;

use crate::e2e::{self, Skip};

/// A request of the mix: its prompt and parameters.
#[derive(Clone, Debug)]
pub struct Req {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
}

/// What one request produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Done {
    pub tokens: Vec<u32>,
    pub text: String,
    pub reason: FinishReason,
    pub usage: Usage,
}

/// `n` requests of different prompt lengths and 4 to 3 + `gen_spread` output tokens, greedy
/// and seeded sampling in turn. With `shared_prefix`, every prompt starts with the same
/// `shared_prefix` tokens.
pub fn mix(tok: &Tokenizer, n: usize, shared_prefix: usize, gen_spread: usize) -> Vec<Req> {
    let words = [
        "Once", "upon", "a", "time", "there", "was", "a", "little", "girl", "named", "Lily", "she",
        "liked", "to", "play", "in", "the", "park", "with", "her", "dog",
    ];
    let mut bos = tok.bos_id().map(|b| vec![b]).unwrap_or_default();
    let prefix_text: Vec<&str> = words.iter().cycle().take(shared_prefix).copied().collect();
    bos.extend(tok.encode(&prefix_text.join(" ")).expect("encode"));
    let prefix: Vec<u32> = bos.into_iter().take(shared_prefix.max(1)).collect();
    (0..n)
        .map(|i| {
            let text: Vec<&str> =
                words.iter().cycle().skip(i * 3).take(1 + (i * 7) % 13).copied().collect();
            let mut prompt = prefix.clone();
            prompt.extend(tok.encode(&text.join(" ")).expect("encode"));
            let sampling = if i % 2 == 0 {
                SamplingParams::default()
            } else {
                SamplingParams {
                    temperature: 0.9,
                    top_p: 0.95,
                    top_k: if i % 4 == 1 { 40 } else { 0 },
                    seed: 1000 + i as u64,
                    ..Default::default()
                }
            };
            let params = GenerateParams {
                max_tokens: 4 + (i * 5) % gen_spread,
                sampling,
                stop: vec![],
                ignore_eos: true,
                constraint: None,
                adapter: None,
            };
            Req { prompt, params }
        })
        .collect()
}

/// Drives `sched` until every request is done, aborting request `a` after its `k`th token for
/// each (a, k) in `aborts`. Returns each request's result by its index in `reqs`.
pub fn run_all<B: Backend>(
    sched: &mut Scheduler<B, &mut Model<B>, &Tokenizer>,
    reqs: &[Req],
    aborts: &[(usize, usize)],
) -> Vec<Done> {
    let mut ids: HashMap<RequestId, usize> = HashMap::new();
    for (i, r) in reqs.iter().enumerate() {
        let id = sched.add(r.prompt.clone(), r.params.clone()).expect("add");
        ids.insert(id, i);
    }
    let by_index: HashMap<usize, RequestId> = ids.iter().map(|(&id, &i)| (i, id)).collect();
    let mut out: Vec<Option<Done>> = vec![None; reqs.len()];
    let mut tokens: Vec<Vec<u32>> = vec![vec![]; reqs.len()];
    let mut text: Vec<String> = vec![String::new(); reqs.len()];
    while sched.has_work() {
        for (id, ev) in pollster::block_on(sched.step()) {
            let i = ids[&id];
            match ev {
                Event::Token { id: t, text: s, .. } => {
                    tokens[i].push(t);
                    text[i].push_str(&s);
                    if aborts.iter().any(|&(a, k)| a == i && tokens[i].len() == k) {
                        assert!(sched.abort(by_index[&i]), "request {i} is running");
                    }
                }
                Event::Finished { reason, text: s, usage } => {
                    text[i].push_str(&s);
                    assert!(out[i].is_none(), "request {i} finished twice");
                    out[i] = Some(Done {
                        tokens: std::mem::take(&mut tokens[i]),
                        text: std::mem::take(&mut text[i]),
                        reason,
                        usage,
                    });
                }
                Event::Failed(e) => panic!("request {i} failed: {e}"),
            }
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, d)| d.unwrap_or_else(|| panic!("request {i} never finished")))
        .collect()
}

/// Each request alone (a fresh scheduler and a cold prefix cache each time).
pub fn solo<B: Backend>(model: &mut Model<B>, tok: &Tokenizer, reqs: &[Req]) -> Vec<Done> {
    reqs.iter()
        .map(|r| {
            model.kv_blocks_mut().expect("blocks").evict_idle();
            let mut s = Scheduler::new(
                &mut *model,
                tok,
                SchedulerConfig { max_seqs: 1, max_batched_tokens: 64 },
            )
            .expect("scheduler");
            run_all(&mut s, std::slice::from_ref(r), &[]).remove(0)
        })
        .collect()
}

/// Which scheduler situation a run must show.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expect {
    Plain,
    Preemption,
    PrefixHits,
    Aborts,
}

/// Runs `reqs` concurrently under `config` and checks each against `alone` (tokens and text;
/// aborted requests: a prefix of their solo tokens), the situation `expect` names, and that
/// every block is back in the pool afterwards.
pub fn check_batched<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    reqs: &[Req],
    alone: &[Done],
    config: SchedulerConfig,
    expect: Expect,
) {
    let name = model.backend.name();
    model.kv_blocks_mut().expect("blocks").evict_idle();
    let aborts: Vec<(usize, usize)> =
        if expect == Expect::Aborts { vec![(1, 2), (4, 1), (6, 3)] } else { vec![] };
    let (done, stats) = {
        let mut sched = Scheduler::new(&mut *model, tok, config).expect("scheduler");
        let done = run_all(&mut sched, reqs, &aborts);
        (done, sched.stats)
    };
    for (i, (d, a)) in done.iter().zip(alone).enumerate() {
        if aborts.iter().any(|&(r, _)| r == i) {
            assert_eq!(d.reason, FinishReason::Interrupted, "{name}: request {i}");
            assert_eq!(
                d.tokens[..],
                a.tokens[..d.tokens.len()],
                "{name}: aborted request {i} before its abort"
            );
            continue;
        }
        assert_eq!(
            d.tokens, a.tokens,
            "{name}: request {i} batched vs alone ({expect:?}, {config:?})"
        );
        assert_eq!(d.text, a.text, "{name}: request {i} text");
        assert_eq!(d.reason, a.reason, "{name}: request {i} finish reason");
    }
    match expect {
        Expect::Preemption => assert!(
            stats.preemptions > 0,
            "{name}: the pool was meant to force preemption: {stats:?}"
        ),
        Expect::PrefixHits => {
            assert!(
                stats.cached_prompt_tokens > 0,
                "{name}: shared prefixes were meant to hit the cache: {stats:?}"
            );
            assert!(
                done.iter().skip(1).any(|d| d.usage.cached_tokens > 0),
                "{name}: usage counts cached tokens"
            );
        }
        Expect::Plain | Expect::Aborts => {}
    }
    let kv = model.kv_blocks().expect("blocks back in the model");
    assert_eq!(kv.free_blocks(), kv.total_blocks(), "{name}: every block back in the pool");
    eprintln!(
        "{name}: {} requests batched ({expect:?}) equal their solo runs; {stats:?}",
        reqs.len()
    );
}

/// The standard battery on one model, whose KV pool must be tight (a few requests' worth):
/// `n` requests at once (so preemption must happen), again with aborts on a narrow budget,
/// then `3n/4` requests sharing a `prefix`-token prefix (so the prefix cache must hit).
/// Outputs are 4 to 3 + `gen_spread` tokens.
pub fn battery<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    n: usize,
    gen_spread: usize,
    prefix: usize,
) {
    let reqs = mix(tok, n, 0, gen_spread);
    let alone = solo(model, tok, &reqs);
    let wide = SchedulerConfig { max_seqs: 16, max_batched_tokens: 48 };
    check_batched(model, tok, &reqs, &alone, wide, Expect::Preemption);
    check_batched(
        model,
        tok,
        &reqs,
        &alone,
        SchedulerConfig { max_seqs: 5, max_batched_tokens: 7 },
        Expect::Aborts,
    );
    let shared = mix(tok, n * 3 / 4, prefix, gen_spread);
    let shared_alone = solo(model, tok, &shared);
    check_batched(model, tok, &shared, &shared_alone, wide, Expect::PrefixHits);
}

/// [`battery`] on stories260K with a pool of `kv_blocks` blocks of 4 positions.
pub fn stories_battery<B: Backend>(
    backend: B,
    n: usize,
    gen_spread: usize,
    prefix: usize,
    kv_blocks: usize,
) -> Result<(), Skip> {
    let source = loader::open(&e2e::stories_dir()?).expect("open stories260K");
    let tok = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let opts = ModelOptions { block_size: 4, kv_blocks: Some(kv_blocks), ..Default::default() };
    battery(&mut e2e::load(backend, &source, &opts), &tok, n, gen_spread, prefix);
    Ok(())
}

/// [`battery`] of `n` requests on SmolLM2-135M-Instruct with a pool of `kv_blocks` blocks of 8
/// positions (at least a shared-prefix request's worth).
pub fn smollm_battery<B: Backend>(
    backend: B,
    n: usize,
    prefix: usize,
    kv_blocks: usize,
) -> Result<(), Skip> {
    let source = loader::open(&e2e::smollm_gguf()?).expect("open SmolLM2");
    let tok = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let opts = ModelOptions {
        context: 512,
        block_size: 8,
        kv_blocks: Some(kv_blocks),
        ..Default::default()
    };
    battery(&mut e2e::load(backend, &source, &opts), &tok, n, 23, prefix);
    Ok(())
}
