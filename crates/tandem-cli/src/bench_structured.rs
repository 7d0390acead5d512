//! `tandem bench --json-schema FILE` (or `--json`, `--regex`, `--grammar`, `--tool-call`):
//! decode speed with and without the constraint in one run, at batch 1 and with
//! `--concurrency N` requests in flight (half of them constrained), and what computing the
//! masks costs per token (p50, p99), measured apart from the step it overlaps.

use std::collections::HashMap;

use serde_json::json;
use tandem_core::constraint::{Constraint, Grammar};
use tandem_core::generate::GenerateParams;
use tandem_core::model::Model;
use tandem_core::scheduler::{Event, RequestId, Scheduler, SchedulerConfig};
use tandem_core::tokenizer::{ChatMessage, Tokenizer};
use tandem_core::tools::{self, Tool, ToolChoice, ToolSyntax};
use tandem_core::{Backend, Error, Result};
use web_time::Instant;

use crate::bench_batch::percentile;

/// The built-in tool call of `--tool-call`: a forced call of one of two tools, framed in the
/// model's own syntax.
pub fn tool_call_grammar(tok: &Tokenizer) -> Grammar {
    let tools = [
        Tool {
            name: "get_weather".into(),
            description: Some("The weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}),
        },
        Tool {
            name: "get_time".into(),
            description: Some("The time in a time zone".into()),
            parameters: json!({"type": "object", "properties": {"zone": {"type": "string"}},
                "required": ["zone"]}),
        },
    ];
    let syntax = ToolSyntax::from_template(tok.chat_template().unwrap_or_default());
    tools::call_grammar(syntax, &tools, &ToolChoice::Required, false)
        .expect("a required call always has a grammar")
}

/// What the benchmark measures with.
pub struct StructuredBench<'a> {
    pub tok: &'a Tokenizer,
    pub grammar: Grammar,
    pub tokens: usize,
    pub repeat: usize,
    pub concurrency: Option<usize>,
    pub json: bool,
}

/// Decode speed of one configuration: output tokens after the first over the time after it.
#[derive(Default, Clone, Copy)]
struct Speed {
    tokens: usize,
    secs: f64,
}

impl Speed {
    fn tok_s(self) -> f64 {
        self.tokens as f64 / self.secs.max(1e-9)
    }
}

impl StructuredBench<'_> {
    fn prompt(&self) -> Result<Vec<u32>> {
        let ask = "Describe a person (name, age, city) as JSON, or call a tool if you must.";
        let text = self.tok.apply_chat_template(&[ChatMessage::new("user", ask)], true)?;
        self.tok.encode(&text)
    }

    fn constraint(&self, vocab: usize) -> Result<Constraint> {
        self.tok.constrainer(vocab)?.compile(&self.grammar)
    }

    /// Runs `reqs` (prompt, params) `n` at a time; the decode speed over all of them (tokens
    /// after each request's first, over the wall time after the first token) and the first
    /// request's tokens.
    fn run<B: Backend>(
        &self,
        model: &mut Model<B>,
        reqs: &[GenerateParams],
        n: usize,
        prompt: &[u32],
    ) -> Result<(Speed, Vec<u32>)> {
        model.kv_blocks_mut()?.evict_idle();
        let config = SchedulerConfig { max_seqs: n, max_batched_tokens: 512 };
        let mut sched = Scheduler::new(&mut *model, self.tok, config)?;
        let mut ids: HashMap<RequestId, usize> = HashMap::new();
        for (i, p) in reqs.iter().enumerate() {
            ids.insert(sched.add(prompt.to_vec(), p.clone())?, i);
        }
        let (mut first, mut after_first, mut first_tokens) = (None, 0, vec![]);
        let mut seen = vec![false; reqs.len()];
        while sched.has_work() {
            for (id, ev) in pollster::block_on(sched.step()) {
                match ev {
                    Event::Token { id: t, .. } => {
                        let i = ids[&id];
                        if i == 0 {
                            first_tokens.push(t);
                        }
                        if seen[i] {
                            after_first += 1;
                        }
                        seen[i] = true;
                        first.get_or_insert_with(Instant::now);
                    }
                    Event::Finished { .. } => {}
                    Event::Failed(e) => return Err(e),
                }
            }
        }
        let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        Ok((Speed { tokens: after_first, secs }, first_tokens))
    }

    pub fn measure<B: Backend>(&self, model: &mut Model<B>) -> Result<()> {
        let vocab = model.config.vocab_size;
        let prompt = self.prompt()?;
        let held = |c: Constraint| GenerateParams {
            max_tokens: self.tokens,
            constraint: Some(c),
            ..Default::default()
        };
        let best = |a: Speed, b: Speed| if b.tok_s() > a.tok_s() { b } else { a };
        // The constrained output's length first: the free runs decode as many tokens from the
        // same prompt, so both are timed over the same positions.
        let (_, output) = self.run(model, &[held(self.constraint(vocab)?)], 1, &prompt)?;
        let free =
            GenerateParams { max_tokens: output.len(), ignore_eos: true, ..Default::default() };
        let (mut plain, mut constrained) = (Speed::default(), Speed::default());
        for _ in 0..self.repeat.max(1) {
            plain = best(plain, self.run(model, std::slice::from_ref(&free), 1, &prompt)?.0);
            let (s, _) = self.run(model, &[held(self.constraint(vocab)?)], 1, &prompt)?;
            constrained = best(constrained, s);
        }
        // The masks' own cost: the constrained output replayed through a fresh constraint.
        let mut c = self.constraint(vocab)?;
        let mut costs = Vec::with_capacity(output.len());
        for &t in &output {
            let t0 = Instant::now();
            c.mask()?;
            costs.push(t0.elapsed().as_secs_f64() * 1e6);
            c.commit(t)?;
        }
        let text = self.tok.decode(&output, true)?;
        let mut report = json!({
            "grammar": self.grammar.kind(),
            "batch1": {"free_tok_s": plain.tok_s(), "constrained_tok_s": constrained.tok_s(),
                "ratio": constrained.tok_s() / plain.tok_s().max(1e-9),
                "constrained_tokens": output.len()},
            "mask_us": {"p50": percentile(&costs, 50.0), "p99": percentile(&costs, 99.0)},
            "output": text,
        });
        if let Some(n) = self.concurrency {
            if n == 0 {
                return Err(Error::InvalidParameter("--concurrency must be at least 1".into()));
            }
            let all_free = vec![free.clone(); n];
            let mixed =
                (0..n)
                    .map(|i| {
                        if i % 2 == 0 {
                            Ok(held(self.constraint(vocab)?))
                        } else {
                            Ok(free.clone())
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
            let (mut a, mut b) = (Speed::default(), Speed::default());
            for _ in 0..self.repeat.max(1) {
                a = best(a, self.run(model, &all_free, n, &prompt)?.0);
                b = best(b, self.run(model, &mixed, n, &prompt)?.0);
            }
            report["concurrent"] = json!({"requests": n, "free_tok_s": a.tok_s(),
                "mixed_tok_s": b.tok_s(), "ratio": b.tok_s() / a.tok_s().max(1e-9)});
        }
        if self.json {
            println!("{report}");
            return Ok(());
        }
        let b1 = &report["batch1"];
        println!("constraint:     {} ({} tokens of output)", self.grammar.kind(), output.len());
        println!(
            "batch 1:        {:.1} tok/s free, {:.1} tok/s constrained ({:.3}x)",
            plain.tok_s(),
            constrained.tok_s(),
            b1["ratio"].as_f64().unwrap_or(0.0)
        );
        println!(
            "mask per token: p50 {:.0} us, p99 {:.0} us (computed while the step runs)",
            report["mask_us"]["p50"].as_f64().unwrap_or(0.0),
            report["mask_us"]["p99"].as_f64().unwrap_or(0.0)
        );
        if let Some(c) = report.get("concurrent") {
            println!(
                "{} requests:    {:.1} tok/s all free, {:.1} tok/s half constrained ({:.3}x)",
                c["requests"],
                c["free_tok_s"].as_f64().unwrap_or(0.0),
                c["mixed_tok_s"].as_f64().unwrap_or(0.0),
                c["ratio"].as_f64().unwrap_or(0.0)
            );
        }
        println!("output:         {text}");
        Ok(())
    }
}
