//! WebAssembly SIMD (simd128) rows of the decode matvec (n = 1, k % 32 == 0) for Q8_0, Q4_0
//! and Q4_1: the browser's CPU fallback, where these products are most of a decode step.
//!
//! The native kernels' integer method ([`super::decode_avx2`]) in 128-bit lanes, in the
//! 16-bit activation class: a block's weights are widened to 16-bit integers (Q4: a mask and
//! a shift for the two nibbles of each byte, then one `extend` per 8 values; Q8_0: two
//! `extend`s per 16 bytes) and multiplied with `i32x4.dot_i16x8_s` (V8's one `pmaddwd` on
//! x86) against the activation rounded to 16 bits per block (`XPrep::ints` without its lo
//! half: x ~ s * hi, s = max |x| / 32767 of the block, so each element within 2^-16 of its
//! block's largest). Why not the native kernels' 31-bit split (hi + lo / 2^15): one thread
//! with 128-bit lanes is bound by instructions, and the lo half doubled the products per block
//! (about 36 instructions per block and token; 20 without it), for digits the answers do not
//! need: the 16-bit class keeps the reference's greedy tokens (see `precision` in lib.rs for
//! its conformance tolerance, measured). Q4 sums are exact integers; Q8_0's (8 products per
//! lane) round once to f32 when converted above 2^24, as an f32 sum would.
//!
//! Then per block, in one fixed order: acc += (d * s) * sum lane-wise, the lanes reduced at
//! the end. Four block scales are converted from f16 at once with integer operations (wasm
//! has no f16 instruction), and the Q4 offset terms (m * sum(x), or -8 * d * sum(x), from the
//! f32 activation's block sums) are accumulated four blocks per vector. The batched rows
//! ([`quant_batch`]) run the same functions per token, so a token's result is the same bits
//! alone and inside a batch.

use core::arch::wasm32::*;

use half::f16;
use tandem_core::{DType, QuantView, QBLOCK};

use super::XPrep;

/// Blocks whose scales are converted at once (one f32x4).
const G: usize = 4;
/// Blocks whose scales are converted before their products (a multiple of G).
const SPAN: usize = 32;

/// out[ri] = dot(row r0 + ri of w, x) for k = nb * 32 (as `super::quant_rows`), from the
/// activation's split `p`.
pub(super) fn rows(q: QuantView, p: &XPrep, nb: usize, r0: usize, out: &mut [f32]) {
    check(q, &[p], nb, r0 + out.len());
    for (ri, o) in out.iter_mut().enumerate() {
        // SAFETY: `check` keeps blocks b0..b0 + nb of the weights and blocks 0..nb of the
        // activation inside their slices.
        *o = unsafe { row(q, p, (r0 + ri) * nb, nb) };
    }
}

/// The bounds every raw load below relies on: rows up to `rows_end` of `q` (k = nb * 32), and
/// the activations' split blocks 0..nb, scales and (Q4) block sums.
fn check(q: QuantView, ps: &[&XPrep], nb: usize, rows_end: usize) {
    let end = rows_end * nb;
    assert!(q.d.len() >= end);
    assert!(ps.iter().all(|p| p.ints.len() >= nb * 32 && p.scales.len() >= nb.next_multiple_of(G)));
    match q.dtype {
        DType::Q8_0 => assert!(q.qs.len() >= end * QBLOCK),
        _ => {
            assert!(q.qs.len() >= end * 16 && (q.dtype != DType::Q4_1 || q.m.len() >= end));
            assert!(ps.iter().all(|p| p.sums.len() >= nb));
        }
    }
}

/// One token's row over blocks b0..b0 + nb: the block sums, then (Q4) the offsets.
///
/// # Safety
/// As checked by [`check`] for this row.
#[inline(always)]
unsafe fn row(q: QuantView, p: &XPrep, b0: usize, nb: usize) -> f32 {
    let mut acc = f32x4_splat(0.0);
    let mut ds = [0f32; SPAN];
    let mut s = 0;
    while s < nb {
        let n = SPAN.min(nb - s);
        // SAFETY: the caller's contract.
        unsafe { span_scales(q.d, p, b0 + s, s, n, &mut ds) };
        for (j, dj) in ds[..n].iter().enumerate() {
            // SAFETY: as above.
            let v = unsafe { block(&unpack(q, b0 + s + j), p, s + j) };
            acc = f32x4_add(acc, f32x4_mul(f32x4_splat(*dj), v));
        }
        s += n;
    }
    let sum = hsum(acc);
    match q.dtype {
        DType::Q8_0 => sum,
        // SAFETY: as above.
        _ => sum + unsafe { offsets(q, p, b0, nb) },
    }
}

/// The Q4 offset terms of a row: m * sum(x) for Q4_1, -8 * d * sum(x) for Q4_0.
///
/// # Safety
/// As [`row`].
#[inline(always)]
unsafe fn offsets(q: QuantView, p: &XPrep, b0: usize, nb: usize) -> f32 {
    let q41 = q.dtype == DType::Q4_1;
    let mut off = f32x4_splat(0.0);
    let mut s = 0;
    while s < nb {
        let n = SPAN.min(nb - s);
        // SAFETY: the caller's contract.
        off = unsafe { q4_offsets(q, q41, p, b0, s, n, off) };
        s += n;
    }
    q4_offset_total(q41, off)
}

/// d * s of blocks b..b + n (n <= SPAN) of the row (weights' block wb) into dst[..n].
///
/// # Safety
/// Weight blocks wb..wb + n and activation blocks b..b + n must exist.
#[inline(always)]
unsafe fn span_scales(d: &[f16], p: &XPrep, wb: usize, b: usize, n: usize, dst: &mut [f32; SPAN]) {
    for g in (0..n).step_by(G) {
        // SAFETY: the caller's contract; `p.scales` is zero padded to a multiple of G blocks;
        // dst holds SPAN floats, a multiple of G.
        unsafe {
            let sv = v128_load(p.scales.as_ptr().add(b + g) as *const v128);
            v128_store(dst.as_mut_ptr().add(g) as *mut v128, f32x4_mul(scales(d, wb + g, G.min(n - g)), sv));
        }
    }
}

/// The Q4 offsets' running sum `off` plus blocks b..b + n of the row at b0: (m or d) * sum(x),
/// four blocks per vector.
///
/// # Safety
/// Blocks b0 + b..b0 + b + n of `q.d` (and `q.m` for Q4_1), and blocks b..b + n of `p.sums`,
/// must exist.
#[inline(always)]
unsafe fn q4_offsets(q: QuantView, q41: bool, p: &XPrep, b0: usize, b: usize, n: usize, mut off: v128) -> v128 {
    let src = if q41 { q.m } else { q.d };
    for g in (0..n).step_by(G) {
        let c = G.min(n - g);
        // SAFETY: the caller's contract.
        let (ov, sums) = unsafe { (scales(src, b0 + b + g, c), block_sums(p, b + g, c)) };
        off = f32x4_add(off, f32x4_mul(ov, sums));
    }
    off
}

/// What the offsets add to a Q4 row: m * sum(x) for Q4_1, -8 * d * sum(x) for Q4_0.
#[inline(always)]
fn q4_offset_total(q41: bool, off: v128) -> f32 {
    let off = hsum(off);
    if q41 {
        off
    } else {
        -8.0 * off
    }
}

// The block arithmetic, shared by the one-token and the batched rows so that a token's result
// is the same in both by construction. SAFETY (all of them): the callers checked that block
// `blk` of the weights and activation block `b` lie inside their slices.

/// Block `blk`'s 32 weights as four vectors of eight 16-bit integers, the partners of the
/// activation's four vectors (`int_split`): Q8_0 in element order, Q4 the low
/// nibbles (even elements) then the high ones (odd elements).
#[inline(always)]
unsafe fn unpack(q: QuantView, blk: usize) -> [v128; 4] {
    if q.dtype == DType::Q8_0 {
        let p = unsafe { q.qs.as_ptr().add(blk * QBLOCK) } as *const v128;
        // SAFETY: 32 bytes of block `blk` (unaligned loads are fine in wasm).
        let (a, b) = unsafe { (v128_load(p), v128_load(p.add(1))) };
        [i16x8_extend_low_i8x16(a), i16x8_extend_high_i8x16(a), i16x8_extend_low_i8x16(b), i16x8_extend_high_i8x16(b)]
    } else {
        // SAFETY: 16 bytes of block `blk`.
        let v = unsafe { v128_load(q.qs.as_ptr().add(blk * 16) as *const v128) };
        let (lo, hi) = (v128_and(v, u8x16_splat(0x0f)), u8x16_shr(v, 4));
        [u16x8_extend_low_u8x16(lo), u16x8_extend_high_u8x16(lo), u16x8_extend_low_u8x16(hi), u16x8_extend_high_u8x16(hi)]
    }
}

/// Block b's products with the weights `w`, lane-wise ((0 + 1) + (2 + 3)), converted.
#[inline(always)]
unsafe fn block(w: &[v128; 4], p: &XPrep, b: usize) -> v128 {
    let xp = unsafe { p.ints.as_ptr().add(b * 32) } as *const v128;
    // SAFETY: 32 integers of block b.
    let d: [v128; 4] = std::array::from_fn(|i| unsafe { i32x4_dot_i16x8(w[i], v128_load(xp.add(i))) });
    f32x4_convert_i32x4(i32x4_add(i32x4_add(d[0], d[1]), i32x4_add(d[2], d[3])))
}

/// The activation sums of blocks b..b + g (g <= G), zero padded to 4 lanes.
#[inline(always)]
unsafe fn block_sums(p: &XPrep, b: usize, g: usize) -> v128 {
    if g == G {
        // SAFETY: the caller checked b + G <= p.sums.len().
        unsafe { v128_load(p.sums.as_ptr().add(b) as *const v128) }
    } else {
        let mut t = [0f32; G];
        t[..g].copy_from_slice(&p.sums[b..b + g]);
        f32x4(t[0], t[1], t[2], t[3])
    }
}

/// Scales b..b + g (g <= G) of `src` as f32, zero padded to 4 lanes.
///
/// # Safety
/// Blocks b..b + g of `src` must exist.
#[inline(always)]
pub(super) unsafe fn scales(src: &[f16], b: usize, g: usize) -> v128 {
    let h = if g == G {
        // SAFETY: the caller checked b + G <= src.len(); 4 f16 are 8 bytes.
        unsafe { v128_load64_zero(src.as_ptr().add(b) as *const u64) }
    } else {
        let mut t = [0u16; G];
        for j in 0..g {
            t[j] = src[b + j].to_bits();
        }
        u16x8(t[0], t[1], t[2], t[3], 0, 0, 0, 0)
    };
    f16x4_to_f32(u32x4_extend_low_u16x8(h))
}

/// The f16 values in the low halves of four u32 lanes as f32, exactly (normal, subnormal,
/// zero, infinite and NaN alike): the exponent is rebiased by an integer add; subnormals are
/// scaled up by 2^112 as if normal and corrected with one exact float subtraction.
#[inline(always)]
fn f16x4_to_f32(h: v128) -> v128 {
    const EXP: u32 = 0x7c00 << 13; // the f16 exponent field, moved to the f32 one
    const REBIAS: u32 = (127 - 15) << 23;
    let o = i32x4_shl(v128_and(h, u32x4_splat(0x7fff)), 13);
    let exp = v128_and(o, u32x4_splat(EXP));
    let normal = i32x4_add(o, u32x4_splat(REBIAS));
    // Infinity and NaN: exponent 31 becomes 255 (the mantissa, NaN payload included, kept).
    let special = i32x4_add(normal, u32x4_splat(REBIAS));
    // Zero and subnormals: m * 2^-24 = (2^-14 + m * 2^-24) - 2^-14, both terms exact.
    let magic = u32x4_splat(113 << 23);
    let tiny = f32x4_sub(i32x4_add(o, magic), magic);
    let v = v128_bitselect(special, normal, i32x4_eq(exp, u32x4_splat(EXP)));
    let v = v128_bitselect(tiny, v, i32x4_eq(exp, u32x4_splat(0)));
    v128_or(v, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
}

/// (v0 + v2) + (v1 + v3).
#[inline(always)]
fn hsum(v: v128) -> f32 {
    let s = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s)
}

/// Tokens per pass of the batched rows: their accumulators sit in stack arrays.
const TOKENS: usize = 8;

/// Rows r0.. of every token's product for quantized weights (decode rows batched in one
/// step), each token's result bit for bit what [`rows`] gives it alone (plus the bias, added
/// the same way): every token runs the same operations in the same order on the same values;
/// only the work that does not depend on the token (widening a block) is done once per block
/// for up to [`TOKENS`] tokens. out: [tokens, rows], token-major.
pub(super) fn quant_batch(q: QuantView, preps: &[XPrep], bias: Option<&[f32]>, k: usize, r0: usize, out: &mut [f32]) {
    let d = preps.len();
    let rows = out.len() / d;
    let nb = k / QBLOCK;
    for (g, o) in out.chunks_mut(TOKENS * rows).enumerate() {
        let t0 = g * TOKENS;
        let nt = o.len() / rows;
        let ps: Vec<&XPrep> = preps[t0..t0 + nt].iter().collect();
        rows_batch(q, &ps, nb, r0, o);
    }
    if let Some(b) = bias {
        for row in out.chunks_mut(rows) {
            for (v, bv) in row.iter_mut().zip(&b[r0..]) {
                *v += bv;
            }
        }
    }
}

/// [`rows`] for up to [`TOKENS`] tokens; out: [tokens, out.len() / tokens], token-major.
fn rows_batch(q: QuantView, ps: &[&XPrep], nb: usize, r0: usize, out: &mut [f32]) {
    let nt = ps.len();
    assert!(nt > 0 && nt <= TOKENS && out.len() % nt == 0);
    let rows = out.len() / nt;
    check(q, ps, nb, r0 + rows);
    for ri in 0..rows {
        let b0 = (r0 + ri) * nb;
        let mut acc = [f32x4_splat(0.0); TOKENS];
        let mut ds = [[0f32; SPAN]; TOKENS];
        let mut s = 0;
        while s < nb {
            let n = SPAN.min(nb - s);
            for (t, p) in ps.iter().enumerate() {
                // SAFETY: `check` keeps blocks b0..b0 + nb of the weights and blocks 0..nb of
                // every token's activation inside their slices.
                unsafe { span_scales(q.d, p, b0 + s, s, n, &mut ds[t]) };
            }
            for j in 0..n {
                // SAFETY: as above.
                let w = unsafe { unpack(q, b0 + s + j) };
                for (t, p) in ps.iter().enumerate() {
                    // SAFETY: as above.
                    let v = unsafe { block(&w, p, s + j) };
                    acc[t] = f32x4_add(acc[t], f32x4_mul(f32x4_splat(ds[t][j]), v));
                }
            }
            s += n;
        }
        for (t, p) in ps.iter().enumerate() {
            let sum = hsum(acc[t]);
            out[t * rows + ri] = match q.dtype {
                DType::Q8_0 => sum,
                // SAFETY: as above.
                _ => sum + unsafe { offsets(q, p, b0, nb) },
            };
        }
    }
}
