//! The quantized KV cache. A cache buffer holds [num_blocks, block_size, kv_heads, head_dim]
//! elements (a cache row is one position's every KV head), stored by type:
//!
//! - q8_0 and q4_0: blocks of 32 values with an f16 scale, in the split layout of
//!   [`DType::quant_layout`] over the whole buffer: element e's code at byte e (q8_0, an i8)
//!   or in byte e / 2 (q4_0, the low nibble for even e, minus 8), its scale the (e / 32)-th f16
//!   after the codes. A cache row is whole blocks, so writing a row touches no other row's
//!   bytes.
//! - fp8: an e4m3 code per element at byte e, then from byte [`fp8_scales`] an f32 scale per
//!   head vector, element e's the (e / head_dim)-th: each position's head is scaled to its own
//!   largest magnitude (448, e4m3's largest finite value), so no value saturates and no
//!   calibration is needed. The buffer's element count is its bytes ([`cache_numel`]).
//!
//! Every backend's kv_write stores what [`quantize_block`] / [`quantize_head`] compute, and its
//! attention reads `d * code` as [`QuantView::get`](crate::QuantView::get) / [`Fp8View::get`]
//! do.
//!
//! The model stores K and V rotated ([`rotation`]): a head's few large channels would set
//! its blocks' scales and leave the others a handful of levels; an orthonormal Hadamard
//! rotation spreads them over the head first. Queries are rotated alike (dot products keep
//! their values) and the attention output back, as llama.cpp does for its quantized caches.
//! fp8 too: its three mantissa bits make a large value's error large, and the rotation makes
//! the largest smaller (SmolLM2, ctx 512: +0.07 perplexity over f16 rotated, +0.22 not).

use float8::F8E4M3;
use half::f16;

use crate::dtype::{DType, QBLOCK};

/// The quantized KV dtypes (f32 and f16 are the float ones).
pub const KV_QUANT: [DType; 3] = [DType::Q8_0, DType::Q4_0, DType::F8E4M3];

/// The KV dtypes stored in blocks of 32 values.
pub const KV_BLOCKS: [DType; 2] = [DType::Q8_0, DType::Q4_0];

/// Every KV dtype, in the order lists of them are given.
pub const KV_DTYPES: [DType; 5] = [DType::F32, DType::F16, DType::Q8_0, DType::Q4_0, DType::F8E4M3];

/// The dtypes of a cache's keys and values. Keys feed every score and so the softmax's
/// choice; values only average into the output, so they may be coarser (`--k-dtype f16
/// --v-dtype q4_0`). The pairs every backend runs are [`KV_PAIRS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvDtypes {
    pub k: DType,
    pub v: DType,
}

/// The K/V dtype pairs: each KV dtype for both, and values coarser than keys.
pub const KV_PAIRS: [KvDtypes; 8] = [
    KvDtypes::same(DType::F32),
    KvDtypes::same(DType::F16),
    KvDtypes::same(DType::Q8_0),
    KvDtypes::same(DType::Q4_0),
    KvDtypes::same(DType::F8E4M3),
    KvDtypes { k: DType::F16, v: DType::Q8_0 },
    KvDtypes { k: DType::F16, v: DType::Q4_0 },
    KvDtypes { k: DType::Q8_0, v: DType::Q4_0 },
];

impl KvDtypes {
    pub const fn same(d: DType) -> Self {
        KvDtypes { k: d, v: d }
    }

    /// Bytes of one position's K and V rows of `kv_heads` heads of `head_dim` values.
    pub fn row_bytes(self, kv_heads: usize, head_dim: usize) -> usize {
        row_bytes(self.k, kv_heads, head_dim) + row_bytes(self.v, kv_heads, head_dim)
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

/// The element count of a `dtype` cache buffer of `rows` positions: its values, and for fp8
/// each head's 4 scale bytes too (an fp8 buffer counts bytes).
pub fn cache_numel(dtype: DType, rows: usize, kv_heads: usize, head_dim: usize) -> usize {
    rows * kv_heads * (head_dim + if dtype == DType::F8E4M3 { 4 } else { 0 })
}

/// The positions a `dtype` cache buffer of `numel` elements holds ([`cache_numel`]'s inverse).
pub fn cache_rows(dtype: DType, numel: usize, kv_heads: usize, head_dim: usize) -> usize {
    numel.checked_div(cache_numel(dtype, 1, kv_heads, head_dim)).unwrap_or(0)
}

/// The byte offset of an fp8 cache's scales (right after its codes; 4-aligned as fp8 heads
/// are multiples of 4 values).
pub fn fp8_scales(numel: usize, kv_heads: usize, head_dim: usize) -> usize {
    cache_rows(DType::F8E4M3, numel, kv_heads, head_dim) * kv_heads * head_dim
}

/// Whether a cache row of `row` elements can be stored in `dtype`: whole blocks of 32 for
/// q8_0 and q4_0, any row for the others (fp8 heads have their own rule, a multiple of 4).
pub fn row_fits(dtype: DType, row: usize) -> bool {
    !KV_BLOCKS.contains(&dtype) || row.is_multiple_of(QBLOCK)
}

/// The size of the Hadamard rotation a `dtype` cache stores K and V under (see the module), for
/// heads of `head_dim` values: the largest power of two dividing it; none for f32 and f16.
pub fn rotation(dtype: DType, head_dim: usize) -> Option<usize> {
    KV_QUANT.contains(&dtype).then(|| 1 << head_dim.trailing_zeros()).filter(|&s| s > 1)
}

/// Bytes of one cache row (a position's `kv_heads` heads of `head_dim` values) in `dtype`:
/// q8_0 and q4_0 blocks of 32 with their f16 scales (34 and 18 bytes), fp8 a byte a value
/// and 4 a head.
pub fn row_bytes(dtype: DType, kv_heads: usize, head_dim: usize) -> usize {
    let row = kv_heads * head_dim;
    match dtype {
        DType::Q8_0 => row / QBLOCK * 34,
        DType::Q4_0 => row / QBLOCK * 18,
        DType::F8E4M3 => cache_numel(dtype, 1, kv_heads, head_dim),
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

/// e4m3's largest finite value: a head's largest magnitude maps to it.
pub const E4M3_MAX: f32 = 448.0;

/// `x` as an e4m3 code: round to nearest, ties to even, saturating at +-448, as the `float8`
/// crate (and CUDA's `__nv_cvt_float_to_fp8` with `__NV_SATFINITE`) converts.
#[inline]
pub fn e4m3(x: f32) -> u8 {
    F8E4M3::from_f32(x).to_bits()
}

/// The value of each e4m3 code (0x7F and 0xFF are NaN; [`quantize_head`] never writes them).
pub const E4M3_VALUES: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = F8E4M3::from_bits(i as u8).to_f32();
        i += 1;
    }
    t
};

/// The value of an e4m3 code ([`E4M3_VALUES`]).
#[inline(always)]
pub fn e4m3_value(code: u8) -> f32 {
    E4M3_VALUES[code as usize]
}

/// One head's values `x` as e4m3 codes into `codes` and their scale s = absmax / 448, codes
/// e4m3(x * (1 / s)) (a multiply by the f32 reciprocal, as the kernels do). A head holding a
/// NaN or an infinity gets a NaN scale and zero codes: it reads back as NaN throughout. A head
/// so small (below ~1e-36) that 1 / s overflows gets zero codes instead: 0 * inf would be NaN.
pub fn quantize_head(x: &[f32], codes: &mut [u8]) -> f32 {
    if x.iter().any(|v| !v.is_finite()) {
        codes.fill(0);
        return f32::NAN;
    }
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let s = amax / E4M3_MAX;
    let inv = Some(1.0 / s).filter(|i| i.is_finite()).unwrap_or(0.0);
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = e4m3(v * inv);
    }
    s
}

/// Stores rows of `src` ([n, kv_heads * head_dim]) into cache rows `slots` of a quantized
/// `dtype` cache of `numel` elements (`bytes`, 4-byte aligned). Rows of q8_0 and q4_0 are
/// whole blocks; slots are checked rows.
pub fn write_rows(
    bytes: &mut [u8],
    dtype: DType,
    numel: usize,
    src: &[f32],
    slots: &[u32],
    kv_heads: usize,
    head_dim: usize,
) {
    let row = kv_heads * head_dim;
    if dtype == DType::F8E4M3 {
        let (codes, scales) = bytes.split_at_mut(fp8_scales(numel, kv_heads, head_dim));
        for (x, &s) in src.chunks_exact(row).zip(slots) {
            let e0 = s as usize * row;
            for (h, head) in x.chunks_exact(head_dim).enumerate() {
                let e = e0 + h * head_dim;
                let d = quantize_head(head, &mut codes[e..e + head_dim]);
                scales[e / head_dim * 4..][..4].copy_from_slice(&d.to_le_bytes());
            }
        }
        return;
    }
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

/// An fp8 cache's codes and per-head scales (see the module).
#[derive(Clone, Copy)]
pub struct Fp8View<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub head_dim: usize,
}

impl<'a> Fp8View<'a> {
    /// Splits an fp8 cache buffer of `numel` elements (4-byte aligned, as backends allocate).
    pub fn new(bytes: &'a [u8], numel: usize, kv_heads: usize, head_dim: usize) -> Self {
        let at = fp8_scales(numel, kv_heads, head_dim);
        let heads = at / head_dim.max(1);
        let scales = bytemuck::cast_slice(&bytes[at..at + 4 * heads]);
        Fp8View { codes: &bytes[..at], scales, head_dim }
    }

    /// The value of element `e` (of the [rows, kv_heads, head_dim] values), exactly as every
    /// kernel must compute it.
    #[inline]
    pub fn get(&self, e: usize) -> f32 {
        self.scales[e / self.head_dim] * e4m3_value(self.codes[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::QuantView;

    #[test]
    fn rows_round_trip_within_a_step_and_touch_only_their_blocks() {
        let (row, rows) = (64, 5);
        for dtype in KV_BLOCKS {
            let numel = row * rows;
            let mut bytes = vec![0xFFu8; dtype.storage_bytes(numel)];
            let src: Vec<f32> =
                (0..2 * row).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            write_rows(&mut bytes, dtype, numel, &src, &[3, 1], 1, row);
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
        for dtype in KV_BLOCKS {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut src = vec![0.5f32; 64];
                src[40] = bad;
                let mut bytes = vec![0u8; dtype.storage_bytes(64)];
                write_rows(&mut bytes, dtype, 64, &src, &[0], 2, 32);
                let v = QuantView::new(dtype, 64, &bytes);
                assert!((0..32).all(|e| (v.get(e) - 0.5).abs() < 0.05), "{dtype} {bad}");
                assert!((32..64).all(|e| v.get(e).is_nan()), "{dtype} {bad}");
            }
        }
    }

    /// The bit arithmetic the WGSL and CUDA kv_write kernels use for e4m3 (they have no fp8
    /// conversion to call): for |y| <= 448 as the kernels meet it, the float8 crate's codes.
    fn kernel_e4m3(y: f32) -> u8 {
        let sign = ((y.to_bits() >> 24) & 0x80) as u8;
        let a = y.abs();
        let mag = if a < 1.0 / 64.0 {
            // Subnormals (and zero): steps of 2^-9, ties to even; 8 steps is the least normal.
            (a * 512.0).round_ties_even() as u32
        } else {
            let b = a.to_bits();
            let r = b + 0x7_FFFF + ((b >> 20) & 1);
            ((r >> 20) - (120 << 3)).min(0x7E)
        };
        sign | mag as u8
    }

    #[test]
    fn e4m3_codes_round_to_nearest_even_and_saturate() {
        assert_eq!(e4m3(448.0), 0x7E);
        assert_eq!(e4m3(1e9), 0x7E, "saturates, never NaN");
        assert_eq!(e4m3(-1e9), 0xFE);
        assert_eq!(e4m3(1.0), 0x38);
        assert_eq!(e4m3(1.0625), 0x38, "a tie goes to the even code");
        assert_eq!(e4m3(1.1875), 0x3A, "a tie goes to the even code");
        assert_eq!(e4m3(1.0 / 512.0), 0x01, "the least subnormal");
        assert_eq!(e4m3(1.0 / 1024.0), 0x00, "half the least subnormal ties to zero");
        for c in (0u8..=255).filter(|c| c & 0x7F != 0x7F) {
            let v = e4m3_value(c);
            assert_eq!(e4m3(v), if v == 0.0 { c & 0x80 } else { c }, "code {c:#x} = {v}");
        }
        // Every f32 on a dense sweep of the range the kernels see, and around each code.
        let mut ys: Vec<f32> = (-460_000..=460_000).map(|i| i as f32 / 1000.0).collect();
        for c in (0u8..=0x7E).map(e4m3_value) {
            for k in -3i32..=3 {
                let y = f32::from_bits((c.to_bits() as i32 + k).max(0) as u32);
                ys.extend([y, -y, y * 1.03125, y * 1.0625]);
            }
        }
        for y in ys.into_iter().filter(|y| y.abs() <= E4M3_MAX) {
            assert_eq!(kernel_e4m3(y), e4m3(y), "{y:e}");
        }
    }

    #[test]
    fn fp8_rows_round_trip_per_head_and_touch_only_their_heads() {
        let (kv_heads, hd, rows) = (3, 8, 4);
        let numel = cache_numel(DType::F8E4M3, rows, kv_heads, hd);
        assert_eq!(numel, rows * kv_heads * 12);
        let mut bytes = vec![0xFFu8; DType::F8E4M3.storage_bytes(numel)];
        let row = kv_heads * hd;
        let mut src: Vec<f32> =
            (0..2 * row).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        src[3] = 1e-4; // far below its head's largest: a subnormal code
        write_rows(&mut bytes, DType::F8E4M3, numel, &src, &[2, 0], kv_heads, hd);
        let v = Fp8View::new(&bytes, numel, kv_heads, hd);
        for (r, slot) in [(0, 2), (1, 0)] {
            for h in 0..kv_heads {
                let x = &src[r * row + h * hd..][..hd];
                let s = x.iter().fold(0f32, |a, v| a.max(v.abs())) / E4M3_MAX;
                assert_eq!(v.scales[slot * kv_heads + h], s);
                for (c, &want) in x.iter().enumerate() {
                    let got = v.get(slot * row + h * hd + c);
                    // Half a step: 2^-4 of the value for normal codes, s * 2^-10 below them.
                    let err = (want.abs() / 16.0).max(s / 1024.0);
                    assert!((got - want).abs() <= err * 1.001, "{want} {got}");
                }
            }
        }
        for slot in [1, 3] {
            assert!(v.scales[slot * kv_heads].is_nan(), "row {slot} was written");
        }
    }

    #[test]
    fn an_fp8_head_too_small_for_its_reciprocal_reads_back_as_zeros() {
        let mut x = [0f32; 8];
        x[2] = 1e-38;
        let mut codes = [0xAAu8; 8];
        let s = quantize_head(&x, &mut codes);
        assert!(codes.iter().all(|&c| c == 0) && s.is_finite(), "{codes:?} {s}");
    }

    #[test]
    fn a_non_finite_value_makes_its_fp8_head_nan_and_no_other() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let (kv_heads, hd) = (2, 8);
            let numel = cache_numel(DType::F8E4M3, 1, kv_heads, hd);
            let mut src = vec![0.5f32; 16];
            src[12] = bad;
            let mut bytes = vec![0u8; DType::F8E4M3.storage_bytes(numel)];
            write_rows(&mut bytes, DType::F8E4M3, numel, &src, &[0], kv_heads, hd);
            let v = Fp8View::new(&bytes, numel, kv_heads, hd);
            assert!((0..8).all(|e| v.get(e) == 0.5), "{bad}");
            assert!((8..16).all(|e| v.get(e).is_nan()), "{bad}");
        }
    }
}
