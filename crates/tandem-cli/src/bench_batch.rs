//! `tandem bench --concurrency N`: many requests through the scheduler, as a server sees them.
//! R requests (mixed prompt and output lengths) are kept N in flight: a finished one is
//! replaced at once (continuous batching). The same requests then run one at a time
//! (sequential) and in fixed batches of N that each wait for their longest member (static
//! batching), so the three compare in one run on one model.

use std::collections::HashMap;
use std::sync::Arc;

use tandem_core::generate::GenerateParams;
use tandem_core::lora::Adapter;
use tandem_core::model::Model;
use tandem_core::scheduler::{Event, RequestId, Scheduler, SchedulerConfig};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::{Backend, Error, Result};
use web_time::Instant;

/// A workload: each request's prompt and output length.
pub struct Workload {
    pub requests: Vec<(Vec<u32>, usize)>,
}

impl Workload {
    /// `count` requests with prompts of 1/2 to 3/2 of `prompt` tokens and outputs of 1/4 to
    /// 7/4 of `gen` (a fixed spread, so runs compare), token ids spread over the vocabulary.
    pub fn mixed(count: usize, prompt: usize, gen: usize, vocab: usize) -> Self {
        let spread = |i: usize, mean: usize, lo: f64, width: f64| {
            let f = ((i * 37) % 101) as f64 / 100.0;
            ((mean as f64 * (lo + width * f)).round() as usize).max(1)
        };
        let requests = (0..count)
            .map(|i| {
                let p = spread(i, prompt, 0.5, 1.0);
                let ids = (0..p).map(|j| ((i * 7919 + j * 104729 + 13) % vocab) as u32).collect();
                (ids, spread(i + 50, gen, 0.25, 1.5))
            })
            .collect();
        Workload { requests }
    }

    /// The longest prompt + output, which the context must hold.
    pub fn longest(&self) -> usize {
        self.requests.iter().map(|(p, g)| p.len() + g).max().unwrap_or(0)
    }
}

/// How requests are fed to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Up to N in flight; a finished request is replaced at once.
    Continuous,
    /// N at a time; the next N start when the whole batch is done.
    Static,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub secs: f64,
    pub output_tokens: usize,
    pub ttft: Vec<f64>,
    /// Gaps between consecutive tokens of a request.
    pub itl: Vec<f64>,
    pub peak_blocks: usize,
    pub peak_running: usize,
    pub preemptions: u64,
    pub cached_prompt_tokens: u64,
}

impl RunStats {
    pub fn tok_s(&self) -> f64 {
        self.output_tokens as f64 / self.secs.max(1e-9)
    }
}

/// The `p`-th percentile (0..=100) of `v`, nearest rank; 0 for no samples.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Runs the workload with `concurrency` requests at a time in `mode`, on a cold prefix cache.
/// With `adapters`, request i runs through adapter i % their count (the model's LoRA pools
/// enabled).
pub fn run<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    work: &Workload,
    concurrency: usize,
    mode: Mode,
    max_batched_tokens: usize,
    adapters: &[(String, Arc<Adapter>)],
) -> Result<RunStats> {
    model.kv_blocks_mut()?.evict_idle();
    let config = SchedulerConfig { max_seqs: concurrency, max_batched_tokens };
    let mut sched = Scheduler::new(&mut *model, tok, config)?;
    for (name, a) in adapters {
        sched.add_adapter(name, a.clone())?;
    }
    let mut next = 0;
    // Request id -> (submitted, last token).
    let mut live: HashMap<RequestId, (Instant, Option<Instant>)> = HashMap::new();
    let mut stats = RunStats::default();
    let start = Instant::now();
    while next < work.requests.len() || sched.has_work() {
        let room = match mode {
            Mode::Continuous => concurrency - live.len(),
            Mode::Static if live.is_empty() => concurrency,
            Mode::Static => 0,
        };
        for _ in 0..room.min(work.requests.len() - next) {
            let (prompt, gen) = &work.requests[next];
            let adapter = (!adapters.is_empty()).then(|| adapters[next % adapters.len()].0.clone());
            let params = GenerateParams {
                max_tokens: *gen,
                ignore_eos: true,
                adapter,
                ..Default::default()
            };
            live.insert(sched.add(prompt.clone(), params)?, (Instant::now(), None));
            next += 1;
        }
        for (id, ev) in pollster::block_on(sched.step()) {
            let now = Instant::now();
            match ev {
                Event::Token { .. } => {
                    let (submitted, last) = live.get_mut(&id).expect("live request");
                    match last {
                        None => stats.ttft.push(now.duration_since(*submitted).as_secs_f64()),
                        Some(t) => stats.itl.push(now.duration_since(*t).as_secs_f64()),
                    }
                    *last = Some(now);
                    stats.output_tokens += 1;
                }
                Event::Finished { .. } => {
                    live.remove(&id);
                }
                Event::Failed(e) => {
                    return Err(Error::Backend {
                        backend: "bench".into(),
                        reason: format!("a request failed: {e}"),
                    })
                }
            }
        }
    }
    stats.secs = start.elapsed().as_secs_f64();
    stats.peak_blocks = sched.stats.peak_blocks_used;
    stats.peak_running = sched.stats.peak_running;
    stats.preemptions = sched.stats.preemptions;
    stats.cached_prompt_tokens = sched.stats.cached_prompt_tokens;
    Ok(stats)
}

/// One request alone: (seconds to its first token, seconds for the rest, tokens generated).
pub fn one<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
) -> Result<(f64, f64, usize)> {
    model.kv_blocks_mut()?.evict_idle();
    let config = SchedulerConfig { max_seqs: 1, max_batched_tokens: model.max_step_tokens() };
    let mut sched = Scheduler::new(&mut *model, tok, config)?;
    sched.add(
        prompt.to_vec(),
        GenerateParams { max_tokens, ignore_eos: true, ..Default::default() },
    )?;
    let start = Instant::now();
    let (mut first, mut tokens) = (None, 0);
    while sched.has_work() {
        for (_, ev) in pollster::block_on(sched.step()) {
            match ev {
                Event::Token { .. } => {
                    first.get_or_insert_with(|| start.elapsed().as_secs_f64());
                    tokens += 1;
                }
                Event::Finished { .. } => {}
                Event::Failed(e) => return Err(e),
            }
        }
    }
    let ttft = first.unwrap_or_default();
    Ok((ttft, start.elapsed().as_secs_f64() - ttft, tokens))
}
