//! Conversions between float data and tandem's block formats (see [`crate::dtype`]), and the
//! reference decoders of the GGUF block types tandem keeps as blocks ([`blocks`]).

pub mod blocks;
mod iq4;
mod kquantize;
mod kquants;
pub mod kv;
mod q5;
mod rows;
pub use rows::{slice_rows, stack_rows};

pub use blocks::BlockView;
pub use iq4::IQ4_LEVELS;

use crate::dtype::{bf16_to_f32, DType, QuantView, QBLOCK};
use half::{bf16, f16};

/// Encodes `src` as a buffer of `dtype` in tandem's layout (`dtype.storage_bytes(src.len())`
/// bytes). F16 and BF16 round to nearest, ties to even (NaN stays NaN). Quantization is
/// round-to-nearest: Q8_0 and Q4_0 scale by the block's absolute
/// maximum, Q4_1 maps the block's [min, max] onto 0..=15. Q4_K, Q6_K and Q5_0 fit their
/// scales by a small least-squares search (see `kquantize.rs`); a last partial block is
/// padded with zeros.
///
/// Panics for U32 and for the GGUF block types other than those three, which tandem loads
/// but does not quantize to ([`can_encode`]; loaders refuse them with an error first).
pub fn encode(src: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = vec![0u8; dtype.storage_bytes(src.len())];
    match dtype {
        DType::F32 => out.copy_from_slice(bytemuck::cast_slice(src)),
        DType::U32 => panic!("encode: u32 is not a float type"),
        q if q.block_layout().is_some() => kquantize::quantize_blocks(src, q, &mut out),
        DType::F16 => {
            for (o, &x) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f16::from_f32(x).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (o, &x) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&bf16::from_f32(x).to_le_bytes());
            }
        }
        q => quantize_into(src, q, &mut out),
    }
    out
}

/// Whether [`encode`] can make `dtype`: every float and quantized type but the GGUF block
/// types tandem only loads (all except Q4_K, Q6_K and Q5_0).
pub fn can_encode(dtype: DType) -> bool {
    match dtype {
        DType::U32 => false,
        DType::Q4_K | DType::Q6_K | DType::Q5_0 => true,
        d => d.block_layout().is_none(),
    }
}

/// The type a weight matrix with rows of `cols` elements loads as when `want` is asked for.
/// A K-quant block is 256 elements and a GGUF row is whole blocks, so matrices whose rows are
/// not fall back to a type of comparable or more bits, as K-quant presets do: Q4_K to Q5_0
/// (6 bits a weight in tandem's padded blocks against Q4_K's 4.5), Q6_K to Q8_0 (8.5 against
/// 6.6). Every other type is returned as is.
pub fn matrix_dtype(want: DType, cols: usize) -> DType {
    match want {
        DType::Q4_K if !cols.is_multiple_of(256) => DType::Q5_0,
        DType::Q6_K if !cols.is_multiple_of(256) => DType::Q8_0,
        d => d,
    }
}

/// Why a tensor of `shape` (row-major, rows last) cannot be made `dtype` by [`encode`] at load
/// time, if it cannot: a type tandem does not quantize to, or K-quant rows of partial blocks.
pub fn encode_refusal(dtype: DType, shape: &[usize]) -> Option<String> {
    if !can_encode(dtype) {
        return Some(format!("tandem does not quantize to {dtype} (it loads {dtype} only from GGUF files that store it; q4_k, q6_k and q5_0 can be made at load time)"));
    }
    let cols = shape.last().copied().unwrap_or(1);
    let elems = dtype.block_layout().map_or(1, |l| l.elems);
    (elems == 256 && cols % 256 != 0)
        .then(|| format!("rows of {cols} elements are not whole {dtype} blocks of 256"))
}

fn quantize_into(src: &[f32], dtype: DType, out: &mut [u8]) {
    let l = dtype.quant_layout(src.len()).unwrap();
    for b in 0..l.blocks {
        let start = b * QBLOCK;
        let block = &src[start..(start + QBLOCK).min(src.len())];
        let (d, m) = match dtype {
            DType::Q8_0 | DType::Q4_0 => {
                let mut codes = [0u8; QBLOCK];
                let d = kv::quantize_block(dtype, block, &mut codes);
                for (i, &c) in codes.iter().enumerate() {
                    match dtype {
                        DType::Q8_0 => out[start + i] = c,
                        _ => set_nibble(out, start + i, c),
                    }
                }
                (d.to_f32(), 0.0)
            }
            DType::Q4_1 => {
                let min = block.iter().fold(f32::INFINITY, |a, &x| a.min(x));
                let max = block.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let d = (max - min) / 15.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                for (i, &x) in block.iter().enumerate() {
                    set_nibble(out, start + i, ((x - min) * id).round().clamp(0.0, 15.0) as u8);
                }
                (d, min)
            }
            _ => unreachable!(),
        };
        out[l.d_offset + 2 * b..l.d_offset + 2 * b + 2]
            .copy_from_slice(&f16::from_f32(d).to_le_bytes());
        if dtype == DType::Q4_1 {
            out[l.m_offset + 2 * b..l.m_offset + 2 * b + 2]
                .copy_from_slice(&f16::from_f32(m).to_le_bytes());
        }
    }
}

fn set_nibble(qs: &mut [u8], e: usize, q: u8) {
    let byte = &mut qs[e / 2];
    if e.is_multiple_of(2) {
        *byte = (*byte & 0xf0) | q;
    } else {
        *byte = (*byte & 0x0f) | (q << 4);
    }
}

/// Decodes `numel` elements of a buffer in tandem's layout back to f32.
pub fn decode(bytes: &[u8], dtype: DType, numel: usize) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(&bytes[..numel * 4]),
        DType::U32 => panic!("decode: u32 is not a float type"),
        DType::F16 => bytes[..numel * 2]
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes[..numel * 2]
            .chunks_exact(2)
            .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        q if q.block_layout().is_some() => {
            let mut out = vec![0f32; numel];
            BlockView::new(q, numel, bytes).decode_range(0, &mut out);
            out
        }
        q => {
            // Copy to an aligned buffer: `bytes` may come from a file at any offset.
            let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[..q.storage_bytes(numel)]);
            let view = QuantView::new(q, numel, bytemuck::cast_slice(&words));
            (0..numel).map(|e| view.get(e)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_bounded_per_block() {
        let src: Vec<f32> = (0..100).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for (dtype, rel) in [
            (DType::F16, 1e-3),
            (DType::BF16, 1.0 / 256.0),
            (DType::Q8_0, 1.0 / 127.0),
            (DType::Q4_0, 1.0 / 8.0),
            (DType::Q4_1, 1.0 / 15.0),
        ] {
            let back = decode(&encode(&src, dtype), dtype, src.len());
            let amax = src.iter().fold(0f32, |a, x| a.max(x.abs()));
            for (a, b) in src.iter().zip(&back) {
                assert!((a - b).abs() <= amax * rel * 1.1, "{dtype}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        let bits = |x: f32| u16::from_le_bytes(encode(&[x], DType::BF16)[..2].try_into().unwrap());
        // 1 + 2^-8 lies halfway between bf16 1.0 (0x3f80) and the next value (0x3f81): ties go
        // to the even mantissa, 0x3f80; just above the tie rounds up.
        assert_eq!(bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bits(-2.5), 0xc020);
        assert!(decode(&encode(&[f32::NAN], DType::BF16), DType::BF16, 1)[0].is_nan());
        // A NaN whose payload lies only in the low 16 bits must not round to infinity.
        assert!(decode(&encode(&[f32::from_bits(0x7f80_0001)], DType::BF16), DType::BF16, 1)[0]
            .is_nan());
        assert_eq!(
            decode(&encode(&[f32::INFINITY, -0.0], DType::BF16), DType::BF16, 2),
            [f32::INFINITY, -0.0]
        );
        assert_eq!(DType::BF16.storage_bytes(3), 8);
    }

    #[test]
    fn bits_per_weight() {
        let n = 64 * 172;
        assert_eq!(DType::Q8_0.storage_bytes(n) * 8, n * 17 / 2);
        assert_eq!(DType::Q4_1.storage_bytes(n) * 8, n * 5);
    }
}
