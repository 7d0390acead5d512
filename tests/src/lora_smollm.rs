//! LoRA adapters on SmolLM2-135M-Instruct (the default model's Q4_1 GGUF) against PEFT on the
//! same weights dequantized (`scripts/fixtures/lora_smollm.py`). The adapters' files are not
//! committed: their A and B come from a counter-based generator this module reproduces bit for
//! bit (the script checks its generator against what PEFT saved), and the test writes them as
//! PEFT wrote them (its adapter_config.json, its tensor names) for tandem's PEFT reader.
//! Committed: PEFT's f32 logits at some prompt rows (every `stride`-th entry), its greedy
//! tokens (its merged model's too), for ranks 8 and 64 (rsLoRA), every projection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tandem_core::lora::Adapter;
use tandem_core::model::{LoraOptions, Model, ModelOptions, Output, Want};
use tandem_core::{loader, Backend, DType};

use crate::e2e::{ids, read_json};
use crate::families::greedy_through;

/// The logits' NMSE against PEFT: its base is the GGUF's Q4_1/Q8_0 weights dequantized, which
/// tandem computes with in f32 (prompt rows) except where a backend takes a precision class
/// of its own (the `I16Activations` prompt kernel of AVX-512 VNNI for the Q8_0 head).
/// Measured: 3.2e-9 on the CPU (AVX2). The adapters change the greedy answer within its
/// first five tokens, so a module left out or a wrong scale lands far above this.
pub const SMOLLM_LORA_NMSE: f64 = 1e-6;

pub fn reference() -> Value {
    read_json(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/lora/smollm2.json"))
}

/// splitmix64, wrapping.
fn splitmix(z: u64) -> u64 {
    let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of the fixture script's `values`: n f32 in [-amp, amp).
fn values(seed: u64, layer: u64, target: u64, which: u64, n: usize, amp: f32) -> Vec<f32> {
    let base = splitmix((seed << 40) + (layer << 16) + (target << 4) + which);
    (0..n as u64)
        .map(|i| {
            let u = (splitmix(base.wrapping_add(i)) >> 40) as f32;
            (u / 16_777_216.0 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// Writes adapter `name` of the fixture as PEFT saved it into `dir`.
fn write_peft(fixture: &Value, name: &str, dir: &Path) -> Result<(), String> {
    let a = &fixture["adapters"][name];
    let seed = a["seed"].as_u64().ok_or("seed")?;
    let gain = fixture["b_gain"].as_f64().ok_or("b_gain")?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (key, t) in a["tensors"].as_object().ok_or("tensors")? {
        let n = |i: usize| t[i].as_u64().unwrap_or(u64::MAX);
        let shape: Vec<usize> = t[3]
            .as_array()
            .ok_or("shape")?
            .iter()
            .map(|d| d.as_u64().unwrap_or(0) as usize)
            .collect();
        let (which, fan) = (n(2), shape[1] as f64);
        // A [r, in]: 1/sqrt(in); B [out, r]: gain/sqrt(r). As in f64, then f32 (the script's).
        let amp = if which == 0 { 1.0 / fan.sqrt() } else { gain / fan.sqrt() } as f32;
        let v = values(seed, n(0), n(1), which, shape.iter().product(), amp);
        tensors.push((key.clone(), shape, bytemuck::cast_slice(&v).to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            view.map(|v| (k.clone(), v)).map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors"))
        .map_err(|e| e.to_string())?;
    let config = serde_json::to_string_pretty(&a["adapter_config"]).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("adapter_config.json"), config).map_err(|e| e.to_string())
}

/// How much of the check a backend runs: all of it, or (a slow software GPU) the rank-64
/// rsLoRA adapter's logits and first greedy tokens, the rest left to the family fixtures'.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Full,
    Tokens(usize),
}

/// Each adapter alone against PEFT (logits and greedy tokens), then both with the base model
/// in one batch, each giving its tokens alone; returns a summary line.
pub fn check<B: Backend>(
    backend: B,
    gguf: &Path,
    dtype: DType,
    depth: Depth,
) -> Result<String, String> {
    let fixture = reference();
    let source = loader::open(gguf).map_err(|e| e.to_string())?;
    let opts = ModelOptions { context: 512, ..ModelOptions::default() };
    let mut model = Model::load(backend, &source, &opts, &mut |_, _| {})
        .map_err(|e| format!("loading SmolLM2: {e}"))?;
    model.enable_lora(LoraOptions { slots: 2, rank: 64, dtype }).map_err(|e| e.to_string())?;
    let prompt = ids(&fixture["prompt"]);
    let stride = fixture["stride"].as_u64().ok_or("stride")? as usize;
    let rows: Vec<usize> = fixture["logit_rows"]
        .as_array()
        .ok_or("rows")?
        .iter()
        .map(|r| r.as_u64().unwrap_or(0) as usize)
        .collect();
    let names: &[&str] = match depth {
        Depth::Full => &["r8", "r64-rslora"],
        Depth::Tokens(_) => &["r64-rslora"],
    };
    let dir = std::env::temp_dir().join(format!("tandem-lora-smollm2-{}", std::process::id()));
    let mut worst = 0f64;
    let mut wants = vec![];
    for (slot, name) in names.iter().enumerate() {
        let path = dir.join(name);
        write_peft(&fixture, name, &path).map_err(|e| format!("{name}: writing: {e}"))?;
        let adapter = Adapter::from_peft_dir(&path, &model.config);
        let _ = std::fs::remove_dir_all(&path);
        model
            .load_lora(slot, &adapter.map_err(|e| format!("{name}: {e}"))?)
            .map_err(|e| e.to_string())?;
        let a = &fixture["adapters"][*name];
        worst = worst.max(
            logits(&mut model, &prompt, a, &rows, stride, slot)
                .map_err(|e| format!("{name}: {e}"))?,
        );
        let mut want = ids(&a["greedy"]);
        if ids(&a["merged_greedy"]) != want {
            return Err(format!("{name}: the fixture's merged model disagrees with PEFT"));
        }
        if let Depth::Tokens(n) = depth {
            want.truncate(n);
        }
        let got = greedy_through(&mut model, &prompt, want.len(), Some(slot))?;
        crate::lora::same(&format!("SmolLM2 {name}"), &got, &want)?;
        wants.push((Some(slot), prompt.clone(), want));
    }
    if depth != Depth::Full {
        return Ok(format!(
            "SmolLM2 LoRA ({dtype} pools; rank 64 rsLoRA on every projection) on {}: logits NMSE <= {worst:.1e} against PEFT, first greedy tokens equal",
            model.backend.name()
        ));
    }
    // The base model: PEFT's answer ("The capital of France is Paris.", then its end), and
    // whatever tandem gives alone for the batch.
    let base = greedy_through(&mut model, &prompt, 32, None)?;
    let answer = ids(&fixture["base_greedy"]);
    crate::lora::same("SmolLM2 base answer", &base[..8], &answer[..8])?;
    wants.push((None, prompt, base));
    crate::lora::batched(&mut model, &wants).map_err(|e| format!("SmolLM2 batched: {e}"))?;
    Ok(format!(
        "SmolLM2 LoRA ({dtype} pools; ranks 8 and 64 rsLoRA on every projection) on {}: logits NMSE <= {worst:.1e} against PEFT, greedy tokens equal alone and batched with the base",
        model.backend.name()
    ))
}

/// The prompt's logits through slot `slot` at the fixture's rows (every `stride`-th entry)
/// against PEFT's; the worst NMSE.
fn logits<B: Backend>(
    model: &mut Model<B>,
    prompt: &[u32],
    adapter: &Value,
    rows: &[usize],
    stride: usize,
    slot: usize,
) -> Result<f64, String> {
    let mut seq = model.new_sequence();
    let out =
        pollster::block_on(model.forward_adapter(&mut seq, prompt, Want::AllLogits, Some(slot)));
    model.release(&mut seq);
    let Output::Logits(all) = out.map_err(|e| e.to_string())? else {
        return Err("forward gave no logits".into());
    };
    let vocab = model.config.vocab_size;
    let mut worst = 0f64;
    let wants: HashMap<usize, &Value> =
        rows.iter().copied().zip(adapter["logits"].as_array().ok_or("logits")?).collect();
    for (&r, want) in &wants {
        let got = all[r * vocab..(r + 1) * vocab].iter().step_by(stride);
        let (mut err, mut norm) = (0f64, 0f64);
        for (&g, w) in got.zip(want.as_array().ok_or("a row")?) {
            let w = w.as_f64().ok_or("a logit")?;
            err += (g as f64 - w).powi(2);
            norm += w * w;
        }
        let nmse = err / norm.max(f64::MIN_POSITIVE);
        if nmse.is_nan() || nmse > SMOLLM_LORA_NMSE {
            return Err(format!("row {r}: logits NMSE {nmse:.3e} > {SMOLLM_LORA_NMSE:.0e}"));
        }
        worst = worst.max(nmse);
    }
    Ok(worst)
}

/// The test on one backend (`make` it, or SKIP with the reason), f32 pools: skips where
/// SmolLM2 is unavailable (a failure under `TANDEM_REQUIRE_MODELS=1`).
pub fn run<B: Backend>(test: &str, depth: Depth, make: impl FnOnce() -> Result<B, String>) {
    let gguf = match crate::e2e::smollm_gguf() {
        Ok(p) => p,
        Err(crate::e2e::Skip(why)) => return eprintln!("SKIP {test}: {why}"),
    };
    let backend = match make() {
        Ok(b) => b,
        Err(why) => return eprintln!("SKIP {test}: {why}"),
    };
    match check(backend, &gguf, DType::F32, depth) {
        Ok(line) => eprintln!("{line}"),
        Err(e) => panic!("{e}"),
    }
}
