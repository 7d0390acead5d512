//! Prometheus metrics, every series labelled by model. The engine threads update them (gauges
//! after each step, counters and histograms as requests finish); `/metrics` encodes them.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tandem_core::generate::FinishReason;
use tandem_core::scheduler::Usage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdapterLabel {
    model: String,
    adapter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    model: String,
    reason: String,
}

type Hist = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// Request-level latencies: 1 ms to about 65 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Gaps between tokens: 0.25 ms to about 8 s.
fn token_gap_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    running: Family<ModelLabel, Gauge>,
    waiting: Family<ModelLabel, Gauge>,
    kv_used: Family<ModelLabel, Gauge>,
    kv_total: Family<ModelLabel, Gauge>,
    kv_cached: Family<ModelLabel, Gauge>,
    kv_usage: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    prefix_hits: Family<ModelLabel, Counter>,
    preemptions: Family<ModelLabel, Counter>,
    prompt_tokens: Family<ModelLabel, Counter>,
    generated_tokens: Family<ModelLabel, Counter>,
    finished: Family<ReasonLabel, Counter>,
    lora_requests: Family<AdapterLabel, Counter>,
    lora_tokens: Family<AdapterLabel, Counter>,
    queue: Hist,
    ttft: Hist,
    itl: Hist,
    e2e: Hist,
}

impl Default for Metrics {
    fn default() -> Self {
        let hist = |f: fn() -> Histogram| Family::new_with_constructor(f);
        let mut m = Metrics {
            registry: Registry::with_prefix("tandem"),
            running: Family::default(),
            waiting: Family::default(),
            kv_used: Family::default(),
            kv_total: Family::default(),
            kv_cached: Family::default(),
            kv_usage: Family::default(),
            prefix_hits: Family::default(),
            preemptions: Family::default(),
            prompt_tokens: Family::default(),
            generated_tokens: Family::default(),
            finished: Family::default(),
            lora_requests: Family::default(),
            lora_tokens: Family::default(),
            queue: hist(latency_histogram),
            ttft: hist(latency_histogram),
            itl: hist(token_gap_histogram),
            e2e: hist(latency_histogram),
        };
        let r = &mut m.registry;
        r.register(
            "requests_running",
            "Requests being computed (in the running batch)",
            m.running.clone(),
        );
        r.register(
            "requests_waiting",
            "Requests queued, not yet admitted or preempted",
            m.waiting.clone(),
        );
        r.register(
            "kv_blocks_used",
            "KV blocks held by requests (idle prefix-cache blocks not counted)",
            m.kv_used.clone(),
        );
        r.register("kv_blocks_total", "KV blocks in the pool", m.kv_total.clone());
        r.register(
            "kv_blocks_cached",
            "KV blocks in the prefix cache, in use or idle (idle ones are free to reuse)",
            m.kv_cached.clone(),
        );
        r.register("kv_usage_ratio", "Fraction of KV blocks held by requests", m.kv_usage.clone());
        r.register(
            "prefix_cache_hit_tokens",
            "Prompt tokens taken from the prefix cache instead of computed",
            m.prefix_hits.clone(),
        );
        r.register(
            "preemptions",
            "Requests preempted for KV room (recomputed later)",
            m.preemptions.clone(),
        );
        r.register("prompt_tokens", "Prompt tokens of finished requests", m.prompt_tokens.clone());
        r.register("generated_tokens", "Tokens generated", m.generated_tokens.clone());
        r.register(
            "requests_finished",
            "Requests finished, by reason (stop, length, abort, error)",
            m.finished.clone(),
        );
        r.register(
            "lora_requests_finished",
            "Requests finished through each LoRA adapter",
            m.lora_requests.clone(),
        );
        r.register(
            "lora_generated_tokens",
            "Tokens generated through each LoRA adapter",
            m.lora_tokens.clone(),
        );
        r.register_with_unit(
            "queue_time",
            "From submission to first scheduled",
            Unit::Seconds,
            m.queue.clone(),
        );
        r.register_with_unit(
            "time_to_first_token",
            "From submission to first token",
            Unit::Seconds,
            m.ttft.clone(),
        );
        r.register_with_unit(
            "inter_token_latency",
            "Between consecutive tokens of a request",
            Unit::Seconds,
            m.itl.clone(),
        );
        r.register_with_unit(
            "e2e_request_latency",
            "From submission to finish",
            Unit::Seconds,
            m.e2e.clone(),
        );
        m
    }
}

impl Metrics {
    /// The text exposition of every metric (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// One model's series, created now so they read 0 before the first request.
    pub fn for_model(&self, model: &str) -> ModelMetrics {
        let l = ModelLabel { model: model.to_string() };
        for reason in ["stop", "length", "abort", "error"] {
            let _ = self
                .finished
                .get_or_create(&ReasonLabel { model: model.to_string(), reason: reason.into() });
        }
        ModelMetrics {
            model: model.to_string(),
            running: self.running.get_or_create(&l).clone(),
            waiting: self.waiting.get_or_create(&l).clone(),
            kv_used: self.kv_used.get_or_create(&l).clone(),
            kv_total: self.kv_total.get_or_create(&l).clone(),
            kv_cached: self.kv_cached.get_or_create(&l).clone(),
            kv_usage: self.kv_usage.get_or_create(&l).clone(),
            prefix_hits: self.prefix_hits.get_or_create(&l).clone(),
            preemptions: self.preemptions.get_or_create(&l).clone(),
            prompt_tokens: self.prompt_tokens.get_or_create(&l).clone(),
            generated_tokens: self.generated_tokens.get_or_create(&l).clone(),
            finished: self.finished.clone(),
            lora_requests: self.lora_requests.clone(),
            lora_tokens: self.lora_tokens.clone(),
            queue: self.queue.get_or_create(&l).clone(),
            ttft: self.ttft.get_or_create(&l).clone(),
            itl: self.itl.get_or_create(&l).clone(),
            e2e: self.e2e.get_or_create(&l).clone(),
        }
    }
}

/// One model's handles into [`Metrics`] (each shares its value with the registry).
pub struct ModelMetrics {
    model: String,
    running: Gauge,
    waiting: Gauge,
    kv_used: Gauge,
    kv_total: Gauge,
    kv_cached: Gauge,
    kv_usage: Gauge<f64, AtomicU64>,
    pub prefix_hits: Counter,
    pub preemptions: Counter,
    prompt_tokens: Counter,
    pub generated_tokens: Counter,
    finished: Family<ReasonLabel, Counter>,
    lora_requests: Family<AdapterLabel, Counter>,
    lora_tokens: Family<AdapterLabel, Counter>,
    queue: Histogram,
    ttft: Histogram,
    pub itl: Histogram,
    e2e: Histogram,
}

/// The scheduler's and the KV pool's state after a step.
pub struct EngineGauges {
    pub running: usize,
    pub waiting: usize,
    pub total_blocks: usize,
    /// Blocks a sequence could take now: free plus idle cached.
    pub free_blocks: usize,
    pub cached_blocks: usize,
}

impl ModelMetrics {
    pub fn set_gauges(&self, g: &EngineGauges) {
        let used = g.total_blocks.saturating_sub(g.free_blocks);
        self.running.set(g.running as i64);
        self.waiting.set(g.waiting as i64);
        self.kv_used.set(used as i64);
        self.kv_total.set(g.total_blocks as i64);
        self.kv_cached.set(g.cached_blocks as i64);
        self.kv_usage.set(if g.total_blocks == 0 {
            0.0
        } else {
            used as f64 / g.total_blocks as f64
        });
    }

    /// A request through LoRA adapter `adapter` ended, having generated `tokens`.
    pub fn adapter_finished(&self, adapter: &str, tokens: usize) {
        let l = AdapterLabel { model: self.model.clone(), adapter: adapter.into() };
        self.lora_requests.get_or_create(&l).inc();
        self.lora_tokens.get_or_create(&l).inc_by(tokens as u64);
    }

    /// A request ended: `usage` is `None` when it failed.
    pub fn finished(&self, reason: &str, usage: Option<&Usage>, e2e_secs: f64) {
        self.finished
            .get_or_create(&ReasonLabel { model: self.model.clone(), reason: reason.into() })
            .inc();
        self.e2e.observe(e2e_secs);
        if let Some(u) = usage {
            self.prompt_tokens.inc_by(u.prompt_tokens as u64);
            // A request aborted while queued was never scheduled: it has no queue time or TTFT.
            if u.generated_tokens > 0 {
                self.queue.observe(u.queue_secs);
                self.ttft.observe(u.ttft_secs);
            }
        }
    }
}

/// OpenAI's finish_reason for tandem's: both end-of-sequence and a stop string are "stop", a
/// full context is "length" as max_tokens is; "abort" (as vLLM says) when the request was
/// stopped (a disconnect or a shutdown).
pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Context => "length",
        FinishReason::Interrupted => "abort",
    }
}
