//! `tandem bench --concurrency N --lora-adapters 1,4,16`: the continuous-batching workload with
//! its requests spread over K random LoRA adapters (rank --lora-rank on every projection),
//! each K against the same workload with no adapter, in one run on one model; and what one
//! adapter costs: its bytes on the backend and the time to load it into a slot.

use std::sync::Arc;

use tandem_core::lora::{Adapter, ModuleLora, Target};
use tandem_core::model::{LoraOptions, Model, ModelOptions};
use tandem_core::tokenizer::Tokenizer;
use tandem_core::{Backend, Result};
use web_time::Instant;

use crate::backend::WithBackend;
use crate::bench::BenchArgs;
use crate::bench_batch::{self, Mode, Workload};
use crate::run::{load_model, peak_memory};

pub struct LoraBench<'a> {
    pub args: &'a BenchArgs,
    pub source: &'a tandem_core::loader::ModelSource,
    pub tok: &'a Tokenizer,
    pub opts: &'a ModelOptions,
    pub work: &'a Workload,
    pub n: usize,
}

/// A random adapter of `rank` on every projection `model` has adapter pools for, with
/// PEFT's initial scales (A uniform in +-1/sqrt(in), B small).
fn random_adapter<B: Backend>(model: &Model<B>, rank: usize, seed: u64) -> Result<Adapter> {
    let c = &model.config;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        // xorshift64*: the values only need to be finite and varied.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let experts = c.features.moe.is_some();
    let mut modules = vec![];
    for layer in 0..c.n_layers {
        for target in Target::ALL {
            if experts && matches!(target, Target::Gate | Target::Up | Target::Down) {
                continue;
            }
            let (k, m) = target.shape(c);
            let a = (0..rank * k).map(|_| uniform() / (k as f32).sqrt()).collect();
            let b = (0..m * rank).map(|_| uniform() * 0.01).collect();
            modules.push(ModuleLora { layer, target, rank, a, b });
        }
    }
    Adapter::from_modules(modules, c)
}

impl WithBackend for LoraBench<'_> {
    fn call<B: Backend>(self, backend: B, _another: &dyn Fn() -> Result<B>) -> Result<()> {
        let a = self.args;
        let mut model = load_model(backend, self.source, self.opts)?;
        let most = a.lora_adapters.iter().copied().max().unwrap_or(1).max(1);
        // Every adapter of the largest mix resident: the runs measure mixing, not swapping.
        model.enable_lora(LoraOptions {
            slots: most,
            rank: a.lora_rank,
            dtype: a.lora_dtype.dtype(),
        })?;
        let adapters: Vec<(String, Arc<Adapter>)> = (0..most)
            .map(|i| {
                Ok((format!("lora{i}"), Arc::new(random_adapter(&model, a.lora_rank, i as u64)?)))
            })
            .collect::<Result<_>>()?;
        let swap = (0..a.repeat.max(3))
            .map(|_| {
                let t = Instant::now();
                model.load_lora(0, &adapters[0].1).map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<Vec<f64>>>()?
            .into_iter()
            .fold(f64::INFINITY, f64::min);
        let slot_bytes = model.lora_slot_bytes();
        let budget = a.max_batched_tokens;
        // Adapter counts in the order given, after the base; each the best of --repeat, the
        // runs interleaved so that drift on a busy machine falls on all alike.
        let counts: Vec<usize> =
            std::iter::once(0).chain(a.lora_adapters.iter().copied()).collect();
        let mut best = vec![0f64; counts.len()];
        for _ in 0..a.repeat {
            for (i, &k) in counts.iter().enumerate() {
                let r = bench_batch::run(
                    &mut model,
                    self.tok,
                    self.work,
                    self.n,
                    Mode::Continuous,
                    budget,
                    &adapters[..k],
                )?;
                best[i] = best[i].max(r.tok_s());
            }
        }
        let rows: Vec<serde_json::Value> = counts
            .iter()
            .zip(&best)
            .map(|(&k, &t)| serde_json::json!({ "adapters": k, "output_tok_s": t, "vs_none": t / best[0] }))
            .collect();
        if a.json {
            let report = serde_json::json!({
                "backend": model.backend.name(),
                "model": self.source.path.display().to_string(),
                "concurrency": self.n,
                "requests": self.work.requests.len(),
                "lora_rank": model.lora_options().map_or(0, |o| o.rank),
                "lora_dtype": a.lora_dtype.dtype().to_string(),
                "adapter_bytes": slot_bytes,
                "swap_in_seconds": swap,
                "runs": rows,
                "peak_memory": peak_memory(),
            });
            println!("{report}");
            return Ok(());
        }
        println!("backend:      {}", model.backend.name());
        println!("model:        {}", self.source.path.display());
        println!(
            "workload:     {} requests, {} at a time, continuous batching, best of {}",
            self.work.requests.len(),
            self.n,
            a.repeat
        );
        println!(
            "adapters:     rank {} on every projection, {}: {:.1} MiB each on the backend, {:.1} ms to load one into a slot",
            model.lora_options().map_or(0, |o| o.rank),
            a.lora_dtype.dtype(),
            slot_bytes as f64 / (1 << 20) as f64,
            swap * 1e3
        );
        for (&k, &t) in counts.iter().zip(&best) {
            println!("{k:>3} adapters: {t:>8.1} tok/s ({:.2}x none)", t / best[0]);
        }
        Ok(())
    }
}
