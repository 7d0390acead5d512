//! ggml's block formats: dequantization, direct repacking into tandem's layout (no float round
//! trip, so Native loads are bit-exact; the GGUF block types only gain their padding, see
//! [`crate::quant::blocks`]), undoing llama.cpp's q/k row permutation, and the
//! [`TensorStore`] of a [`GgufFile`].
//!
//! ggml blocks each row separately, tandem blocks the flat index; since a ggml row is a whole
//! number of blocks, ggml block `b` in file order is exactly tandem block `b`.

use super::gguf::{
    GgmlType, GgufFile, GgufMetadataExt, GgufTensor, GGML_BF16, GGML_F16, GGML_F32, GGML_IQ4_NL,
    GGML_IQ4_XS, GGML_Q2_K, GGML_Q3_K, GGML_Q4_0, GGML_Q4_1, GGML_Q4_K, GGML_Q5_0, GGML_Q5_1,
    GGML_Q5_K, GGML_Q6_K, GGML_Q8_0,
};
use super::{f32_tensor, HostTensor, LoadAs, TensorInfo, TensorStore};
use crate::config::{ModelConfig, RopeScaling};
use crate::dtype::{DType, QBLOCK};
use crate::quant::blocks;
use crate::{Error, Result};
use half::f16;
use std::borrow::Cow;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Element `j` of a ggml Q4 block's 16 quant bytes: low nibbles hold elements 0..16, high
/// nibbles 16..32.
#[inline]
fn ggml_nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0f
    } else {
        qs[j - 16] >> 4
    }
}

/// Dequantizes ggml data of type `ty` to f32, as ggml itself computes it. `None` for types
/// tandem does not read. `raw` must hold whole blocks.
pub fn dequantize(ty: u32, raw: &[u8]) -> Option<Vec<f32>> {
    Some(match ty {
        GGML_F32 => {
            raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        GGML_F16 => {
            raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        GGML_BF16 => raw
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        GGML_Q8_0 => raw
            .chunks_exact(34)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                b[2..34].iter().map(move |&q| d * (q as i8) as f32)
            })
            .collect(),
        GGML_Q4_0 => raw
            .chunks_exact(18)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                (0..QBLOCK).map(move |j| d * (ggml_nibble(&b[2..18], j) as f32 - 8.0))
            })
            .collect(),
        GGML_Q4_1 => raw
            .chunks_exact(20)
            .flat_map(|b| {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                (0..QBLOCK).map(move |j| d * ggml_nibble(&b[4..20], j) as f32 + m)
            })
            .collect(),
        _ => {
            let dtype = native_dtype(ty).filter(|d| d.block_layout().is_some())?;
            let l = dtype.block_layout()?;
            let padded = blocks::from_ggml(dtype, raw.to_vec())?;
            let numel = raw.len() / l.ggml_bytes * l.elems;
            crate::quant::decode(&padded, dtype, numel)
        }
    })
}

/// The tandem type a ggml type loads as under [`LoadAs::Native`].
pub fn native_dtype(ty: u32) -> Option<DType> {
    Some(match ty {
        GGML_F32 | GGML_BF16 => DType::F32,
        GGML_F16 => DType::F16,
        GGML_Q8_0 => DType::Q8_0,
        GGML_Q4_0 => DType::Q4_0,
        GGML_Q4_1 => DType::Q4_1,
        GGML_Q5_0 => DType::Q5_0,
        GGML_Q5_1 => DType::Q5_1,
        GGML_Q2_K => DType::Q2_K,
        GGML_Q3_K => DType::Q3_K,
        GGML_Q4_K => DType::Q4_K,
        GGML_Q5_K => DType::Q5_K,
        GGML_Q6_K => DType::Q6_K,
        GGML_IQ4_NL => DType::IQ4_NL,
        GGML_IQ4_XS => DType::IQ4_XS,
        _ => return None,
    })
}

/// The ggml types tandem loads, for error messages.
pub const LOADABLE: &str =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS";

/// Repacks ggml Q8_0 / Q4_0 / Q4_1 blocks into tandem's sections, bit for bit, in place: only
/// the scales (2 or 4 bytes a block) are copied aside, so a streamed tensor is never held twice.
fn repack_quant(ty: u32, mut raw: Vec<u8>, numel: usize) -> Option<(DType, Vec<u8>)> {
    let (dtype, size, header) = match ty {
        GGML_Q8_0 => (DType::Q8_0, 34, 2),
        GGML_Q4_0 => (DType::Q4_0, 18, 2),
        GGML_Q4_1 => (DType::Q4_1, 20, 4),
        _ => return None,
    };
    let l = dtype.quant_layout(numel)?;
    if raw.len() != l.blocks * size || !numel.is_multiple_of(QBLOCK) {
        return None;
    }
    let heads: Vec<u8> =
        raw.chunks_exact(size).flat_map(|blk| blk[..header].iter().copied()).collect();
    // Block b's quants move from b*size + header down to b*qs, never past a block not yet read.
    let qs = size - header;
    for b in 0..l.blocks {
        let src = b * size + header;
        if dtype == DType::Q8_0 {
            raw.copy_within(src..src + qs, b * qs);
            continue;
        }
        // tandem: element e in byte e/2, low nibble for even e.
        let mut q = [0u8; QBLOCK / 2];
        q.copy_from_slice(&raw[src..src + qs]);
        for k in 0..QBLOCK / 2 {
            raw[b * qs + k] = ggml_nibble(&q, 2 * k) | (ggml_nibble(&q, 2 * k + 1) << 4);
        }
    }
    // Zeroes whatever lies between and after the sections, as a fresh buffer would have.
    raw.truncate(l.blocks * qs);
    raw.resize(l.total_bytes, 0);
    for (b, h) in heads.chunks_exact(header).enumerate() {
        raw[l.d_offset + 2 * b..l.d_offset + 2 * b + 2].copy_from_slice(&h[0..2]);
        if dtype == DType::Q4_1 {
            raw[l.m_offset + 2 * b..l.m_offset + 2 * b + 2].copy_from_slice(&h[2..4]);
        }
    }
    Some((dtype, raw))
}

/// Undoes llama.cpp's `permute` of q/k rows (HF -> GGUF:
/// `w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2)`), so rows come back in HF's rotate-half
/// order: `hf_row[h*hd + j*hd/2 + i] = gguf_row[h*hd + 2*i + j]`. Rows move as raw bytes, so
/// this works for any type whose rows are whole blocks.
pub fn unpermute_rows(
    raw: &[u8],
    rows: usize,
    n_head: usize,
) -> std::result::Result<Vec<u8>, String> {
    if rows == 0
        || n_head == 0
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
        || !raw.len().is_multiple_of(rows)
    {
        return Err(format!(
            "cannot undo the q/k permutation: {rows} rows, {n_head} heads, {} bytes",
            raw.len()
        ));
    }
    let (hd, row_bytes) = (rows / n_head, raw.len() / rows);
    let mut out = vec![0u8; raw.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let dst = h * hd + j * (hd / 2) + i;
                let src = h * hd + 2 * i + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&raw[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

/// Converts the raw bytes of a ggml tensor of type `ty` as asked. Errors are reasons, for the
/// caller to attach the tensor name and path.
pub(crate) fn convert(
    ty: GgmlType,
    raw: Cow<'_, [u8]>,
    shape: Vec<usize>,
    as_: LoadAs,
) -> std::result::Result<HostTensor, String> {
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let expected = (numel / ty.block).checked_mul(ty.type_size).ok_or("byte size overflows")?;
    if numel % ty.block != 0 || raw.len() != expected {
        return Err(format!(
            "{} bytes stored, but shape {shape:?} of {} needs {expected}",
            raw.len(),
            ty.name
        ));
    }
    let native = native_dtype(ty.id).ok_or_else(|| {
        format!("ggml type {} is not supported (tandem loads {LOADABLE})", ty.name)
    })?;
    let target = match as_ {
        LoadAs::F32 => DType::F32,
        LoadAs::Native => native,
        LoadAs::Exactly(DType::U32) => return Err("cannot load a float tensor as u32".into()),
        // Another type than the file's is made by dequantizing to f32 and quantizing again
        // (a second rounding on top of the file's), where tandem can quantize to it.
        LoadAs::Exactly(d) if d != native => match crate::quant::encode_refusal(d, &shape) {
            Some(why) => {
                return Err(format!("cannot convert {} to {d} at load time: {why}", ty.name))
            }
            None => d,
        },
        LoadAs::Exactly(d) => d,
    };
    // Same type: copy or repack without touching the values.
    if target == native && ty.id != GGML_BF16 {
        let bytes = match target {
            DType::F32 => raw.into_owned(),
            DType::F16 => {
                let mut b = raw.into_owned();
                b.resize(DType::F16.storage_bytes(numel), 0);
                b
            }
            d if d.block_layout().is_some() => blocks::from_ggml(d, raw.into_owned())
                .ok_or("quantized data does not fill whole blocks")?,
            _ => {
                repack_quant(ty.id, raw.into_owned(), numel)
                    .ok_or("quantized data does not fill whole blocks")?
                    .1
            }
        };
        return Ok(HostTensor { dtype: target, shape, bytes });
    }
    if (ty.id, target) == (GGML_BF16, DType::BF16) {
        let mut bytes = raw.into_owned();
        bytes.resize(target.storage_bytes(numel), 0);
        return Ok(HostTensor { dtype: target, shape, bytes });
    }
    let values = dequantize(ty.id, &raw).ok_or("unsupported ggml type")?;
    Ok(f32_tensor(shape, &values, target))
}

/// Recovers Llama 3 rope scaling from llama.cpp's `rope_freqs.weight`: per-frequency divisors
/// `base_freq / scaled_freq`, [head_dim / 2]. The factor is their maximum; low/high frequency
/// factors 1 and 4 and an 8192 original context (every Llama 3.x release; `orig` overrides the
/// context) must then reproduce every divisor, or the file is refused rather than misread.
pub(crate) fn rope_scaling_from_factors(
    cfg: &ModelConfig,
    factors: &[f32],
    orig: Option<usize>,
) -> Result<RopeScaling> {
    let half = cfg.head_dim / 2;
    let err = |m: String| Err(Error::BadConfig(format!("rope_freqs.weight: {m}")));
    if factors.len() != half {
        return err(format!("{} factors, expected head_dim / 2 = {half}", factors.len()));
    }
    let factor = factors.iter().fold(1f32, |a, &f| a.max(f));
    if factors.iter().all(|&f| f == 1.0) {
        return Ok(RopeScaling::None);
    }
    let scaling = RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: orig.unwrap_or(8192),
    };
    let base = ModelConfig { rope_scaling: RopeScaling::None, ..cfg.clone() }.rope_inv_freq();
    let scaled = ModelConfig { rope_scaling: scaling.clone(), ..cfg.clone() }.rope_inv_freq();
    for (i, ((b, s), f)) in base.iter().zip(&scaled).zip(factors).enumerate() {
        let want = b / s;
        if !f.is_finite() || (want - f).abs() > 1e-3 * f.abs().max(1.0) {
            return err(format!("factor {i} is {f}, Llama 3 scaling (factor {factor}) would give {want}; unsupported rope scaling"));
        }
    }
    Ok(scaling)
}

impl GgufFile {
    /// The head count llama.cpp permuted `hf_name`'s rows with, if it did.
    fn permute_heads(&self, hf_name: &str) -> Option<Result<usize>> {
        // Only the Llama converter permutes; qwen2's GGUF keeps HF's row order.
        if !matches!(self.architecture(), Some("llama" | "mistral")) {
            return None;
        }
        let is_k = super::names::rope_permuted(hf_name)?;
        let arch = self.architecture().unwrap_or("llama");
        let q_key = format!("{arch}.attention.head_count");
        let kv_key = format!("{arch}.attention.head_count_kv");
        let heads = if is_k {
            self.metadata.get_u64(&kv_key).or_else(|| self.metadata.get_u64(&q_key))
        } else {
            self.metadata.get_u64(&q_key)
        };
        Some(heads.and_then(|h| usize::try_from(h).ok()).ok_or_else(|| {
            Error::bad_file(
                &self.path,
                format!("'{hf_name}' needs {q_key} to undo the rope permutation"),
            )
        }))
    }

    /// Converts `raw`, the data of directory entry `t` (HF name `name`), as `as_` asks: rows
    /// llama.cpp permuted for its RoPE come back in HF order, ggml blocks become tandem's. The
    /// one conversion both the memory-mapped loader and the stream (`loader::stream`) use.
    pub fn convert(
        &self,
        t: &GgufTensor,
        name: &str,
        raw: Cow<'_, [u8]>,
        as_: LoadAs,
    ) -> Result<HostTensor> {
        let bad = |reason: String| {
            Error::bad_file(&self.path, format!("tensor '{name}' ('{}'): {reason}", t.name))
        };
        let mut raw = raw;
        if let Some(heads) = self.permute_heads(name) {
            let rows = t.dims.get(1).or(t.dims.first()).copied().unwrap_or(0) as usize;
            if t.dims.len() > 2 {
                return Err(bad(format!("{} dims; expected a matrix or a vector", t.dims.len())));
            }
            raw = Cow::Owned(unpermute_rows(&raw, rows, heads?).map_err(bad)?);
        }
        convert(t.ggml_type, raw, t.shape(), as_).map_err(bad)
    }
}

impl TensorStore for GgufFile {
    fn infos(&self) -> &[TensorInfo] {
        &self.infos
    }

    fn load(&self, name: &str, as_: LoadAs) -> Result<HostTensor> {
        let &i = self.by_name.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let t = &self.tensors[i];
        let data = self.tensor_data(t)?;
        let tensor = self.convert(t, name, Cow::Borrowed(data), as_);
        if let Some(blob) = &self.blob {
            blob.done_with(data);
        }
        tensor
    }
}
