//! GGUF block types kept as blocks: Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS.
//!
//! # Layout (what WGSL and CUDA kernels read)
//!
//! A tensor of `numel` elements is `numel.div_ceil(elems)` blocks, array of structs, blocked
//! over the *flattened* row-major element index like tandem's other quantized types (element
//! `e` lies in block `e / elems` at position `e % elems`; a GGUF row is a whole number of
//! blocks, so ggml's block `b` is tandem's block `b`). Each block is ggml's block, byte for
//! byte, with zero padding inserted so that every block is `stride` bytes, a multiple of 4,
//! and every field of 4 bytes or more starts on a 4-byte boundary ([`DType::block_layout`]).
//! Offsets below are in tandem's padded block; all values little-endian; f16 is IEEE half.
//!
//! | type   | elems | stride | fields (byte offset: field)                                            |
//! |--------|-------|--------|------------------------------------------------------------------------|
//! | Q5_0   | 32    | 24     | 0: d f16, 2: pad, 4: qh u32, 8: qs [16]                                |
//! | Q5_1   | 32    | 24     | 0: d f16, 2: m f16, 4: qh u32, 8: qs [16]                              |
//! | Q2_K   | 256   | 84     | 0: scales [16], 16: qs [64], 80: d f16, 82: dmin f16                   |
//! | Q3_K   | 256   | 112    | 0: hmask [32], 32: qs [64], 96: scales [12], 108: d f16, 110: pad      |
//! | Q4_K   | 256   | 144    | 0: d f16, 2: dmin f16, 4: scales [12], 16: qs [128]                    |
//! | Q5_K   | 256   | 176    | 0: d f16, 2: dmin f16, 4: scales [12], 16: qh [32], 48: qs [128]       |
//! | Q6_K   | 256   | 212    | 0: ql [128], 128: qh [64], 192: scales i8 [16], 208: d f16, 210: pad   |
//! | IQ4_NL | 32    | 20     | 0: d f16, 2: pad, 4: qs [16]                                           |
//! | IQ4_XS | 256   | 136    | 0: d f16, 2: scales_h u16, 4: scales_l [4], 8: qs [128]                |
//!
//! # Values
//!
//! Every type splits a block into sub-blocks of `SUB` elements (16 or 32) and computes, in
//! f32, with each product and difference rounded separately (no fused multiply-add):
//!
//! ```text
//! x[j] = dl * q[j] - ml        (dl, ml) = the scales of sub-block j / SUB, q[j] an integer
//! ```
//!
//! `dl` and `ml` are themselves single f32 products (`d * sc`, `dmin * m`) or plain f16 values,
//! as each type's file documents; types without a minimum have `ml = 0` (and `x - 0` is `x`,
//! so a kernel may skip the subtraction). This reproduces llama.cpp's dequantizer bit for
//! bit: the known-answer tests compare against `gguf.quants.dequantize`.

use super::{iq4, kquants, q5};
use crate::dtype::{BlockLayout, DType};
use half::f16;

/// One GGUF block type's decoder: the scales of a sub-block and the integer level of an
/// element, from a block in tandem's padded layout.
pub(crate) trait Format {
    const ELEMS: usize;
    /// Elements sharing one (dl, ml).
    const SUB: usize;
    /// (dl, ml) of sub-block `s`.
    fn scales(blk: &[u8], s: usize) -> (f32, f32);
    /// The integer level of element `j` (exact in f32).
    fn level(blk: &[u8], j: usize) -> i32;
    /// Every level of the block as f32 (exact), `out[j] = level(blk, j)`; types on hot
    /// paths override it with loops shaped like their packing (the fixtures test both
    /// against llama.cpp).
    #[inline(always)]
    fn levels(blk: &[u8], out: &mut [f32]) {
        for (j, o) in out[..Self::ELEMS].iter_mut().enumerate() {
            *o = Self::level(blk, j) as f32;
        }
    }
}

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Element `j` of a block, as every kernel must compute it.
#[inline(always)]
fn value<F: Format>(blk: &[u8], j: usize) -> f32 {
    let (dl, ml) = F::scales(blk, j / F::SUB);
    dl * F::level(blk, j) as f32 - ml
}

/// The whole block into `out[..F::ELEMS]`: `value` for every element, scales once per
/// sub-block.
#[inline(always)]
fn decode<F: Format>(blk: &[u8], out: &mut [f32]) {
    let out = &mut out[..F::ELEMS];
    // Levels first, in place (integers, exact in f32), then each sub-block's affine map.
    F::levels(blk, out);
    for (s, o) in out.chunks_exact_mut(F::SUB).enumerate() {
        let (dl, ml) = F::scales(blk, s);
        for q in o {
            *q = dl * *q - ml;
        }
    }
}

macro_rules! dispatch {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::Q5_0 => $f::<q5::Q5_0>($($arg),*),
            DType::Q5_1 => $f::<q5::Q5_1>($($arg),*),
            DType::Q2_K => $f::<kquants::Q2K>($($arg),*),
            DType::Q3_K => $f::<kquants::Q3K>($($arg),*),
            DType::Q4_K => $f::<kquants::Q4K>($($arg),*),
            DType::Q5_K => $f::<kquants::Q5K>($($arg),*),
            DType::Q6_K => $f::<kquants::Q6K>($($arg),*),
            DType::IQ4_NL => $f::<iq4::IQ4NL>($($arg),*),
            DType::IQ4_XS => $f::<iq4::IQ4XS>($($arg),*),
            d => unreachable!("{d} is not a GGUF block type"),
        }
    };
}

/// Read-only view of a tensor of a GGUF block type in tandem's layout.
#[derive(Clone, Copy)]
pub struct BlockView<'a> {
    pub dtype: DType,
    pub layout: BlockLayout,
    /// Whole blocks, `layout.stride` bytes each.
    pub bytes: &'a [u8],
}

impl<'a> BlockView<'a> {
    /// `bytes` must hold `dtype.storage_bytes(numel)` bytes (more is ignored). Panics if
    /// `dtype` is not a block type or the bytes are short: backends allocate them that size.
    pub fn new(dtype: DType, numel: usize, bytes: &'a [u8]) -> Self {
        let layout = dtype.block_layout().expect("a GGUF block type");
        let len = dtype.storage_bytes(numel);
        BlockView { dtype, layout, bytes: &bytes[..len] }
    }

    pub fn blocks(&self) -> usize {
        self.bytes.len() / self.layout.stride
    }

    /// The bytes of block `b`.
    #[inline(always)]
    pub fn block(&self, b: usize) -> &'a [u8] {
        let s = self.layout.stride;
        &self.bytes[b * s..(b + 1) * s]
    }

    /// The value of flat element `e`, exactly as every kernel must compute it.
    #[inline]
    pub fn get(&self, e: usize) -> f32 {
        let (b, j) = (e / self.layout.elems, e % self.layout.elems);
        let blk = self.block(b);
        dispatch!(self.dtype, value(blk, j))
    }

    /// Block `b` whole into `out[..elems]`, bit-identical to [`BlockView::get`].
    #[inline(always)]
    pub fn decode_block(&self, b: usize, out: &mut [f32]) {
        let blk = self.block(b);
        dispatch!(self.dtype, decode(blk, out))
    }

    /// dst[i] = element start + i, for any `start` (rows may begin mid-block).
    pub fn decode_range(&self, start: usize, dst: &mut [f32]) {
        let n = self.layout.elems;
        let end = start + dst.len();
        let mut tmp = [0f32; 256];
        let mut e = start;
        while e < end {
            let b = e / n;
            let (lo, hi) = (b * n, ((b + 1) * n).min(end));
            if e == lo && hi == lo + n {
                self.decode_block(b, &mut dst[e - start..hi - start]);
            } else {
                self.decode_block(b, &mut tmp);
                dst[e - start..hi - start].copy_from_slice(&tmp[e - lo..hi - lo]);
            }
            e = hi;
        }
    }
}

/// Converts ggml blocks of `dtype` (`raw`, whole blocks) into tandem's padded layout in place:
/// the buffer grows to `blocks * stride` and blocks move up from the last one down, so the
/// data is never held twice. `None` if `raw` is not a whole number of blocks.
pub fn from_ggml(dtype: DType, mut raw: Vec<u8>) -> Option<Vec<u8>> {
    let l = dtype.block_layout()?;
    if !raw.len().is_multiple_of(l.ggml_bytes) {
        return None;
    }
    let blocks = raw.len() / l.ggml_bytes;
    if l.stride == l.ggml_bytes {
        return Some(raw);
    }
    let pad = l.stride - l.ggml_bytes;
    raw.try_reserve_exact(blocks * pad).ok()?;
    raw.resize(blocks * l.stride, 0);
    // Block b moves from b * ggml_bytes to b * stride >= that: last first, so no block is
    // overwritten before it moved. Within a block the tail after `pad_at` moves first.
    for b in (0..blocks).rev() {
        let (src, dst) = (b * l.ggml_bytes, b * l.stride);
        raw.copy_within(src + l.pad_at..src + l.ggml_bytes, dst + l.pad_at + pad);
        raw.copy_within(src..src + l.pad_at, dst);
        raw[dst + l.pad_at..dst + l.pad_at + pad].fill(0);
    }
    Some(raw)
}

/// The inverse of [`from_ggml`] for whole blocks (the GGUF writer's direction).
pub fn to_ggml(dtype: DType, bytes: &[u8], blocks: usize) -> Vec<u8> {
    let l = dtype.block_layout().expect("a GGUF block type");
    let pad = l.stride - l.ggml_bytes;
    let mut out = Vec::with_capacity(blocks * l.ggml_bytes);
    for blk in bytes.chunks_exact(l.stride).take(blocks) {
        out.extend_from_slice(&blk[..l.pad_at]);
        out.extend_from_slice(&blk[l.pad_at + pad..]);
    }
    out
}

/// Byte offsets of the f16 scale fields inside a tandem block of `dtype` (for tools that
/// write random blocks with sane scales: the conformance cases, synthetic weights).
pub fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q5_0 | DType::IQ4_NL | DType::IQ4_XS => &[0],
        DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::BLOCK_DTYPES;

    #[test]
    fn padding_round_trips_and_aligns() {
        for d in BLOCK_DTYPES {
            let l = d.block_layout().unwrap();
            assert_eq!(l.stride % 4, 0, "{d}");
            assert!(l.pad_at <= l.ggml_bytes && l.stride - l.ggml_bytes < 4, "{d}");
            let raw: Vec<u8> = (0..3 * l.ggml_bytes).map(|i| (i * 7 + 1) as u8).collect();
            let padded = from_ggml(d, raw.clone()).unwrap();
            assert_eq!(padded.len(), d.storage_bytes(3 * l.elems), "{d}");
            assert_eq!(to_ggml(d, &padded, 3), raw, "{d}");
            for b in 0..3 {
                let pad = &padded
                    [b * l.stride + l.pad_at..b * l.stride + l.pad_at + l.stride - l.ggml_bytes];
                assert!(pad.iter().all(|&x| x == 0), "{d}");
            }
            assert!(from_ggml(d, vec![0; l.ggml_bytes + 1]).is_none(), "{d}");
        }
    }

    #[test]
    fn decode_range_matches_get_across_block_edges() {
        for d in BLOCK_DTYPES {
            let l = d.block_layout().unwrap();
            let mut bytes: Vec<u8> = (0..2 * l.stride).map(|i| (i * 131 + 17) as u8).collect();
            for b in 0..2 {
                for &f in f16_fields(d) {
                    bytes[b * l.stride + f..b * l.stride + f + 2]
                        .copy_from_slice(&f16::from_f32(0.01 * (b + 1) as f32).to_le_bytes());
                }
            }
            let v = BlockView::new(d, 2 * l.elems, &bytes);
            let start = l.elems / 2 + 3;
            let mut dst = vec![0f32; l.elems + 5];
            v.decode_range(start, &mut dst);
            for (i, x) in dst.iter().enumerate() {
                assert_eq!(x.to_bits(), v.get(start + i).to_bits(), "{d} element {}", start + i);
            }
        }
    }
}
