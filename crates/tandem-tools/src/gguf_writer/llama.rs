//! Whole models as llama.cpp's converter writes them: Llama (`llama.*` metadata, q/k rows
//! permuted for llama.cpp's RoPE layout), Qwen3 (`qwen3.*`, q/k norms), Qwen3-MoE (stacked
//! experts), Gemma 3 (`gemma3.*`, its window and local RoPE base, norms stored as 1 + w) and
//! Phi-3 (`phi3.*`, fused qkv and gate+up, LongRoPE factor tensors); GGUF tensor names.

use super::quantize::{ggml_block_type, ggml_bytes};
use super::{GgufWriter, TensorEntry};
use std::path::Path;
use tandem_core::config::{ModelConfig, RopeScaling};
use tandem_core::dtype::{DType, QBLOCK};
use tandem_core::loader::gguf::{
    GgufValue, GGML_BF16, GGML_F16, GGML_F32, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0,
};
use tandem_core::loader::names::{hf_to_gguf, model_tensors, rope_permuted};
use tandem_core::loader::{LoadAs, ModelSource};
use tandem_core::{Error, Result};

/// llama.cpp's `permute` of q/k rows for its RoPE layout (HF -> GGUF), on rows of any type:
/// `gguf_row[h*hd + 2*i + j] = hf_row[h*hd + j*hd/2 + i]`. The inverse of
/// [`tandem_core::loader::ggml::unpermute_rows`]. Panics on shapes that do not split into heads (tests).
pub fn permute_rows(raw: &[u8], rows: usize, n_head: usize) -> Vec<u8> {
    let (hd, row) = (rows / n_head, raw.len() / rows);
    assert!(
        rows.is_multiple_of(n_head) && hd % 2 == 0 && raw.len().is_multiple_of(rows),
        "permute_rows: {rows} rows, {n_head} heads"
    );
    let mut out = vec![0u8; raw.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let (dst, src) = (h * hd + 2 * i + j, h * hd + j * hd / 2 + i);
                out[dst * row..(dst + 1) * row].copy_from_slice(&raw[src * row..(src + 1) * row]);
            }
        }
    }
    out
}

/// An HF Llama checkpoint as llama.cpp's converter writes it: `llama.*` metadata from
/// `source.config`, the given `tokenizer.ggml.*` entries, GGUF tensor names, q/k rows permuted,
/// each tensor in the ggml type `ggml_type(shape)` picks (vectors should stay F32). For tests.
pub fn llama_gguf(
    source: &ModelSource,
    tokenizer: Vec<(&str, GgufValue)>,
    ggml_type: impl Fn(&[usize]) -> u32,
) -> Result<GgufWriter, String> {
    let c = &source.config;
    let mut w = GgufWriter::new();
    llama_metadata(&mut w, c);
    for (k, v) in tokenizer {
        w.kv(k, v);
    }
    for (gguf, parts, heads) in llama_plan(c) {
        let (mut values, mut shape) = (Vec::<f32>::new(), Vec::new());
        for hf in &parts {
            let t = source.tensors.load(hf, LoadAs::F32).map_err(|e| e.to_string())?;
            let mut bytes = t.bytes;
            if let Some(n_head) = heads {
                bytes = permute_rows(&bytes, t.shape[0], n_head);
            }
            values.extend_from_slice(&bytemuck::pod_collect_to_vec::<u8, f32>(&bytes));
            shape = fused_shape(&shape, &t.shape);
        }
        w.tensor(&gguf, &shape, ggml_type(&shape), &values);
    }
    Ok(w)
}

/// The weights of a model of `c`, in the engine's load order: (GGUF name, the HF tensors whose
/// rows it stacks, the head count llama.cpp's converter permuted their rows by). Biases are left
/// out: these GGUFs have none. Phi-3's file keeps q, k, v as one `attn_qkv` and gate, up as one
/// `ffn_up` (gate rows first), as HF's `qkv_proj` and `gate_up_proj` do.
fn llama_plan(c: &ModelConfig) -> Vec<(String, Vec<String>, Option<usize>)> {
    let arch = gguf_arch(c).unwrap_or("llama");
    let mut plan: Vec<(String, Vec<String>, Option<usize>)> = Vec::new();
    for t in model_tensors(c).into_iter().filter(|t| !t.name.ends_with(".bias")) {
        // Only llama.cpp's Llama converter permutes q/k rows.
        let heads = rope_permuted(&t.name).filter(|_| arch == "llama").map(|kv| {
            if kv {
                c.n_kv_heads
            } else {
                c.n_heads
            }
        });
        let fused = |from: &str, to: &str| t.name.strip_suffix(from).map(|p| format!("{p}{to}"));
        let into = match arch {
            "phi3" => fused("self_attn.q_proj.weight", "self_attn.qkv_proj.weight")
                .or_else(|| fused("self_attn.k_proj.weight", "self_attn.qkv_proj.weight"))
                .or_else(|| fused("self_attn.v_proj.weight", "self_attn.qkv_proj.weight"))
                .or_else(|| fused("mlp.gate_proj.weight", "mlp.gate_up_proj.weight"))
                .or_else(|| fused("mlp.up_proj.weight", "mlp.gate_up_proj.weight")),
            _ => None,
        };
        let gguf = hf_to_gguf(into.as_deref().unwrap_or(&t.name), Some(arch));
        match plan.last_mut() {
            Some((last, parts, _)) if into.is_some() && *last == gguf => parts.push(t.name),
            _ => plan.push((gguf, vec![t.name], heads)),
        }
    }
    plan
}

/// The shape of `so_far`'s rows with `next`'s stacked below them.
fn fused_shape(so_far: &[usize], next: &[usize]) -> Vec<usize> {
    match so_far.first() {
        Some(&rows) => [&[rows + next[0]], &next[1..]].concat(),
        None => next.to_vec(),
    }
}

/// The GGUF architecture `c` is written as, or why it cannot be written (yet): a file
/// llama.cpp reads differently from tandem would make a side-by-side comparison wrong.
fn gguf_arch(c: &ModelConfig) -> std::result::Result<&'static str, String> {
    use tandem_core::config::Arch;
    match c.arch {
        Arch::Llama | Arch::Mistral if c.features.sliding_window == 0 && !c.qkv_bias => {
            Ok("llama")
        }
        Arch::Qwen3 if !c.qkv_bias && c.features.sliding_window == 0 => Ok("qwen3"),
        Arch::Gemma3 => Ok("gemma3"),
        Arch::Phi3 if !c.qkv_bias => Ok("phi3"),
        // llama.cpp always renormalizes Qwen3-MoE's chosen weights: a config that does not
        // would read differently there.
        Arch::Qwen3Moe
            if !c.qkv_bias
                && c.features.sliding_window == 0
                && c.features.moe.as_ref().is_some_and(|m| m.norm_topk && m.dense_layers.is_empty()) =>
        {
            Ok("qwen3moe")
        }
        _ => Err(format!(
            "{} models are not written as GGUF yet (Llama without a window or biases, Qwen3, Qwen3-MoE with norm_topk_prob, Gemma 3 and Phi-3 are)",
            c.describe()
        )),
    }
}

/// The `{arch}.*` hyper-parameters of `c`, as llama.cpp's converter writes them.
fn llama_metadata(w: &mut GgufWriter, c: &ModelConfig) {
    let arch = gguf_arch(c).unwrap_or("llama");
    let u = |n: usize| GgufValue::U32(n as u32);
    let k = |name: &str| format!("{arch}.{name}");
    w.kv("general.architecture", GgufValue::String(arch.into()))
        .kv(&k("context_length"), u(c.max_position))
        .kv(&k("embedding_length"), u(c.dim))
        .kv(&k("block_count"), u(c.n_layers))
        .kv(&k("feed_forward_length"), u(c.ffn_dim))
        .kv(&k("rope.dimension_count"), u(c.rot_dim()))
        .kv(&k("attention.head_count"), u(c.n_heads))
        .kv(&k("attention.head_count_kv"), u(c.n_kv_heads))
        .kv(&k("rope.freq_base"), GgufValue::F32(c.rope_theta))
        .kv(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(c.rms_norm_eps))
        .kv(&k("vocab_size"), u(c.vocab_size));
    if let Some(m) = &c.features.moe {
        w.kv(&k("expert_count"), u(m.experts))
            .kv(&k("expert_used_count"), u(m.top_k))
            .kv(&k("expert_feed_forward_length"), u(m.ffn_dim));
    }
    if let RopeScaling::LongRope { original_max_position, attention_factor, .. } = c.rope_scaling {
        w.kv(&k("rope.scaling.original_context_length"), u(original_max_position))
            .kv(&k("rope.scaling.attn_factor"), GgufValue::F32(attention_factor));
    }
    if arch == "phi3" && c.features.sliding_window > 0 {
        w.kv(&k("attention.sliding_window"), u(c.features.sliding_window));
    }
    if arch == "gemma3" {
        let f = &c.features;
        w.kv(&k("attention.sliding_window"), u(f.sliding_window));
        if let Some(t) = f.local_rope_theta {
            w.kv(&k("rope.freq_base_swa"), GgufValue::F32(t));
        }
    }
}

/// A tensor's GGUF dims (innermost first): a stack of experts [experts * rows, cols] is
/// llama.cpp's [experts, rows, cols].
fn gguf_dims(c: &ModelConfig, hf: Option<&str>, shape: &[usize]) -> Vec<u64> {
    let experts = c.features.moe.as_ref().map_or(1, |m| m.experts);
    let stacked = hf.is_some_and(|n| n.contains(".mlp.experts.")) && shape.len() == 2;
    let full = if stacked { vec![experts, shape[0] / experts, shape[1]] } else { shape.to_vec() };
    full.iter().rev().map(|&d| d as u64).collect()
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for weight matrices of `d`.
fn llama_ftype(d: DType) -> u32 {
    match d {
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::Q5_0 => 8,
        DType::Q5_1 => 9,
        DType::Q2_K => 10,
        // The _M mixes, whose main type these are.
        DType::Q3_K => 12,
        DType::Q4_K => 15,
        DType::Q5_K => 17,
        DType::Q6_K => 18,
        DType::IQ4_NL => 25,
        DType::IQ4_XS => 30,
        DType::BF16 => 32,
        // fp8 is a KV cache type, never a weight.
        DType::F32 | DType::U32 | DType::F8E4M3 => 0,
    }
}

/// The type a tensor listed as `file_dtype` is written in.
fn native(file_dtype: &str) -> Option<DType> {
    Some(match file_dtype {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "Q8_0" => DType::Q8_0,
        "Q4_0" => DType::Q4_0,
        "Q4_1" => DType::Q4_1,
        other => {
            return tandem_core::dtype::BLOCK_DTYPES
                .into_iter()
                .find(|d| d.name().eq_ignore_ascii_case(other))
        }
    })
}

/// Writes `source` as a Llama GGUF at `path` that llama.cpp and tandem both load: `llama.*`
/// metadata, GGUF tensor names, q/k rows permuted as llama.cpp's converter does, each tensor
/// in the type its listing gives (F32, F16, BF16, Q8_0, Q4_0, Q4_1 or a GGUF block type), Llama 3 rope scaling as `rope_freqs.weight`,
/// and `tokenizer` (e.g. [`placeholder_vocab`]). Tensors are loaded and written one at a time,
/// so nothing larger than one tensor is held. Returns the file's size.
pub fn write_llama_gguf(
    source: &ModelSource,
    tokenizer: Vec<(&str, GgufValue)>,
    path: &Path,
) -> Result<u64> {
    let c = &source.config;
    let bad = |m: String| {
        Error::InvalidParameter(format!("writing {} as GGUF: {m}", source.path.display()))
    };
    let arch = gguf_arch(c).map_err(bad)?;
    let mut w = GgufWriter::new();
    llama_metadata(&mut w, c);
    if c.head_dim * c.n_heads != c.dim || arch != "llama" {
        let u = GgufValue::U32(c.head_dim as u32);
        w.kv(&format!("{arch}.attention.key_length"), u.clone())
            .kv(&format!("{arch}.attention.value_length"), u);
    }
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        w.kv(&format!("{arch}.rope.scaling.type"), GgufValue::String("linear".into()))
            .kv(&format!("{arch}.rope.scaling.factor"), GgufValue::F32(factor));
    }
    if let RopeScaling::Llama3 { original_max_position, .. } = c.rope_scaling {
        if original_max_position != 8192 {
            w.kv(
                "llama.rope.scaling.original_context_length",
                GgufValue::U32(original_max_position as u32),
            );
        }
    }
    let infos = source.tensors.infos();
    let matrix = infos
        .iter()
        .find(|i| i.name == "model.layers.0.mlp.up_proj.weight")
        .and_then(|i| native(&i.file_dtype));
    w.kv("general.file_type", GgufValue::U32(llama_ftype(matrix.unwrap_or(DType::F32))));
    if matrix.is_some_and(DType::is_quantized) {
        w.kv("general.quantization_version", GgufValue::U32(2));
    }
    for (k, v) in tokenizer {
        w.kv(k, v);
    }

    // (GGUF name, the HF tensors it stacks, heads their rows are permuted by), then the
    // tensors that carry numbers of the config rather than weights.
    let plan = llama_plan(c);
    let mut values: Vec<(String, Vec<f32>)> = Vec::new();
    // llama.cpp's converter: per-frequency divisors, [head_dim / 2].
    if matches!(c.rope_scaling, RopeScaling::Llama3 { .. }) {
        let base = ModelConfig { rope_scaling: RopeScaling::None, ..c.clone() }.rope_inv_freq();
        let f = base.iter().zip(c.rope_inv_freq()).map(|(b, s)| b / s).collect();
        values.push(("rope_freqs.weight".into(), f));
    }
    // Phi-3's LongRoPE factor lists, [rot_dim / 2] each.
    if let RopeScaling::LongRope { short, long, .. } = &c.rope_scaling {
        values.push(("rope_factors_long.weight".into(), long.clone()));
        values.push(("rope_factors_short.weight".into(), short.clone()));
    }

    let file_dtype = |hf: &str| -> Result<(Vec<usize>, DType)> {
        let info =
            infos.iter().find(|i| i.name == hf).ok_or_else(|| Error::MissingTensor(hf.into()))?;
        let d = native(&info.file_dtype)
            .ok_or_else(|| bad(format!("'{hf}' is {}", info.file_dtype)))?;
        Ok((info.shape.clone(), d))
    };
    let mut entries = Vec::with_capacity(plan.len() + values.len());
    for (gguf, parts, _) in &plan {
        let (mut shape, mut dtype) = (Vec::new(), None);
        for hf in parts {
            let (s, d) = file_dtype(hf)?;
            if dtype.is_some_and(|t| t != d) {
                return Err(bad(format!("'{gguf}' stacks tensors of different types")));
            }
            shape = fused_shape(&shape, &s);
            dtype = Some(d);
        }
        let dtype = dtype.expect("every plan entry has a source");
        let numel: usize = shape.iter().product();
        let (ty, n_bytes) = match dtype {
            DType::F32 => (GGML_F32, numel * 4),
            DType::F16 => (GGML_F16, numel * 2),
            DType::BF16 => (GGML_BF16, numel * 2),
            b if b.block_layout().is_some() => {
                let l = b.block_layout().expect("a block type");
                if !numel.is_multiple_of(l.elems) || shape.last().is_some_and(|&k| k % l.elems != 0)
                {
                    return Err(bad(format!(
                        "'{gguf}' {shape:?}: rows are not whole blocks of {}",
                        l.elems
                    )));
                }
                (
                    ggml_block_type(b).expect("every block type has a ggml id"),
                    numel / l.elems * l.ggml_bytes,
                )
            }
            q => {
                let (ty, size) = match q {
                    DType::Q8_0 => (GGML_Q8_0, 34),
                    DType::Q4_0 => (GGML_Q4_0, 18),
                    _ => (GGML_Q4_1, 20),
                };
                if !numel.is_multiple_of(QBLOCK) || shape.last().is_some_and(|&k| k % QBLOCK != 0) {
                    return Err(bad(format!(
                        "'{gguf}' {shape:?}: rows are not whole blocks of {QBLOCK}"
                    )));
                }
                (ty, numel / QBLOCK * size)
            }
        };
        entries.push(TensorEntry {
            name: gguf.clone(),
            dims: gguf_dims(c, parts.first().map(String::as_str), &shape),
            ggml_type: ty,
            n_bytes,
        });
    }
    for (name, v) in &values {
        entries.push(TensorEntry {
            name: name.clone(),
            dims: vec![v.len() as u64],
            ggml_type: GGML_F32,
            n_bytes: 4 * v.len(),
        });
    }
    w.write_streamed(&entries, path, |i| {
        let Some((gguf, parts, heads)) = plan.get(i) else {
            let v = &values[i - plan.len()].1;
            return Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect());
        };
        let mut out = Vec::with_capacity(entries[i].n_bytes);
        for hf in parts {
            let want = file_dtype(hf)?.1;
            let mut t = source.tensors.load(hf, LoadAs::Exactly(want))?;
            // Gemma's norms scale by 1 + w: llama.cpp's converter stores the sum.
            if c.features.norm_plus_one && hf.ends_with("norm.weight") && t.dtype == DType::F32 {
                let mut v: Vec<f32> = bytemuck::pod_collect_to_vec(&t.bytes);
                v.iter_mut().for_each(|x| *x += 1.0);
                t.bytes = bytemuck::cast_slice(&v).to_vec();
            }
            let (ty, mut bytes) =
                ggml_bytes(&t).ok_or_else(|| bad(format!("'{hf}' is {}", t.dtype)))?;
            if ty != entries[i].ggml_type {
                return Err(bad(format!(
                    "'{hf}' loaded as {}, not the type its listing gave",
                    t.dtype
                )));
            }
            if let Some(n_head) = heads {
                let rows = t.shape[0];
                if rows % n_head != 0 || (rows / n_head) % 2 != 0 {
                    return Err(bad(format!(
                        "'{gguf}': {rows} rows do not split into {n_head} heads of even size"
                    )));
                }
                bytes = permute_rows(&bytes, rows, *n_head);
            }
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    })
}
