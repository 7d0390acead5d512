//! WebAssembly SIMD (simd128) rows of the decode matvec (n = 1, k % 32 == 0) for Q8_0, Q4_0
//! and Q4_1: the browser's CPU fallback, where these products are most of a decode step.
//!
//! The native kernels' integer method ([`super::decode_avx2`]) in 128-bit lanes, in the
//! 16-bit activation class: a block's weights as 16-bit integers multiplied with
//! `i32x4.dot_i16x8_s` (V8's one `pmaddwd` on x86) against the activation rounded to 16 bits
//! per block (`XPrep::ints` without its lo half: x ~ s * hi, s = max |x| / 32767 of the block,
//! so each element within 2^-16 of its block's largest): the 16-bit class keeps the
//! reference's greedy tokens (see `precision` in lib.rs for its conformance tolerance).
//!
//! Counted per block, since instructions are the limit: Q4's 16 bytes are read as eight 16-bit
//! lanes, each holding four nibbles (elements 4l..4l + 4), so a shift and a mask give a vector
//! of weights with no widening of bytes (the activation is laid out to match, `Order::Quads`);
//! Q8_0's 32 bytes are widened by `extend`s. Four blocks go at once: their lane-wise integer
//! sums are transposed into one vector of four block totals (exact integers; Q8_0's may round
//! once when converted above 2^24, as an f32 sum would), converted once and multiplied by the
//! four blocks' d * s, rather than a conversion and a scaled add per block. The four f16
//! scales convert together in integer and one exact float multiply (wasm has no f16
//! instruction), and the Q4 offset terms (m * sum(x), or -8 * d * sum(x), from the f32
//! activation's block sums) accumulate four blocks per vector. The batched rows
//! ([`quant_batch`]) run the same functions per token, so a token's result is the same bits
//! alone and inside a batch.

use core::arch::wasm32::*;

use half::f16;
use tandem_core::{DType, QuantView, QBLOCK};

use super::{Order, XPrep};

/// Blocks taken at once: their totals fill one i32x4, their scales one f32x4.
const G: usize = 4;

/// out[ri] = dot(row r0 + ri of w, x) for k = nb * 32 (the table's `quant_rows`), from the
/// activation's split `p`.
pub(super) fn rows(q: QuantView, p: &XPrep, nb: usize, r0: usize, out: &mut [f32]) {
    check(q, &[p], nb, r0 + out.len());
    for (ri, o) in out.iter_mut().enumerate() {
        // SAFETY: `check` keeps blocks b0..b0 + nb of the weights and blocks 0..nb of the
        // activation inside their slices.
        *o = unsafe {
            match q.finite_scales {
                true => row::<true>(q, p, (r0 + ri) * nb, nb),
                false => row::<false>(q, p, (r0 + ri) * nb, nb),
            }
        };
    }
}

/// The bounds every raw load below relies on: rows up to `rows_end` of `q` (k = nb * 32), and
/// the activations' split blocks 0..nb, scales and (Q4) block sums, the last two zero padded
/// to whole groups of G.
fn check(q: QuantView, ps: &[&XPrep], nb: usize, rows_end: usize) {
    let end = rows_end * nb;
    assert!(q.d.len() >= end);
    assert!(ps.iter().all(|p| p.ints.len() >= nb * 32 && p.scales.len() >= nb.next_multiple_of(G)));
    match q.dtype {
        DType::Q8_0 => assert!(q.qs.len() >= end * QBLOCK),
        _ => {
            assert!(q.qs.len() >= end * 16 && (q.dtype != DType::Q4_1 || q.m.len() >= end));
            assert!(ps.iter().all(|p| p.sums.len() >= nb.next_multiple_of(G)));
        }
    }
}

/// One token's row over weight blocks b0..b0 + nb, four blocks at a time.
///
/// # Safety
/// As checked by [`check`] for this row.
#[inline(always)]
unsafe fn row<const FINITE: bool>(q: QuantView, p: &XPrep, b0: usize, nb: usize) -> f32 {
    let mut acc = Acc::new();
    let mut b = 0;
    while b + G <= nb {
        // SAFETY: the caller's contract (blocks b..b + G exist).
        // (Written out: `array::map` here stayed a call in the wasm build.)
        let t = unsafe {
            [
                block(&unpack(q, b0 + b), p, b),
                block(&unpack(q, b0 + b + 1), p, b + 1),
                block(&unpack(q, b0 + b + 2), p, b + 2),
                block(&unpack(q, b0 + b + 3), p, b + 3),
            ]
        };
        unsafe { acc.add(q.dtype, p, b, Scales::of::<FINITE>(q, b0 + b, G), t) };
        b += G;
    }
    if b < nb {
        let g = nb - b;
        // SAFETY: as above, for the g blocks left.
        let t = std::array::from_fn(|i| {
            if i < g {
                unsafe { block(&unpack(q, b0 + b + i), p, b + i) }
            } else {
                i32x4_splat(0)
            }
        });
        unsafe { acc.add(q.dtype, p, b, Scales::of::<FINITE>(q, b0 + b, g), t) };
    }
    acc.total(q.dtype)
}

/// Four consecutive blocks' weight scales as f32: d, and the offset term's factor (m for
/// Q4_1, d for Q4_0), zero padded past the row's last block.
#[derive(Clone, Copy)]
struct Scales {
    d: v128,
    off: v128,
}

impl Scales {
    /// Blocks blk..blk + g (g <= G); `FINITE` where the backend found every scale finite.
    ///
    /// # Safety
    /// Those blocks of `q.d` (and `q.m` for Q4_1) must exist.
    #[inline(always)]
    unsafe fn of<const FINITE: bool>(q: QuantView, blk: usize, g: usize) -> Self {
        // SAFETY: the caller's contract.
        let d = unsafe { scales::<FINITE>(q.d, blk, g) };
        let off = match q.dtype {
            DType::Q4_1 => unsafe { scales::<FINITE>(q.m, blk, g) },
            _ => d,
        };
        Scales { d, off }
    }
}

/// A row's running sums, four lanes of blocks (lane j: the blocks b with b % 4 == j), added
/// in block order.
#[derive(Clone, Copy)]
struct Acc {
    dot: v128,
    /// Q4: the offset terms' (m or d) * sum(x).
    off: v128,
}

impl Acc {
    fn new() -> Self {
        Acc { dot: f32x4_splat(0.0), off: f32x4_splat(0.0) }
    }

    /// Adds activation blocks b..b + 4 (those past the row's end have zero scales and sums
    /// and t lanes of zero): `t` their integer products with the weight blocks, lane-wise,
    /// `w` the weight blocks' scales.
    ///
    /// # Safety
    /// Blocks b..b + G of `p.scales` (and `p.sums` for Q4) must exist.
    #[inline(always)]
    unsafe fn add(&mut self, dtype: DType, p: &XPrep, b: usize, w: Scales, t: [v128; G]) {
        // SAFETY: the caller's contract.
        let s = unsafe { v128_load(p.scales.as_ptr().add(b) as *const v128) };
        let ds = f32x4_mul(w.d, s);
        self.dot = f32x4_add(self.dot, f32x4_mul(ds, f32x4_convert_i32x4(totals(t))));
        if dtype != DType::Q8_0 {
            // SAFETY: as above.
            let sums = unsafe { v128_load(p.sums.as_ptr().add(b) as *const v128) };
            self.off = f32x4_add(self.off, f32x4_mul(w.off, sums));
        }
    }

    /// The row's dot product: the blocks' sum, plus (Q4) the offset terms, m * sum(x) for
    /// Q4_1 and -8 * d * sum(x) for Q4_0.
    fn total(&self, dtype: DType) -> f32 {
        let dot = hsum(self.dot);
        match dtype {
            DType::Q8_0 => dot,
            DType::Q4_1 => dot + hsum(self.off),
            _ => dot + -8.0 * hsum(self.off),
        }
    }
}

// The block arithmetic, shared by the one-token and the batched rows so that a token's result
// is the same in both by construction. SAFETY (all of them): the callers checked that block
// `blk` of the weights and activation block `b` lie inside their slices.

/// Block `blk`'s 32 weights as four vectors of eight 16-bit integers, the partners of the
/// activation's four vectors (`int_split`): Q8_0 in element order; Q4 (`Order::Quads`) vector
/// i holds the nibble at bits 4i of each 16-bit lane, elements 4l + i.
#[inline(always)]
unsafe fn unpack(q: QuantView, blk: usize) -> [v128; 4] {
    if q.dtype == DType::Q8_0 {
        let p = unsafe { q.qs.as_ptr().add(blk * QBLOCK) } as *const v128;
        // SAFETY: 32 bytes of block `blk` (unaligned loads are fine in wasm).
        let (a, b) = unsafe { (v128_load(p), v128_load(p.add(1))) };
        [
            i16x8_extend_low_i8x16(a),
            i16x8_extend_high_i8x16(a),
            i16x8_extend_low_i8x16(b),
            i16x8_extend_high_i8x16(b),
        ]
    } else {
        // SAFETY: 16 bytes of block `blk`.
        let v = unsafe { v128_load(q.qs.as_ptr().add(blk * 16) as *const v128) };
        let nibble = u16x8_splat(0x000f);
        [
            v128_and(v, nibble),
            v128_and(u16x8_shr(v, 4), nibble),
            v128_and(u16x8_shr(v, 8), nibble),
            u16x8_shr(v, 12),
        ]
    }
}

/// Block b's products with the weights `w`, lane-wise ((0 + 1) + (2 + 3)), in i32 (at most
/// 8 * 127 * 32767 a lane).
#[inline(always)]
unsafe fn block(w: &[v128; 4], p: &XPrep, b: usize) -> v128 {
    let xp = unsafe { p.ints.as_ptr().add(b * 32) } as *const v128;
    // SAFETY: 32 integers of block b.
    let d = |i: usize| unsafe { i32x4_dot_i16x8(w[i], v128_load(xp.add(i))) };
    i32x4_add(i32x4_add(d(0), d(1)), i32x4_add(d(2), d(3)))
}

/// Lane j: the sum of t[j]'s four lanes (integers, so the order is free).
#[inline(always)]
fn totals(t: [v128; G]) -> v128 {
    // [a0 + a2, b0 + b2, a1 + a3, b1 + b3], and the same of c and d.
    let ab =
        i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(t[0], t[1]), i32x4_shuffle::<2, 6, 3, 7>(t[0], t[1]));
    let cd =
        i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(t[2], t[3]), i32x4_shuffle::<2, 6, 3, 7>(t[2], t[3]));
    i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(ab, cd), i32x4_shuffle::<2, 3, 6, 7>(ab, cd))
}

/// Scales b..b + g (g <= G) of `src` as f32, exactly, zero padded to 4 lanes; with `FINITE`
/// (every scale of `src` finite) without the infinity and NaN cases.
///
/// # Safety
/// Blocks b..b + g of `src` must exist.
#[inline(always)]
pub(super) unsafe fn scales<const FINITE: bool>(src: &[f16], b: usize, g: usize) -> v128 {
    let h = if g == G {
        // SAFETY: the caller checked b + G <= src.len(); 4 f16 are 8 bytes.
        unsafe { i32x4_load_extend_i16x4(src.as_ptr().add(b) as *const i16) }
    } else {
        let mut t = [0i32; G];
        for j in 0..g {
            t[j] = src[b + j].to_bits() as i16 as i32;
        }
        i32x4(t[0], t[1], t[2], t[3])
    };
    match FINITE {
        true => f16x4_finite_to_f32(h),
        false => f16x4_to_f32(h),
    }
}

/// Finite f16 values, sign-extended into four 32-bit lanes, as f32, exactly (zero and
/// subnormals too). Shifted left by 13, each has its sign on f32's (and on the three bits
/// below it, cleared) and its exponent and mantissa on the low bits of f32's: the value times
/// 2^-112 as an f32 (f16's subnormals become f32 subnormals, exactly), which one exact
/// multiply by 2^112 restores. Four operations, where the f16 bits' cases took a dozen.
#[inline(always)]
fn f16x4_finite_to_f32(h: v128) -> v128 {
    let t = v128_and(i32x4_shl(h, 13), u32x4_splat(0x8fff_e000));
    f32x4_mul(t, f32x4_splat(f32::from_bits((127 + 112) << 23)))
}

/// [`f16x4_finite_to_f32`] for any f16: infinity and NaN (exponent 31) come out of it as
/// 2^16 * 1.m, above f16's largest finite value (65504), and get f32's all-ones exponent with
/// their mantissa (a NaN's payload) kept.
#[inline(always)]
fn f16x4_to_f32(h: v128) -> v128 {
    let v = f16x4_finite_to_f32(h);
    let special = f32x4_ge(f32x4_abs(v), f32x4_splat(65536.0));
    v128_or(v, v128_and(special, u32x4_splat(0x7f80_0000)))
}

/// Checks the scale conversions against `half` on every f16 bit pattern (the exact one on all,
/// the finite one on the finite ones), bit for bit, NaN as NaN: the browser tests run it
/// (`tandem_cpu::wasm_self_check`), the only place this code runs.
pub(crate) fn check_scale_conversion() -> Result<(), String> {
    // SAFETY: a v128 is 16 bytes, any of which make f32s.
    let lanes = |v: v128| unsafe { std::mem::transmute::<v128, [f32; G]>(v) };
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    for (i, hs) in all.chunks_exact(G).enumerate() {
        // SAFETY: G values of the chunk.
        let (any, fin) = unsafe { (scales::<false>(hs, 0, G), scales::<true>(hs, 0, G)) };
        let (any, fin) = (lanes(any), lanes(fin));
        for (j, h) in hs.iter().enumerate() {
            let want = h.to_f32();
            let same =
                |got: f32| got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
            if !same(any[j]) || (h.is_finite() && !same(fin[j])) {
                return Err(format!(
                    "f16 {:#06x} ({want}): exact {} finite {}",
                    h.to_bits(),
                    any[j],
                    fin[j]
                ));
            }
            // The tail path (fewer than G scales) builds its lanes another way.
            // SAFETY: one value of the slice.
            let one = &all[i * G + j..];
            let (tail, tail_fin) =
                unsafe { (lanes(scales::<false>(one, 0, 1)), lanes(scales::<true>(one, 0, 1))) };
            if !same(tail[0]) || (h.is_finite() && !same(tail_fin[0])) {
                return Err(format!(
                    "f16 {:#06x} ({want}) alone: exact {} finite {}",
                    h.to_bits(),
                    tail[0],
                    tail_fin[0]
                ));
            }
        }
    }
    Ok(())
}

/// (v0 + v2) + (v1 + v3).
#[inline(always)]
fn hsum(v: v128) -> f32 {
    let s = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s)
}

/// One block's hi (`int_split` without lo, its arithmetic lane for lane: x * inv clamped to
/// +-32767, rounded to even, NaN as 0), in `order`: four f32x4 a conversion, then a shuffle
/// into the order and a narrowing to 16 bits.
pub(super) fn split_block(xb: &[f32], inv: f32, order: Order) -> [i16; 32] {
    let xb: &[f32; 32] = xb.try_into().expect("a block of 32");
    let (iv, lim) = (f32x4_splat(inv), f32x4_splat(32767.0));
    let v: [v128; 8] = std::array::from_fn(|c| {
        // SAFETY: 4 floats of the 32.
        let x = unsafe { v128_load(xb.as_ptr().add(4 * c) as *const v128) };
        // min and max keep NaN, which the saturating conversion makes 0.
        let r = f32x4_min(f32x4_max(f32x4_mul(x, iv), f32x4_neg(lim)), lim);
        i32x4_trunc_sat_f32x4(f32x4_nearest(r))
    });
    // Eight values a vector of the result, from pairs of the eight vectors of four.
    let parts: [v128; 4] = match order {
        Order::Natural => std::array::from_fn(|i| i16x8_narrow_i32x4(v[2 * i], v[2 * i + 1])),
        Order::Nibbles => {
            // Even elements of v0..v3, of v4..v7, then odd ones.
            let even = |a, b| i32x4_shuffle::<0, 2, 4, 6>(a, b);
            let odd = |a, b| i32x4_shuffle::<1, 3, 5, 7>(a, b);
            [
                i16x8_narrow_i32x4(even(v[0], v[1]), even(v[2], v[3])),
                i16x8_narrow_i32x4(even(v[4], v[5]), even(v[6], v[7])),
                i16x8_narrow_i32x4(odd(v[0], v[1]), odd(v[2], v[3])),
                i16x8_narrow_i32x4(odd(v[4], v[5]), odd(v[6], v[7])),
            ]
        }
        Order::Quads => {
            // Vector q holds elements 4c + q: lane q of each v, a 4x4 transpose per half.
            let (a, b) = (transpose([v[0], v[1], v[2], v[3]]), transpose([v[4], v[5], v[6], v[7]]));
            std::array::from_fn(|q| i16x8_narrow_i32x4(a[q], b[q]))
        }
    };
    let mut out = [0i16; 32];
    for (i, p) in parts.iter().enumerate() {
        // SAFETY: 8 of the 32 values.
        unsafe { v128_store(out.as_mut_ptr().add(8 * i) as *mut v128, *p) };
    }
    out
}

/// max |x| over a block of 32, NaN elements skipped (`pmax(m, v)` is `m < v ? v : m`, which
/// keeps m for a NaN v; the running max starts at 0 and is never NaN).
pub(super) fn block_amax(xb: &[f32]) -> f32 {
    let xb: &[f32; 32] = xb.try_into().expect("a block of 32");
    let mut m = f32x4_splat(0.0);
    for c in 0..8 {
        // SAFETY: 4 floats of the 32.
        let v = unsafe { v128_load(xb.as_ptr().add(4 * c) as *const v128) };
        m = f32x4_pmax(m, f32x4_abs(v));
    }
    let m = f32x4_pmax(m, i32x4_shuffle::<2, 3, 0, 1>(m, m));
    let m = f32x4_pmax(m, i32x4_shuffle::<1, 0, 3, 2>(m, m));
    f32x4_extract_lane::<0>(m)
}

/// The 4x4 transpose of four vectors of 32-bit lanes.
#[inline(always)]
fn transpose(t: [v128; 4]) -> [v128; 4] {
    let (ab_lo, ab_hi) =
        (i32x4_shuffle::<0, 4, 1, 5>(t[0], t[1]), i32x4_shuffle::<2, 6, 3, 7>(t[0], t[1]));
    let (cd_lo, cd_hi) =
        (i32x4_shuffle::<0, 4, 1, 5>(t[2], t[3]), i32x4_shuffle::<2, 6, 3, 7>(t[2], t[3]));
    [
        i32x4_shuffle::<0, 1, 4, 5>(ab_lo, cd_lo),
        i32x4_shuffle::<2, 3, 6, 7>(ab_lo, cd_lo),
        i32x4_shuffle::<0, 1, 4, 5>(ab_hi, cd_hi),
        i32x4_shuffle::<2, 3, 6, 7>(ab_hi, cd_hi),
    ]
}

/// Tokens per pass of the batched rows: their accumulators sit in stack arrays.
const TOKENS: usize = 8;

/// Rows r0.. of every token's product for quantized weights (decode rows batched in one
/// step), each token's result bit for bit what [`rows`] gives it alone (plus the bias, added
/// the same way): every token runs the same operations in the same order on the same values;
/// only the work that does not depend on the token (widening a block, converting its scales)
/// is done once per block for up to [`TOKENS`] tokens. out: [tokens, rows], token-major.
pub(super) fn quant_batch(q: QuantView, preps: &[XPrep], k: usize, r0: usize, out: &mut [f32]) {
    let d = preps.len();
    let rows = out.len() / d;
    let nb = k / QBLOCK;
    for (g, o) in out.chunks_mut(TOKENS * rows).enumerate() {
        let t0 = g * TOKENS;
        let nt = o.len() / rows;
        let ps: Vec<&XPrep> = preps[t0..t0 + nt].iter().collect();
        rows_batch(q, &ps, nb, r0, o);
    }
}

/// [`rows`] for up to [`TOKENS`] tokens; out: [tokens, out.len() / tokens], token-major.
fn rows_batch(q: QuantView, ps: &[&XPrep], nb: usize, r0: usize, out: &mut [f32]) {
    let nt = ps.len();
    assert!(nt > 0 && nt <= TOKENS && out.len().is_multiple_of(nt));
    let rows = out.len() / nt;
    check(q, ps, nb, r0 + rows);
    for ri in 0..rows {
        let b0 = (r0 + ri) * nb;
        let mut acc = [Acc::new(); TOKENS];
        let mut b = 0;
        while b < nb {
            let g = G.min(nb - b);
            let mut t = [[i32x4_splat(0); G]; TOKENS];
            for i in 0..g {
                // SAFETY: `check` keeps blocks b0..b0 + nb of the weights and blocks 0..nb of
                // every token's activation inside their slices.
                let w = unsafe { unpack(q, b0 + b + i) };
                for (tt, p) in ps.iter().enumerate() {
                    // SAFETY: as above.
                    t[tt][i] = unsafe { block(&w, p, b + i) };
                }
            }
            // SAFETY: as above.
            let w = unsafe {
                match q.finite_scales {
                    true => Scales::of::<true>(q, b0 + b, g),
                    false => Scales::of::<false>(q, b0 + b, g),
                }
            };
            for (tt, p) in ps.iter().enumerate() {
                // SAFETY: as above (scales and sums are padded to whole groups of G).
                unsafe { acc[tt].add(q.dtype, p, b, w, t[tt]) };
            }
            b += g;
        }
        for (tt, a) in acc.iter().enumerate().take(nt) {
            out[tt * rows + ri] = a.total(q.dtype);
        }
    }
}
