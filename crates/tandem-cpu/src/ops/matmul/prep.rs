//! Activation preparation: each decode row's input rearranged once for the quantized
//! kernels that read it ([`XPrep`]), as the kernel table's [`Split`] says.

use tandem_core::{DType, QBLOCK};

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use super::decode_simd128;
use crate::table::Weight;

/// What a kernel table's Q8_0 / Q4 decode kernels read of the activation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Split {
    /// Floats: Q4's even/odd copies and block sums (the portable loops; Q8_0 reads x itself).
    Floats,
    /// Each block as 16-bit integers and a scale ([`int_split`]), Q4's in `q4` order, by
    /// pairs of blocks with `pairs` (AVX-512); Q4 also reads the block sums.
    Ints { q4: Order, pairs: bool },
}

/// The activation row rearranged for quantized dot products.
pub(crate) struct XPrep {
    /// x[2j] and x[2j + 1]: the low and high nibble partners of Q4 byte j. [k / 2] each.
    pub even: Vec<f32>,
    pub odd: Vec<f32>,
    /// Sum of x over each block of 32. [k / 32, zero padded to a multiple of 8].
    pub sums: Vec<f32>,
    /// Each block of 32 as 16-bit integers, for integer dot products with the weights whose
    /// products and sums are exact: x ~ s * hi, s = max |x| / 32767 of the block (`scales`),
    /// each element within 2^-16 of its block's largest (the 16-bit activation class). 32
    /// values a block, in the kernel's `Order` (AVX-512: by pairs of blocks, see `int_split`).
    pub ints: Vec<i16>,
    /// s of each block. [k / 32, zero padded to a multiple of 8] (as `sums`).
    pub scales: Vec<f32>,
}

impl XPrep {
    /// What the one-token kernel for `w` reads (only Q8_0 / Q4 weights read a split).
    pub fn for_weight(w: Weight, x: &[f32], split: Split) -> Self {
        match w {
            Weight::Q(q) if x.len().is_multiple_of(QBLOCK) => XPrep::new(x, q.dtype, split),
            _ => XPrep::empty(),
        }
    }

    pub fn empty() -> Self {
        XPrep { even: vec![], odd: vec![], sums: vec![], ints: vec![], scales: vec![] }
    }

    /// What kernels reading `split` need for `dtype` (Q8_0, Q4_0 or Q4_1).
    pub fn new(x: &[f32], dtype: DType, split: Split) -> Self {
        let mut p = XPrep::empty();
        p.fill(x, dtype, split);
        p
    }

    /// [`XPrep::new`] in this one's buffers (their capacity kept: see [`with_prep`]).
    fn fill(&mut self, x: &[f32], dtype: DType, split: Split) {
        let q8 = dtype == DType::Q8_0;
        self.even.clear();
        self.odd.clear();
        self.sums.clear();
        self.ints.clear();
        self.scales.clear();
        if split == Split::Floats && !q8 {
            self.even.extend(x.iter().step_by(2));
            self.odd.extend(x.iter().skip(1).step_by(2));
        }
        let nb = x.len() / QBLOCK;
        // Zero padded to whole groups of 8 blocks, which the AVX2 kernel loads at once.
        if !q8 {
            self.sums.extend(x.chunks_exact(QBLOCK).map(|b| b.iter().sum::<f32>()));
            self.sums.resize(nb.next_multiple_of(8), 0.0);
        }
        if let Split::Ints { q4, pairs } = split {
            // hi alone, the 16-bit class; Q8_0's bytes are in element order.
            let order = if q8 { Order::Natural } else { q4 };
            int_split_into(x, order, pairs, false, &mut self.ints, &mut self.scales);
        }
    }
}

thread_local! {
    /// Activation splits' buffers, kept between calls: a decode step makes one per matmul
    /// input, and their allocations were most of a step's.
    static PREPS: std::cell::RefCell<Vec<XPrep>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with the split of x for `dtype` ([`XPrep::new`]) made in buffers this thread
/// reuses, so a one-token step allocates none for it.
pub(crate) fn with_prep<R>(
    x: &[f32],
    dtype: DType,
    split: Split,
    f: impl FnOnce(&XPrep) -> R,
) -> R {
    let mut p = PREPS.with_borrow_mut(|v| v.pop()).unwrap_or_else(XPrep::empty);
    p.fill(x, dtype, split);
    let r = f(&p);
    PREPS.with_borrow_mut(|v| v.push(p));
    r
}

/// Where a block's 32 activation values sit, to meet the weights as the kernel unpacks them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Order {
    /// Element order: Q8_0's bytes and the block types' kernels.
    Natural,
    /// Even elements, then odd: Q4's low then high nibbles of its 16 bytes (x86).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Nibbles,
    /// Element i at (i % 4) * 8 + i / 4: Q4's bytes read as eight 16-bit lanes, whose four
    /// nibbles are elements 4l..4l + 4 of lane l (wasm, where a 16-bit shift and mask take a
    /// nibble without widening bytes).
    #[cfg_attr(not(all(target_arch = "wasm32", target_feature = "simd128")), allow(dead_code))]
    Quads,
}

/// [`XPrep::ints`] and [`XPrep::scales`] of x (the integer kernels read them).
/// Per block of 32, the 32 hi then (with `lo`) the 32 lo, in `order`. Without `lo` (the 16-bit class: every decode
/// and wasm kernel, Q8_0's prompt rows) a block is its 32 hi alone; the K-quants' rows take
/// both. A block's values are parts of 16; with `pairs` (the
/// AVX-512 kernel's layout) blocks 2p and 2p + 1 interleave by part (block 2p's 16 values,
/// then block 2p + 1's), so one 512-bit load takes a part of both (zeros after a last,
/// unpaired block).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn int_split(x: &[f32], order: Order, pairs: bool, lo: bool) -> (Vec<i16>, Vec<f32>) {
    let (mut ints, mut scales) = (Vec::new(), Vec::new());
    int_split_into(x, order, pairs, lo, &mut ints, &mut scales);
    (ints, scales)
}

/// [`int_split`] into `ints` and `scales` (replacing their contents, keeping their capacity).
pub(crate) fn int_split_into(
    x: &[f32],
    order: Order,
    pairs: bool,
    lo: bool,
    ints: &mut Vec<i16>,
    scales: &mut Vec<f32>,
) {
    match lo {
        true => split::<true>(x, order, pairs, ints, scales),
        false => split::<false>(x, order, pairs, ints, scales),
    }
}

/// [`int_split`], with or without the lo half.
fn split<const LO: bool>(
    x: &[f32],
    order: Order,
    pairs: bool,
    ints: &mut Vec<i16>,
    scales: &mut Vec<f32>,
) {
    let nb = x.len() / QBLOCK;
    let per = if LO { 64 } else { 32 };
    let len = if pairs { nb.next_multiple_of(2) * per } else { nb * per };
    // Zeros: a zero or non-finite block is skipped below.
    ints.clear();
    ints.resize(len, 0);
    scales.clear();
    scales.resize(nb.next_multiple_of(8), 0.0);
    // Where element j's value goes within its block's 32.
    let at: [usize; QBLOCK] = std::array::from_fn(|j| match order {
        Order::Natural => j,
        Order::Nibbles => (j % 2) * 16 + j / 2,
        Order::Quads => (j % 4) * 8 + j / 4,
    });
    for (b, (xb, s)) in x.chunks_exact(QBLOCK).zip(scales.iter_mut()).enumerate() {
        let amax = block_amax(xb);
        if !(amax > 0.0 && amax.is_finite()) {
            // Zero blocks stay zero; a non-finite one gives NaN through its scale, as the
            // f32 product would.
            *s = if amax == 0.0 { 0.0 } else { f32::NAN };
            continue;
        }
        // A normal scale even for a block of subnormals (whose f32 products are subnormal,
        // and as coarse, in the reference too): it then uses fewer of hi's bits. 1 / s, not
        // 32767 / amax, which overflows f32 for a subnormal amax.
        *s = (amax / 32767.0).max(f32::MIN_POSITIVE);
        // In f32 lanes the compiler vectorizes (per element in f64, the split was a tenth of a
        // Q8_0 prefill): 1 / s <= 2^126 is finite and |r| <= 32767, so r is within 1.5 ulps
        // of x / s, and r - hi is exact.
        let inv = (1.0 / *s as f64) as f32;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if !LO && !pairs {
            // The same values in simd128 (rustc leaves the loop below scalar in wasm).
            ints[b * 32..b * 32 + 32].copy_from_slice(&decode_simd128::split_block(xb, inv, order));
            continue;
        }
        let (mut his, mut los) = ([0i32; QBLOCK], [0i32; QBLOCK]);
        for ((h, l), &v) in his.iter_mut().zip(&mut los).zip(xb) {
            let r = (v * inv).clamp(-32767.0, 32767.0);
            // A NaN element (amax skips it) counts 0, as a saturating cast would.
            let r = if r.is_nan() { 0.0 } else { r };
            let hi = round_even(r);
            // SAFETY: integers in -32767..=32767 and -16384..=16384 (a plain `as` saturates,
            // which keeps the loop scalar).
            unsafe {
                *h = hi.to_int_unchecked::<i32>();
                if LO {
                    *l = round_even((r - hi) * 32768.0).to_int_unchecked::<i32>();
                }
            }
        }
        // The block in its order (hi, then lo), then where the layout puts it.
        let mut blk = [0i16; 64];
        for j in 0..QBLOCK {
            blk[at[j] % 32] = his[j] as i16;
            if LO {
                blk[32 + at[j] % 32] = los[j] as i16;
            }
        }
        match pairs {
            // Blocks 2p and 2p + 1 interleave by parts of 16.
            true => {
                for (part, vals) in blk[..per].chunks_exact(16).enumerate() {
                    let at = (b / 2) * 2 * per + part * 32 + (b % 2) * 16;
                    ints[at..at + 16].copy_from_slice(vals);
                }
            }
            false => ints[b * per..(b + 1) * per].copy_from_slice(&blk[..per]),
        }
    }
}
/// max |x| over a block, NaN elements skipped (as `f32::max` does): in 8 lanes of compares the
/// compiler vectorizes (`f32::max` is a libm call in wasm, whose own max keeps NaN, and was a
/// fifth of the split there); the maximum is the same in any order.
fn block_amax(xb: &[f32]) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if xb.len() == QBLOCK {
        // (rustc leaves the loop below scalar in wasm)
        return decode_simd128::block_amax(xb);
    }
    let mut m = [0f32; 8];
    for c in xb.chunks_exact(8) {
        for (mi, v) in m.iter_mut().zip(c) {
            let a = v.abs();
            *mi = if a > *mi { a } else { *mi };
        }
    }
    m.iter().fold(0f32, |a, &v| if v > a { v } else { a })
}

/// v rounded to the nearest integer (ties to even) for |v| < 2^22: adding 1.5 * 2^23 leaves
/// no fraction bits, so the addition rounds. `f32::round` is a library call on baseline
/// x86-64 (no SSE4.1), once per element of every decode matmul's input.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12582912.0;
    (v + MAGIC) - MAGIC
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The 16-bit split carries each block to within 2^-30 of its largest magnitude (about 2^-6
    /// of an f32 ulp of that element), whatever the spread of magnitudes in the block (blocks
    /// of subnormals to within 2^-142, below f32's own subnormal spacing), and zero and
    /// non-finite blocks come out as zero and NaN.
    #[test]
    fn int_split_reconstructs_the_activation() {
        let mut x: Vec<f32> = (0..256).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1e-3).collect();
        x[3] = 250.0; // an outlier channel
        x[40] = -1e-9;
        x[64..96].fill(0.0);
        // A block of subnormals: still carried to within 2^-30 of its largest.
        for (i, v) in x[128..160].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 1e-40;
        }
        let (ints, scales) = int_split(&x, Order::Nibbles, false, true);
        for (b, xb) in x.chunks_exact(QBLOCK).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let ints = &ints[b * 64..(b + 1) * 64];
            for (j, &v) in xb.iter().enumerate() {
                let at = (j % 2) * 16 + j / 2;
                let back = scales[b] as f64 * (ints[at] as f64 + ints[32 + at] as f64 / 32768.0);
                let err = (back - v as f64).abs();
                let bound = amax as f64 * 2f64.powi(-30)
                    + (v.abs() as f64) * 2f64.powi(-23)
                    + 2f64.powi(-142);
                assert!(err <= bound, "block {b} element {j}: {v} -> {back}");
            }
        }
        assert_eq!(scales[2], 0.0);
        // hi alone (the 16-bit class): within half a step (s / 2, amax / 65534 for a normal
        // block) of each element, element order, 32 a block; the pairs layout holds the same
        // values.
        let (hi, s16) = int_split(&x, Order::Natural, false, false);
        assert_eq!(s16, scales);
        for (b, xb) in x.chunks_exact(QBLOCK).enumerate() {
            for (j, &v) in xb.iter().enumerate() {
                let back = s16[b] as f64 * hi[b * 32 + j] as f64;
                let bound = s16[b] as f64 / 2.0 * (1.0 + 1e-6) + (v.abs() as f64) * 2f64.powi(-22);
                assert!(
                    (back - v as f64).abs() <= bound,
                    "hi alone, block {b} element {j}: {v} -> {back}"
                );
            }
        }
        let (paired, _) = int_split(&x, Order::Natural, true, false);
        for (b, i) in (0..x.len() / QBLOCK).flat_map(|b| (0..QBLOCK).map(move |i| (b, i))) {
            assert_eq!(
                paired[(b / 2) * 64 + (i / 16) * 32 + (b % 2) * 16 + i % 16],
                hi[b * 32 + i]
            );
        }
        // wasm's Q4 order: the same values, element i of a block at (i % 4) * 8 + i / 4.
        let (quads, _) = int_split(&x, Order::Quads, false, false);
        for (b, i) in (0..x.len() / QBLOCK).flat_map(|b| (0..QBLOCK).map(move |i| (b, i))) {
            assert_eq!(quads[b * 32 + (i % 4) * 8 + i / 4], hi[b * 32 + i]);
        }
        let mut bad = x.clone();
        bad[5] = f32::INFINITY;
        assert!(int_split(&bad, Order::Nibbles, false, true).1[0].is_nan());
    }
}
