//! A small GGUF v2/v3 writer, for tests (here and in the shared suite): metadata of every
//! value type, tensors of F32 / F16 / BF16 / Q8_0 / Q4_0 / Q4_1 quantized in ggml's own block
//! format with ggml's reference rounding. Not a general-purpose converter.

use super::gguf::{GgufValue, GGML_BF16, GGML_F16, GGML_F32, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0};
use half::{bf16, f16};

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

pub struct GgufWriter {
    pub version: u32,
    alignment: u64,
    kvs: Vec<(String, GgufValue)>,
    tensors: Vec<Tensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter { version: 3, alignment: 32, kvs: Vec::new(), tensors: Vec::new() }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the data alignment and writes `general.alignment`.
    pub fn alignment(&mut self, a: u64) -> &mut Self {
        self.alignment = a;
        self.kv("general.alignment", GgufValue::U32(a as u32))
    }

    pub fn kv(&mut self, key: &str, value: GgufValue) -> &mut Self {
        self.kvs.push((key.to_string(), value));
        self
    }

    /// Adds a tensor of HF `shape` (outermost first), quantized from `values` as ggml would.
    pub fn tensor(&mut self, name: &str, shape: &[usize], ggml_type: u32, values: &[f32]) -> &mut Self {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensor_raw(name, dims, ggml_type, quantize_ggml(values, ggml_type))
    }

    /// Adds a tensor with ggml-order `dims` and raw `data`, written as given (even if wrong).
    pub fn tensor_raw(&mut self, name: &str, dims: Vec<u64>, ggml_type: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(Tensor { name: name.to_string(), dims, ggml_type, data });
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            write_string(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            write_value(&mut out, v);
        }
        let align = self.alignment.max(1) as usize;
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

/// The GGUF value type code of `v` (an empty array is written as an array of u8).
pub fn value_type(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

pub fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes the payload of `v` (no type code).
pub fn write_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => write_string(out, s),
        GgufValue::Array(items) => {
            let ty = items.first().map(value_type).unwrap_or(0);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                write_value(out, it);
            }
        }
    }
}

/// Quantizes `values` into ggml blocks of `ggml_type` with ggml's reference rounding
/// (`quantize_row_*_ref`). Panics on other types or a length that is not whole blocks: this
/// is a test helper fed by tests.
pub fn quantize_ggml(values: &[f32], ggml_type: u32) -> Vec<u8> {
    let mut out = Vec::new();
    match ggml_type {
        GGML_F32 => values.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GGML_F16 => values.iter().for_each(|x| out.extend_from_slice(&f16::from_f32(*x).to_le_bytes())),
        GGML_BF16 => values.iter().for_each(|x| out.extend_from_slice(&bf16::from_f32(*x).to_le_bytes())),
        GGML_Q8_0 | GGML_Q4_0 | GGML_Q4_1 => {
            assert!(values.len() % 32 == 0, "quantize_ggml: {} values is not whole blocks", values.len());
            for x in values.chunks_exact(32) {
                quantize_block(x, ggml_type, &mut out);
            }
        }
        t => panic!("quantize_ggml: unsupported ggml type {t}"),
    }
    out
}

fn quantize_block(x: &[f32], ty: u32, out: &mut Vec<u8>) {
    match ty {
        GGML_Q8_0 => {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
        }
        GGML_Q4_0 => {
            let max = x.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
            out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
        }
        _ => {
            let min = x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
            let max = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
            let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
            out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
        }
    }
}

/// `tokenizer.ggml.{tokens, scores, token_type}` arrays from a llama2.c tokenizer file (e.g.
/// tok512.bin): i32 max_token_length, then per token an f32 score, an i32 length and the bytes.
/// llama2.c writes "▁" as a plain space and BOS/EOS as "\n<s>\n"/"\n</s>\n"; llama.cpp's
/// converter (working from the .model) has "▁", "<s>", "</s>", so those are restored.
/// For tests: a malformed file is an `Err` naming the token where it broke.
pub fn llama2c_vocab(bytes: &[u8], vocab: usize) -> Result<(Vec<GgufValue>, Vec<GgufValue>, Vec<GgufValue>), String> {
    let mut at = 4;
    let mut take = |n: usize, id: usize| -> Result<&[u8], String> {
        let s = bytes.get(at..at + n).ok_or_else(|| format!("llama2c tokenizer: truncated at token {id}"))?;
        at += n;
        Ok(s)
    };
    let (mut tokens, mut scores, mut types) = (vec![], vec![], vec![]);
    for id in 0..vocab {
        let score = f32::from_le_bytes(take(4, id)?.try_into().expect("4 bytes"));
        let len = i32::from_le_bytes(take(4, id)?.try_into().expect("4 bytes")).max(0) as usize;
        let piece = String::from_utf8(take(len, id)?.to_vec()).map_err(|e| format!("token {id}: {e}"))?.replace(' ', "▁");
        let piece = match id {
            1 => "<s>".to_string(),
            2 => "</s>".to_string(),
            _ => piece,
        };
        let is_byte = piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>');
        types.push(GgufValue::I32(match id {
            0 => 2,
            1 | 2 => 3,
            _ if is_byte => 6,
            _ => 1,
        }));
        tokens.push(GgufValue::String(piece));
        scores.push(GgufValue::F32(score));
    }
    Ok((tokens, scores, types))
}

/// llama.cpp's `permute` of q/k rows for its RoPE layout (HF -> GGUF), on rows of any type:
/// `gguf_row[h*hd + 2*i + j] = hf_row[h*hd + j*hd/2 + i]`. The inverse of
/// [`super::ggml::unpermute_rows`]. Panics on shapes that do not split into heads (tests).
pub fn permute_rows(raw: &[u8], rows: usize, n_head: usize) -> Vec<u8> {
    let (hd, row) = (rows / n_head, raw.len() / rows);
    assert!(rows % n_head == 0 && hd % 2 == 0 && raw.len() % rows == 0, "permute_rows: {rows} rows, {n_head} heads");
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
    source: &super::ModelSource,
    tokenizer: Vec<(&str, GgufValue)>,
    ggml_type: impl Fn(&[usize]) -> u32,
) -> Result<GgufWriter, String> {
    use super::LoadAs;
    let c = &source.config;
    let mut w = GgufWriter::new();
    let u = |n: usize| GgufValue::U32(n as u32);
    w.kv("general.architecture", GgufValue::String("llama".into()))
        .kv("llama.context_length", u(c.max_position))
        .kv("llama.embedding_length", u(c.dim))
        .kv("llama.block_count", u(c.n_layers))
        .kv("llama.feed_forward_length", u(c.ffn_dim))
        .kv("llama.rope.dimension_count", u(c.head_dim))
        .kv("llama.attention.head_count", u(c.n_heads))
        .kv("llama.attention.head_count_kv", u(c.n_kv_heads))
        .kv("llama.rope.freq_base", GgufValue::F32(c.rope_theta))
        .kv("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(c.rms_norm_eps))
        .kv("llama.vocab_size", u(c.vocab_size));
    for (k, v) in tokenizer {
        w.kv(k, v);
    }
    let put = |w: &mut GgufWriter, gguf: &str, hf: &str, heads: Option<usize>| -> Result<(), String> {
        let t = source.tensors.load(hf, LoadAs::F32).map_err(|e| e.to_string())?;
        let mut bytes = t.bytes;
        if let Some(n_head) = heads {
            bytes = permute_rows(&bytes, t.shape[0], n_head);
        }
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        w.tensor(gguf, &t.shape, ggml_type(&t.shape), &values);
        Ok(())
    };
    put(&mut w, "token_embd.weight", "model.embed_tokens.weight", None)?;
    for l in 0..c.n_layers {
        let (b, p) = (format!("blk.{l}"), format!("model.layers.{l}"));
        for (g, h, heads) in [
            ("attn_norm", "input_layernorm", None),
            ("attn_q", "self_attn.q_proj", Some(c.n_heads)),
            ("attn_k", "self_attn.k_proj", Some(c.n_kv_heads)),
            ("attn_v", "self_attn.v_proj", None),
            ("attn_output", "self_attn.o_proj", None),
            ("ffn_norm", "post_attention_layernorm", None),
            ("ffn_gate", "mlp.gate_proj", None),
            ("ffn_up", "mlp.up_proj", None),
            ("ffn_down", "mlp.down_proj", None),
        ] {
            put(&mut w, &format!("{b}.{g}.weight"), &format!("{p}.{h}.weight"), heads)?;
        }
    }
    put(&mut w, "output_norm.weight", "model.norm.weight", None)?;
    if !c.tie_embeddings {
        put(&mut w, "output.weight", "lm_head.weight", None)?;
    }
    Ok(w)
}
