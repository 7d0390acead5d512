//! The quantized KV cache: q8_0 and q4_0 blocks of 32 values with an f16 scale, in the split
//! layout of [`DType::quant_layout`] over a whole cache buffer ([num_blocks, block_size,
//! kv_heads, head_dim] elements): element e's code at byte e (q8_0, an i8) or in byte e / 2
//! (q4_0, the low nibble for even e, minus 8), its scale the (e / 32)-th f16 after the codes.
//! A cache row (one position, every KV head) is whole blocks, so writing a row touches no
//! other row's bytes. Every backend's kv_write stores what [`quantize_block`] computes, and
//! its attention reads `d * code` as [`QuantView::get`] does.
//!
//! The model stores K and V rotated ([`rotation`]): a head's few large channels would set
//! its blocks' scales and leave the others a handful of levels; an orthonormal Hadamard
//! rotation spreads them over the head first. Queries are rotated alike (dot products keep
//! their values) and the attention output back, as llama.cpp does for its quantized caches.

use half::f16;

use crate::dtype::{DType, QBLOCK};

/// The quantized KV dtypes (f32 and f16 are the float ones).
pub const KV_QUANT: [DType; 2] = [DType::Q8_0, DType::Q4_0];

/// Every KV dtype, in the order lists of them are given.
pub const KV_DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::Q8_0, DType::Q4_0];

/// The dtypes of a cache's keys and values. Keys feed every score and so the softmax's
/// choice; values only average into the output, so they may be coarser (`--k-dtype f16
/// --v-dtype q4_0`). The pairs every backend runs are [`KV_PAIRS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvDtypes {
    pub k: DType,
    pub v: DType,
}

/// The K/V dtype pairs: each KV dtype for both, and values coarser than keys.
pub const KV_PAIRS: [KvDtypes; 7] = [
    KvDtypes::same(DType::F32),
    KvDtypes::same(DType::F16),
    KvDtypes::same(DType::Q8_0),
    KvDtypes::same(DType::Q4_0),
    KvDtypes { k: DType::F16, v: DType::Q8_0 },
    KvDtypes { k: DType::F16, v: DType::Q4_0 },
    KvDtypes { k: DType::Q8_0, v: DType::Q4_0 },
];

impl KvDtypes {
    pub const fn same(d: DType) -> Self {
        KvDtypes { k: d, v: d }
    }

    /// Bytes of one position's K and V rows of `row` values each.
    pub fn row_bytes(self, row: usize) -> usize {
        row_bytes(self.k, row) + row_bytes(self.v, row)
    }

    /// Whether either side is quantized.
    pub fn any_quant(self) -> bool {
        KV_QUANT.contains(&self.k) || KV_QUANT.contains(&self.v)
    }
}

impl From<DType> for KvDtypes {
    fn from(d: DType) -> Self {
        KvDtypes::same(d)
    }
}

/// One name for a single dtype ("q8_0"), "K/V" for a pair ("f16/q4_0").
impl std::fmt::Display for KvDtypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.k == self.v {
            write!(f, "{}", self.k)
        } else {
            write!(f, "{}/{}", self.k, self.v)
        }
    }
}

/// Whether a cache row of `row` elements can be stored in `dtype`: any row for the float
/// types, whole blocks of 32 for the quantized ones.
pub fn row_fits(dtype: DType, row: usize) -> bool {
    !KV_QUANT.contains(&dtype) || row.is_multiple_of(QBLOCK)
}

/// The size of the Hadamard rotation a `dtype` cache stores K and V under (see the module), for
/// heads of `head_dim` values: the largest power of two dividing it; none for f32 and f16.
pub fn rotation(dtype: DType, head_dim: usize) -> Option<usize> {
    KV_QUANT.contains(&dtype).then(|| 1 << head_dim.trailing_zeros()).filter(|&s| s > 1)
}

/// Bytes of one cache row of `row` values in `dtype` (the quantized types' 32-value blocks
/// with their f16 scales: 34 bytes for q8_0, 18 for q4_0).
pub fn row_bytes(dtype: DType, row: usize) -> usize {
    match dtype {
        DType::Q8_0 => row / QBLOCK * 34,
        DType::Q4_0 => row / QBLOCK * 18,
        DType::F16 => row * 2,
        _ => row * 4,
    }
}

/// One block of `x` (at most 32 values, missing ones zero) as `dtype`'s codes (q8_0: the i8's
/// bytes; q4_0: the nibble values 0..=15, one per byte) and its scale d, rounded as ggml does:
/// q8_0 d = absmax / 127, codes round(x / d) (half away from zero); q4_0 d = -m / 8 for m
/// the value of largest magnitude, codes trunc(x / d + 8.5) clamped to 15. Both multiply by
/// the f32 reciprocal of d. A block holding a NaN or an infinity gets a NaN scale and zero
/// codes: it reads back as NaN throughout, never as finite numbers that hide the overflow.
pub fn quantize_block(dtype: DType, x: &[f32], codes: &mut [u8; QBLOCK]) -> f16 {
    if x.iter().any(|v| !v.is_finite()) {
        codes.fill(if dtype == DType::Q4_0 { 8 } else { 0 });
        return f16::NAN;
    }
    match dtype {
        DType::Q8_0 => {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            codes.fill(0);
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = ((v * id).round().clamp(-127.0, 127.0) as i8) as u8;
            }
            f16::from_f32(d)
        }
        DType::Q4_0 => {
            // The signed extreme mapped to -8 keeps all 16 levels in use (as ggml does).
            let m = x.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
            let d = m / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            codes.fill(8);
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = ((v * id + 8.5) as i32).clamp(0, 15) as u8;
            }
            f16::from_f32(d)
        }
        d => panic!("quantize_block: {d} is not a 32-value block type"),
    }
}

/// Stores rows of `src` ([n, row]) into cache rows `slots` of a `dtype` cache of `numel`
/// elements (`bytes`, 4-byte aligned). `row` is whole blocks; slots are checked rows.
pub fn write_rows(
    bytes: &mut [u8],
    dtype: DType,
    numel: usize,
    src: &[f32],
    slots: &[u32],
    row: usize,
) {
    let l = dtype.quant_layout(numel).expect("a quantized KV dtype");
    debug_assert!(row.is_multiple_of(QBLOCK));
    let (qs, scales) = bytes.split_at_mut(l.d_offset);
    let mut codes = [0u8; QBLOCK];
    for (x, &s) in src.chunks_exact(row).zip(slots) {
        let e0 = s as usize * row;
        for (b, block) in x.chunks_exact(QBLOCK).enumerate() {
            let e = e0 + b * QBLOCK;
            let d = quantize_block(dtype, block, &mut codes);
            scales[e / QBLOCK * 2..][..2].copy_from_slice(&d.to_le_bytes());
            match dtype {
                DType::Q8_0 => qs[e..e + QBLOCK].copy_from_slice(&codes),
                _ => {
                    for (o, pair) in
                        qs[e / 2..e / 2 + QBLOCK / 2].iter_mut().zip(codes.chunks_exact(2))
                    {
                        *o = pair[0] | pair[1] << 4;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::QuantView;

    #[test]
    fn rows_round_trip_within_a_step_and_touch_only_their_blocks() {
        let (row, rows) = (64, 5);
        for dtype in KV_QUANT {
            let numel = row * rows;
            let mut bytes = vec![0xFFu8; dtype.storage_bytes(numel)];
            let src: Vec<f32> =
                (0..2 * row).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            write_rows(&mut bytes, dtype, numel, &src, &[3, 1], row);
            let v = QuantView::new(dtype, numel, &bytes);
            for (r, slot) in [(0, 3), (1, 1)] {
                for b in 0..row / QBLOCK {
                    let x = &src[r * row + b * QBLOCK..][..QBLOCK];
                    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                    // Half a step; q4_0's one extreme is clipped a whole step (16 -> 15).
                    let err = if dtype == DType::Q8_0 { amax / 254.0 } else { amax / 8.0 };
                    for (i, &want) in x.iter().enumerate() {
                        let got = v.get(slot * row + b * QBLOCK + i);
                        assert!((got - want).abs() <= err * 1.001, "{dtype} {want} {got}");
                    }
                }
            }
            // Rows 0, 2 and 4 keep their poison: NaN scales.
            for slot in [0, 2, 4] {
                assert!(v.get(slot * row).is_nan(), "{dtype}: row {slot} was written");
            }
        }
    }

    #[test]
    fn a_non_finite_value_makes_its_block_nan_and_no_other() {
        for dtype in KV_QUANT {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut src = vec![0.5f32; 64];
                src[40] = bad;
                let mut bytes = vec![0u8; dtype.storage_bytes(64)];
                write_rows(&mut bytes, dtype, 64, &src, &[0], 64);
                let v = QuantView::new(dtype, 64, &bytes);
                assert!((0..32).all(|e| (v.get(e) - 0.5).abs() < 0.05), "{dtype} {bad}");
                assert!((32..64).all(|e| v.get(e).is_nan()), "{dtype} {bad}");
            }
        }
    }
}
