//! LoRA adapters against PEFT: the tiny family models of `tests/fixtures/families` with PEFT
//! adapters (`tests/fixtures/lora`, made by `scripts/fixtures/lora.py`) on every projection,
//! Phi-3's fused ones included, at ranks 8 (with per-module ranks and alphas) and 64
//! (rsLoRA). tandem, unmerged, must give PEFT's f32 logits within the families' tolerance and
//! its greedy tokens, which PEFT's merged model gives too; and in one step, rows of both
//! adapters and of the base model must each give the tokens they give alone.

use std::path::PathBuf;

use tandem_core::loader;
use tandem_core::lora::Adapter;
use tandem_core::model::{Chunk, ChunkOut, LoraOptions, Model, ModelOptions, Want};
use tandem_core::scheduler::{Event, GenerateParams, Scheduler, SchedulerConfig};
use tandem_core::{Backend, DType};

use crate::e2e::{ids, read_json};
use crate::families::{greedy_through, prompt_logits, LOGITS_NMSE};

/// The logits' NMSE against PEFT with the adapter stored in f16 pools: its A and B rounded to
/// f16 (a relative 2^-11 each) move the logits by 1.4e-6 at worst on these fixtures, where
/// the f32 pools' NMSE is f32 arithmetic order (below [`LOGITS_NMSE`]). The fixtures'
/// adapters themselves move the logits by an NMSE of 0.5 to 2 from the base model's, so a
/// module left out or a wrong scale lands far above this.
pub const F16_POOL_NMSE: f64 = 1e-5;

fn logits_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => F16_POOL_NMSE,
        _ => LOGITS_NMSE,
    }
}

/// (family, adapters): each family's fixture adapters. The last is also read from the LoRA
/// GGUF llama.cpp's converter made of it (`adapter.gguf`), into one slot more.
/// Mistral is Llama-shaped: llama.cpp's converter permutes its q/k rows, the LoRA GGUF's B rows
/// with them.
pub const FIXTURES: [(&str, [&str; 3]); 3] = [
    ("qwen3", ["r8", "r64-rslora", "r16"]),
    ("phi3", ["r8", "r64-rslora", "r16"]),
    ("mistral", ["r8", "r64-rslora", "r16"]),
];

pub fn dir(family: &str, adapter: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/lora/{family}-{adapter}"))
}

fn load<B: Backend>(backend: B, family: &str, dtype: DType) -> Result<Model<B>, String> {
    let base = crate::families::dir(family);
    // Room for the batch: five sequences of 232 positions.
    let opts = ModelOptions { context: 512, kv_blocks: Some(96), ..ModelOptions::default() };
    let mut model = loader::open(&base)
        .and_then(|source| Model::load(backend, &source, &opts, &mut |_, _| {}))
        .map_err(|e| format!("{family}: loading: {e}"))?;
    model
        .enable_lora(LoraOptions { slots: 4, rank: 64, dtype })
        .map_err(|e| format!("{family}: enable_lora: {e}"))?;
    let names = FIXTURES.iter().find(|f| f.0 == family).expect("a fixture").1;
    for (slot, name) in names.iter().enumerate() {
        let adapter = Adapter::from_peft_dir(&dir(family, name), &model.config)
            .map_err(|e| format!("{family}-{name}: {e}"))?;
        model.load_lora(slot, &adapter).map_err(|e| format!("{family}-{name}: load_lora: {e}"))?;
    }
    let last = names[names.len() - 1];
    let gguf = Adapter::from_gguf(&dir(family, last).join("adapter.gguf"), &model.config)
        .map_err(|e| format!("{family}-{last} GGUF: {e}"))?;
    let peft =
        Adapter::from_peft_dir(&dir(family, last), &model.config).map_err(|e| e.to_string())?;
    if gguf.modules != peft.modules {
        return Err(format!("{family}-{last}: the GGUF's adapter differs from the PEFT files'"));
    }
    model.load_lora(names.len(), &gguf).map_err(|e| format!("{family}-{last} GGUF: {e}"))?;
    Ok(model)
}

/// Each adapter of `family` alone against PEFT (logits and greedy tokens; the last also from
/// its GGUF), the base model through no slot, then all of them in one batch; returns a
/// summary line.
pub fn check<B: Backend>(backend: B, family: &str, dtype: DType) -> Result<String, String> {
    let mut model = load(backend, family, dtype)?;
    let names = FIXTURES.iter().find(|f| f.0 == family).expect("a fixture").1;
    let mut worst = 0f64;
    let mut wants = vec![];
    // The last adapter a second time, from its GGUF, in the slot after the others.
    let slots = names.iter().copied().chain([names[names.len() - 1]]).enumerate();
    for (slot, name) in slots {
        let reference = read_json(&dir(family, name).join("reference.json"));
        let prompt = ids(&reference["prompt"]);
        worst = worst.max(
            prompt_logits(&mut model, &prompt, &reference, Some(slot), logits_tolerance(dtype))
                .map_err(|e| format!("{family}-{name}: {e}"))?,
        );
        let want = ids(&reference["greedy"]);
        if ids(&reference["merged_greedy"]) != want {
            return Err(format!("{family}-{name}: the fixture's merged model disagrees with PEFT"));
        }
        let got = greedy_through(&mut model, &prompt, want.len(), Some(slot))?;
        same(&format!("{family}-{name}"), &got, &want)?;
        wants.push((Some(slot), prompt.clone(), want));
        if slot == 0 {
            let base = ids(&reference["base_greedy"]);
            same(
                &format!("{family} base"),
                &greedy_through(&mut model, &prompt, base.len(), None)?,
                &base,
            )?;
            wants.push((None, prompt, base));
        }
    }
    batched(&mut model, &wants).map_err(|e| format!("{family} batched: {e}"))?;
    Ok(format!(
        "{family} LoRA ({dtype} pools, PEFT files and llama.cpp's GGUF) on {}: logits NMSE <= {worst:.1e}, greedy tokens equal alone and batched with the base",
        model.backend.name()
    ))
}

/// A cheap end-to-end check for slow backends (the CUDA emulator): `family`'s adapter `name`
/// in slot 0, the first `rows + 1` prompt tokens fed, the logits at the reference rows among
/// them against PEFT's (causal attention: the same as over the whole prompt).
pub fn first_rows<B: Backend>(
    backend: B,
    family: &str,
    name: &str,
    rows: usize,
) -> Result<String, String> {
    let base = crate::families::dir(family);
    let source = loader::open(&base).map_err(|e| e.to_string())?;
    let opts = ModelOptions { context: 512, ..ModelOptions::default() };
    let mut model =
        Model::load(backend, &source, &opts, &mut |_, _| {}).map_err(|e| e.to_string())?;
    model
        .enable_lora(LoraOptions { slots: 1, rank: 64, dtype: DType::F32 })
        .map_err(|e| e.to_string())?;
    let adapter =
        Adapter::from_peft_dir(&dir(family, name), &model.config).map_err(|e| e.to_string())?;
    model.load_lora(0, &adapter).map_err(|e| e.to_string())?;
    let mut reference = read_json(&dir(family, name).join("reference.json"));
    // Only the rows among the first `rows + 1` tokens.
    let keep: Vec<bool> = reference["logit_rows"]
        .as_array()
        .expect("logit_rows")
        .iter()
        .map(|r| r.as_u64().expect("row") as usize <= rows)
        .collect();
    for key in ["logit_rows", "logits"] {
        let kept = reference[key].as_array().expect("a list").iter().zip(&keep);
        reference[key] = kept.filter(|(_, &k)| k).map(|(v, _)| v.clone()).collect();
    }
    let prompt = ids(&reference["prompt"]);
    let nmse = prompt_logits(&mut model, &prompt[..=rows], &reference, Some(0), LOGITS_NMSE)
        .map_err(|e| format!("{family}-{name}: {e}"))?;
    Ok(format!(
        "{family}-{name} on {}: logits at the reference rows among the first {} NMSE {nmse:.1e}",
        model.backend.name(),
        rows + 1
    ))
}

/// Requests of two adapters and of the base model through one scheduler whose model has a
/// single adapter slot: the adapters take turns in it (requests of the other one wait, never
/// fail), rows of an adapter and of the base share steps, and every request gives PEFT's
/// tokens (the base's: transformers').
pub fn scheduled<B: Backend>(backend: B, family: &str) -> Result<String, String> {
    let base = crate::families::dir(family);
    let source = loader::open(&base).map_err(|e| e.to_string())?;
    let opts = ModelOptions { context: 512, kv_blocks: Some(96), ..ModelOptions::default() };
    let mut model =
        Model::load(backend, &source, &opts, &mut |_, _| {}).map_err(|e| e.to_string())?;
    model
        .enable_lora(LoraOptions { slots: 1, rank: 64, dtype: DType::F32 })
        .map_err(|e| e.to_string())?;
    let tokenizer =
        tandem_core::tokenizer::Tokenizer::load(&source.tokenizer).map_err(|e| e.to_string())?;
    let mut sched =
        Scheduler::new(model, std::sync::Arc::new(tokenizer), SchedulerConfig::default())
            .map_err(|e| e.to_string())?;
    let names = &FIXTURES.iter().find(|f| f.0 == family).expect("a fixture").1[..2];
    let mut wants = vec![];
    for name in names {
        let adapter = Adapter::from_peft_dir(&dir(family, name), &sched.model().config)
            .map_err(|e| e.to_string())?;
        sched.add_adapter(name, std::sync::Arc::new(adapter)).map_err(|e| e.to_string())?;
        let reference = read_json(&dir(family, name).join("reference.json"));
        wants.push((Some(name.to_string()), ids(&reference["prompt"]), ids(&reference["greedy"])));
        if wants.len() == 1 {
            wants.push((None, ids(&reference["prompt"]), ids(&reference["base_greedy"])));
        }
    }
    // Interleaved and repeated: base and adapters alternate in the queue.
    let order = [1, 0, 2, 0, 1, 2];
    let mut ids_of = vec![];
    for &i in &order {
        let (adapter, prompt, want) = &wants[i];
        let params = GenerateParams {
            max_tokens: want.len(),
            ignore_eos: true,
            adapter: adapter.clone(),
            ..GenerateParams::default()
        };
        ids_of.push(sched.add(prompt.clone(), params).map_err(|e| e.to_string())?);
    }
    // Unloading the second adapter now: its queued requests still run, new ones are refused,
    // and it goes when they end.
    sched.remove_adapter(names[1]).map_err(|e| e.to_string())?;
    let refused = sched.add(
        wants[2].1.clone(),
        GenerateParams {
            max_tokens: 8,
            adapter: Some(names[1].into()),
            ..GenerateParams::default()
        },
    );
    match refused {
        Err(e) if e.to_string().contains("being unloaded") => {}
        other => return Err(format!("a request for an adapter being unloaded: {other:?}")),
    }
    let mut got: Vec<Vec<u32>> = vec![vec![]; order.len()];
    let mut steps = 0;
    while sched.has_work() {
        steps += 1;
        for (id, event) in pollster::block_on(sched.step()) {
            let i = ids_of.iter().position(|&x| x == id).expect("ours");
            match event {
                Event::Token { id, .. } => got[i].push(id),
                Event::Finished { .. } => {}
                Event::Failed(e) => return Err(format!("request {i} failed: {e}")),
            }
        }
    }
    for (k, &i) in order.iter().enumerate() {
        let (adapter, _, want) = &wants[i];
        same(&format!("{family} request {k} ({adapter:?}) scheduled"), &got[k], want)?;
    }
    let left: Vec<String> = sched.adapters().into_iter().map(|a| a.name).collect();
    if left != [names[0]] {
        return Err(format!("adapters left after all ended: {left:?}"));
    }
    Ok(format!("{family}: 6 requests of 2 adapters and the base in {steps} steps on one slot, each with PEFT's tokens"))
}

/// What a model refuses: an adapter above its pools' rank, a slot it does not have, adapters
/// before they are enabled. Nothing changes: the base model still gives its tokens.
pub fn refusals<B: Backend>(backend: B) -> Result<(), String> {
    let base = crate::families::dir("qwen3");
    let opts = ModelOptions { context: 512, ..ModelOptions::default() };
    let mut model = loader::open(&base)
        .and_then(|source| Model::load(backend, &source, &opts, &mut |_, _| {}))
        .map_err(|e| format!("loading: {e}"))?;
    let big = Adapter::from_peft_dir(&dir("qwen3", "r64-rslora"), &model.config)
        .map_err(|e| e.to_string())?;
    let e = model.load_lora(0, &big).expect_err("no pools yet").to_string();
    assert!(e.contains("not enabled"), "{e}");
    model
        .enable_lora(LoraOptions { slots: 2, rank: 16, dtype: DType::F32 })
        .map_err(|e| e.to_string())?;
    let e = model.load_lora(0, &big).expect_err("rank 64 > 16").to_string();
    assert!(e.contains("rank 64") && e.contains("--max-lora-rank"), "{e}");
    let small =
        Adapter::from_peft_dir(&dir("qwen3", "r8"), &model.config).map_err(|e| e.to_string())?;
    let e = model.load_lora(2, &small).expect_err("slot 2 of 2").to_string();
    assert!(e.contains("slot 2"), "{e}");
    let reference = read_json(&dir("qwen3", "r8").join("reference.json"));
    let prompt = ids(&reference["prompt"]);
    let mut seq = model.new_sequence();
    let e = pollster::block_on(model.forward_adapter(&mut seq, &prompt, Want::argmax(), Some(5)))
        .expect_err("slot 5 of 2")
        .to_string();
    assert!(e.contains("slot 5"), "{e}");
    let base_tokens = ids(&reference["base_greedy"]);
    same(
        "the base after refusals",
        &greedy_through(&mut model, &prompt, base_tokens.len(), None)?,
        &base_tokens,
    )
}

pub(crate) fn same(what: &str, got: &[u32], want: &[u32]) -> Result<(), String> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None if got.len() == want.len() => Ok(()),
        i => Err(format!(
            "{what}: greedy token {i:?} differs from PEFT's\n  got  {got:?}\n  want {want:?}"
        )),
    }
}

/// Every (adapter slot, prompt, tokens) decoded together: the prompts in chunks that share
/// each step's tokens among the sequences (each sequence's rows beside the others', adapters
/// mixed), then one decode row each a step.
pub(crate) fn batched<B: Backend>(
    model: &mut Model<B>,
    wants: &[(Option<usize>, Vec<u32>, Vec<u32>)],
) -> Result<(), String> {
    let chunk = model.max_step_tokens() / wants.len().max(1);
    let mut seqs: Vec<_> = wants.iter().map(|_| model.new_sequence()).collect();
    let mut feeds: Vec<Vec<u32>> = wants.iter().map(|w| w.1.clone()).collect();
    let mut got = vec![vec![]; wants.len()];
    let (token, none) = (Want::argmax(), Want::None);
    while got.iter().zip(wants).any(|(g, w)| g.len() < w.2.len()) {
        let take: Vec<usize> = feeds.iter().map(|f| f.len().min(chunk)).collect();
        for (seq, &n) in seqs.iter_mut().zip(&take) {
            let blocks = model.kv_blocks_mut().map_err(|e| e.to_string())?;
            blocks.reserve(seq, seq.len + n).map_err(|e| e.to_string())?;
        }
        let chunks: Vec<Chunk> = seqs
            .iter()
            .zip(&feeds)
            .zip(wants.iter().zip(&take))
            .map(|((seq, feed), (w, &n))| Chunk {
                seq,
                tokens: &feed[..n],
                decode: seq.len > 0 && feed.len() == 1,
                want: if n == feed.len() { &token } else { &none },
                adapter: w.0,
            })
            .collect();
        let outs = pollster::block_on(model.step(&chunks)).map_err(|e| e.to_string())?;
        for (i, out) in outs.into_iter().enumerate() {
            seqs[i].len += take[i];
            feeds[i].drain(..take[i]);
            match out {
                ChunkOut::Token(t) => {
                    got[i].push(t);
                    feeds[i] = vec![t];
                }
                ChunkOut::None => {}
                other => return Err(format!("row {i} gave {other:?}")),
            }
        }
    }
    for (seq, (w, g)) in seqs.iter_mut().zip(wants.iter().zip(&got)) {
        model.release(seq);
        same(&format!("slot {:?} in a batch", w.0), g, &w.2)?;
    }
    Ok(())
}

/// The LoRA suite on one backend: each family's adapters in f32 and f16 pools.
#[macro_export]
macro_rules! lora_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run(family: &str) {
                let make = $make;
                for dtype in [tandem_core::DType::F32, tandem_core::DType::F16] {
                    let backend = match make() {
                        Ok(b) => b,
                        Err(reason) => {
                            eprintln!("SKIP {}: {reason}", stringify!($name));
                            return;
                        }
                    };
                    match $crate::lora::check(backend, family, dtype) {
                        Ok(line) => eprintln!("{line}"),
                        Err(e) => panic!("{e}"),
                    }
                }
            }

            #[test]
            fn qwen3() {
                run("qwen3");
            }
            #[test]
            fn phi3() {
                run("phi3");
            }
            #[test]
            fn mistral() {
                run("mistral");
            }
        }
    };
}
