//! A small GGUF v2/v3 writer, for tests (here and in the shared suite): metadata of every
//! value type, tensors of F32 / F16 / BF16 / Q8_0 / Q4_0 / Q4_1 quantized in ggml's own block
//! format with ggml's reference rounding. Not a general-purpose converter; its one model
//! writer, [`write_llama_gguf`], exists so that synthetic weights (`tandem bench --synthetic
//! --write-gguf`) can be measured by llama.cpp on the same bytes.

use half::{bf16, f16};
use std::io::Write;
use std::path::Path;
use tandem_core::config::{ModelConfig, RopeScaling};
use tandem_core::dtype::{DType, QBLOCK};
use tandem_core::loader::gguf::{
    GgufValue, GGML_BF16, GGML_F16, GGML_F32, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0,
};
use tandem_core::loader::{HostTensor, LoadAs, ModelSource};
use tandem_core::{Error, Result};

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
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ggml_type: u32,
        values: &[f32],
    ) -> &mut Self {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensor_raw(name, dims, ggml_type, quantize_ggml(values, ggml_type))
    }

    /// Adds a tensor with ggml-order `dims` and raw `data`, written as given (even if wrong).
    pub fn tensor_raw(
        &mut self,
        name: &str,
        dims: Vec<u64>,
        ggml_type: u32,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(Tensor { name: name.to_string(), dims, ggml_type, data });
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let entries: Vec<TensorEntry> = self
            .tensors
            .iter()
            .map(|t| TensorEntry {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
                n_bytes: t.data.len(),
            })
            .collect();
        let (mut out, offsets) = self.header(&entries);
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// Everything before the tensor data (magic, metadata, tensor directory, padding), and each
    /// tensor's offset from the data's start.
    fn header(&self, tensors: &[TensorEntry]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            write_string(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            write_value(&mut out, v);
        }
        let align = self.alignment.max(1) as usize;
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in tensors {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.n_bytes).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        (out, offsets)
    }

    /// Writes a file at `path` with this writer's metadata and the tensors of `entries` (not
    /// the ones added with [`GgufWriter::tensor`]), whose data `data(i)` makes when entry `i` is
    /// due, so a model larger than memory is written one tensor at a time. Returns its size.
    pub fn write_streamed(
        &self,
        entries: &[TensorEntry],
        path: &Path,
        mut data: impl FnMut(usize) -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let err = |e: std::io::Error| Error::io(path, e);
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
        let (header, offsets) = self.header(entries);
        out.write_all(&header).map_err(err)?;
        let mut at = 0usize;
        for (i, (t, off)) in entries.iter().zip(offsets).enumerate() {
            let bytes = data(i)?;
            if bytes.len() != t.n_bytes {
                return Err(Error::InvalidParameter(format!(
                    "tensor '{}': {} bytes made, {} announced",
                    t.name,
                    bytes.len(),
                    t.n_bytes
                )));
            }
            out.write_all(&vec![0u8; off - at]).map_err(err)?;
            out.write_all(&bytes).map_err(err)?;
            at = off + bytes.len();
        }
        out.flush().map_err(err)?;
        Ok((header.len() + at) as u64)
    }
}

/// A tensor's directory entry, for [`GgufWriter::write_streamed`].
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    /// ggml order: innermost first.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub n_bytes: usize,
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
        GGML_F16 => {
            values.iter().for_each(|x| out.extend_from_slice(&f16::from_f32(*x).to_le_bytes()))
        }
        GGML_BF16 => {
            values.iter().for_each(|x| out.extend_from_slice(&bf16::from_f32(*x).to_le_bytes()))
        }
        GGML_Q8_0 | GGML_Q4_0 | GGML_Q4_1 => {
            assert!(
                values.len().is_multiple_of(32),
                "quantize_ggml: {} values is not whole blocks",
                values.len()
            );
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
pub fn llama2c_vocab(
    bytes: &[u8],
    vocab: usize,
) -> Result<(Vec<GgufValue>, Vec<GgufValue>, Vec<GgufValue>), String> {
    let mut at = 4;
    let mut take = |n: usize, id: usize| -> Result<&[u8], String> {
        let s = bytes
            .get(at..at + n)
            .ok_or_else(|| format!("llama2c tokenizer: truncated at token {id}"))?;
        at += n;
        Ok(s)
    };
    let (mut tokens, mut scores, mut types) = (vec![], vec![], vec![]);
    for id in 0..vocab {
        let score = f32::from_le_bytes(take(4, id)?.try_into().expect("4 bytes"));
        let len = i32::from_le_bytes(take(4, id)?.try_into().expect("4 bytes")).max(0) as usize;
        let piece = String::from_utf8(take(len, id)?.to_vec())
            .map_err(|e| format!("token {id}: {e}"))?
            .replace(' ', "▁");
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
    let put =
        |w: &mut GgufWriter, gguf: &str, hf: &str, heads: Option<usize>| -> Result<(), String> {
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

/// The `llama.*` hyper-parameters of `c`, as llama.cpp's converter writes them.
fn llama_metadata(w: &mut GgufWriter, c: &ModelConfig) {
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
}

/// A tensor in tandem's layout as ggml stores it: its ggml type and bytes (quantized blocks
/// interleaved again, each with its scale(s) first; Q4 nibbles in ggml's order). The inverse of
/// the loader's repacking, bit for bit. `None` for u32 tensors.
pub fn ggml_bytes(t: &HostTensor) -> Option<(u32, Vec<u8>)> {
    let numel: usize = t.shape.iter().product();
    let plain = |ty: u32, elem: usize| Some((ty, t.bytes.get(..numel * elem)?.to_vec()));
    let (ty, size, header) = match t.dtype {
        DType::F32 => return plain(GGML_F32, 4),
        DType::F16 => return plain(GGML_F16, 2),
        DType::BF16 => return plain(GGML_BF16, 2),
        DType::U32 => return None,
        b if b.block_layout().is_some() => {
            let l = b.block_layout()?;
            let ty = ggml_block_type(b)?;
            if !numel.is_multiple_of(l.elems) || t.bytes.len() < b.storage_bytes(numel) {
                return None;
            }
            return Some((ty, tandem_core::quant::blocks::to_ggml(b, &t.bytes, numel / l.elems)));
        }
        DType::Q8_0 => (GGML_Q8_0, 34, 2),
        DType::Q4_0 => (GGML_Q4_0, 18, 2),
        DType::Q4_1 => (GGML_Q4_1, 20, 4),
        _ => return None,
    };
    let l = t.dtype.quant_layout(numel)?;
    if !numel.is_multiple_of(QBLOCK) || t.bytes.len() < l.total_bytes {
        return None;
    }
    let qs = size - header;
    let mut out = Vec::with_capacity(l.blocks * size);
    for b in 0..l.blocks {
        out.extend_from_slice(&t.bytes[l.d_offset + 2 * b..l.d_offset + 2 * b + 2]);
        if t.dtype == DType::Q4_1 {
            out.extend_from_slice(&t.bytes[l.m_offset + 2 * b..l.m_offset + 2 * b + 2]);
        }
        let q = &t.bytes[b * qs..(b + 1) * qs];
        if t.dtype == DType::Q8_0 {
            out.extend_from_slice(q);
            continue;
        }
        // tandem: element e in byte e/2, low nibble for even e; ggml: element j < 16 in the
        // low nibble of byte j, element j + 16 in its high nibble.
        let nib = |e: usize| (q[e / 2] >> (4 * (e % 2))) & 0x0f;
        out.extend((0..QBLOCK / 2).map(|j| nib(j) | (nib(j + QBLOCK / 2) << 4)));
    }
    Some((ty, out))
}

/// A SentencePiece ("llama") vocabulary of `n` made-up tokens, for weights that come with no
/// tokenizer: `<unk>`, `<s>`, `</s>`, the 256 byte tokens (as many as fit), `▁` and `▁t<id>`
/// for the rest, with no merges, so any text encodes (as bytes) and every id decodes. llama.cpp
/// and tandem both load it; llama.cpp's "none" tokenizer model would leave tandem without one.
pub fn placeholder_vocab(n: usize) -> Vec<(&'static str, GgufValue)> {
    let (mut tokens, mut scores, mut types) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for id in 0..n {
        let (piece, ty) = match id {
            0 => ("<unk>".to_string(), 2),
            1 => ("<s>".to_string(), 3),
            2 => ("</s>".to_string(), 3),
            3..=258 => (format!("<0x{:02X}>", id - 3), 6),
            // SentencePiece's word boundary: without it a space would only decode as its bytes.
            259 => ("\u{2581}".to_string(), 1),
            _ => (format!("\u{2581}t{id}"), 1),
        };
        tokens.push(GgufValue::String(piece));
        scores.push(GgufValue::F32(if ty == 1 { -(id as f32) } else { 0.0 }));
        types.push(GgufValue::I32(ty));
    }
    vec![
        ("tokenizer.ggml.model", GgufValue::String("llama".into())),
        ("tokenizer.ggml.tokens", GgufValue::Array(tokens)),
        ("tokenizer.ggml.scores", GgufValue::Array(scores)),
        ("tokenizer.ggml.token_type", GgufValue::Array(types)),
        ("tokenizer.ggml.unknown_token_id", GgufValue::U32(0)),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
    ]
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
        DType::F32 | DType::U32 => 0,
    }
}

/// The ggml type id of a GGUF block type.
fn ggml_block_type(d: DType) -> Option<u32> {
    (0..64).find(|&id| {
        tandem_core::loader::ggml::native_dtype(id) == Some(d) && d.block_layout().is_some()
    })
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
    if c.qkv_bias || c.arch == tandem_core::config::Arch::Qwen2 {
        return Err(bad(format!(
            "only Llama models without q/k/v biases are written (this is {:?})",
            c.arch
        )));
    }
    let mut w = GgufWriter::new();
    llama_metadata(&mut w, c);
    if c.head_dim * c.n_heads != c.dim {
        let u = GgufValue::U32(c.head_dim as u32);
        w.kv("llama.attention.key_length", u.clone()).kv("llama.attention.value_length", u);
    }
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        w.kv("llama.rope.scaling.type", GgufValue::String("linear".into()))
            .kv("llama.rope.scaling.factor", GgufValue::F32(factor));
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

    // (GGUF name, HF name or None for rope_freqs, heads the rows are permuted by)
    let mut plan: Vec<(String, Option<String>, Option<usize>)> =
        vec![("token_embd.weight".into(), Some("model.embed_tokens.weight".into()), None)];
    for l in 0..c.n_layers {
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
            plan.push((
                format!("blk.{l}.{g}.weight"),
                Some(format!("model.layers.{l}.{h}.weight")),
                heads,
            ));
        }
    }
    plan.push(("output_norm.weight".into(), Some("model.norm.weight".into()), None));
    if !c.tie_embeddings {
        plan.push(("output.weight".into(), Some("lm_head.weight".into()), None));
    }
    // llama.cpp's converter: per-frequency divisors, [head_dim / 2].
    let rope_freqs: Option<Vec<f32>> =
        matches!(c.rope_scaling, RopeScaling::Llama3 { .. }).then(|| {
            let base = ModelConfig { rope_scaling: RopeScaling::None, ..c.clone() }.rope_inv_freq();
            base.iter().zip(c.rope_inv_freq()).map(|(b, s)| b / s).collect()
        });
    if rope_freqs.is_some() {
        plan.push(("rope_freqs.weight".into(), None, None));
    }

    let mut entries = Vec::with_capacity(plan.len());
    for (gguf, hf, _) in &plan {
        let (shape, dtype) = match hf {
            None => (vec![c.head_dim / 2], DType::F32),
            Some(hf) => {
                let info = infos
                    .iter()
                    .find(|i| &i.name == hf)
                    .ok_or_else(|| Error::MissingTensor(hf.clone()))?;
                let d = native(&info.file_dtype)
                    .ok_or_else(|| bad(format!("'{hf}' is {}", info.file_dtype)))?;
                (info.shape.clone(), d)
            }
        };
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
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type: ty,
            n_bytes,
        });
    }
    w.write_streamed(&entries, path, |i| {
        let (gguf, hf, heads) = &plan[i];
        let Some(hf) = hf else {
            let f = rope_freqs.as_deref().unwrap_or_default();
            return Ok(f.iter().flat_map(|x| x.to_le_bytes()).collect());
        };
        let want = native(&infos.iter().find(|i| &i.name == hf).expect("listed above").file_dtype)
            .expect("checked above");
        let t = source.tensors.load(hf, LoadAs::Exactly(want))?;
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
        Ok(bytes)
    })
}
