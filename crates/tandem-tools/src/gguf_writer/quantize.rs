//! Tensors in ggml's own formats: floats quantized into ggml blocks with ggml's reference
//! rounding, and tandem's in-memory layout converted back to ggml's bytes.

use half::{bf16, f16};
use tandem_core::dtype::{DType, QBLOCK};
use tandem_core::loader::gguf::{GGML_BF16, GGML_F16, GGML_F32, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0};
use tandem_core::loader::HostTensor;

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

/// The ggml type id of a GGUF block type.
pub(super) fn ggml_block_type(d: DType) -> Option<u32> {
    (0..64).find(|&id| {
        tandem_core::loader::ggml::native_dtype(id) == Some(d) && d.block_layout().is_some()
    })
}
