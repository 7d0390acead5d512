//! WebAssembly SIMD (simd128) rows of the decode matvec (n = 1, k % 32 == 0) for Q8_0, Q4_0
//! and Q4_1: the browser's CPU fallback, where these products are most of a decode step.
//!
//! Why by hand: the portable lane loops compile to scalar f16 conversions (a software routine
//! per block scale on wasm, which has no f16 instruction) and to byte unpacking that the
//! auto-vectorizer maps onto chains of `extend` instructions. Here a block's weights are
//! unpacked by shifting whole 32-bit lanes (four bytes each), which leaves every lane holding an
//! element 8 (Q4) or 4 (Q8) places after the previous lane's: the activation is permuted to that
//! order once per call ([`permute`], 4 x 4 transposes), so each product is one multiply of two
//! vectors. Four block scales are converted from f16 at once with integer operations, and the
//! Q4 offset terms (m * sum(x), or -8 * d * sum(x)) are accumulated four blocks per vector.
//!
//! simd128 has no FMA (relaxed SIMD's may or may not round once, depending on the machine), so
//! every product is a multiply and then an add, in one fixed order: a block's eight vector
//! products are summed as a balanced tree, each block's sum is scaled by its d and added to the
//! row's accumulator, and the lanes are reduced in a fixed order. The batched rows
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

/// out[ri] = dot(row r0 + ri of w, x) for k = nb * 32 (as `super::quant_rows`); `p` gives
/// the Q4 block sums.
pub(super) fn rows(q: QuantView, x: &[f32], p: &XPrep, nb: usize, r0: usize, out: &mut [f32]) {
    let xp = permute(q.dtype, x, nb);
    check(q, &[&xp], &[p], nb, r0 + out.len());
    match q.dtype {
        DType::Q8_0 => {
            for (ri, o) in out.iter_mut().enumerate() {
                let b0 = (r0 + ri) * nb;
                // SAFETY: `check` keeps blocks b0..b0 + nb of the weights and blocks 0..nb of
                // the activation inside their slices.
                *o = unsafe { row_blocks(q.d, b0, nb, |b| dot(&unpack_q8(q.qs, b0 + b), &xp, b), |_, _| {}) };
            }
        }
        _ => {
            let q41 = q.dtype == DType::Q4_1;
            for (ri, o) in out.iter_mut().enumerate() {
                let b0 = (r0 + ri) * nb;
                let mut off = f32x4_splat(0.0);
                // SAFETY: as above.
                let dot = unsafe {
                    let offsets = |b: usize, g: usize| off = q4_offsets(q, q41, p, b0, b, g, off);
                    row_blocks(q.d, b0, nb, |b| dot(&unpack_q4(q.qs, b0 + b), &xp, b), offsets)
                };
                *o = dot + q4_offset_total(q41, off);
            }
        }
    }
}

/// The bounds every raw load below relies on: rows up to `rows_end` of `q` (k = nb * 32), the
/// permuted activations' blocks 0..nb and, for Q4, their block sums.
fn check(q: QuantView, xps: &[&[f32]], ps: &[&XPrep], nb: usize, rows_end: usize) {
    let end = rows_end * nb;
    assert!(q.d.len() >= end && xps.iter().all(|x| x.len() >= nb * QBLOCK));
    match q.dtype {
        DType::Q8_0 => assert!(q.qs.len() >= end * QBLOCK),
        _ => {
            assert!(q.qs.len() >= end * 16 && (q.dtype != DType::Q4_1 || q.m.len() >= end));
            assert!(ps.iter().all(|p| p.sums.len() >= nb));
        }
    }
}

/// The activation's blocks 0..nb in the order the unpacked weights come in: vector v of a
/// block holds the elements that [`unpack_q8`] or [`unpack_q4`] put in their vector v.
fn permute(dtype: DType, x: &[f32], nb: usize) -> Vec<f32> {
    assert!(x.len() >= nb * QBLOCK);
    let mut out = vec![0f32; nb * QBLOCK];
    for (xb, ob) in x.chunks_exact(QBLOCK).zip(out.chunks_exact_mut(QBLOCK)) {
        let (xb, ob) = (xb.as_ptr() as *const v128, ob.as_mut_ptr() as *mut v128);
        // SAFETY: both blocks hold 32 floats, 8 vectors.
        let v: [v128; 8] = std::array::from_fn(|i| unsafe { v128_load(xb.add(i)) });
        // Q8: vector 4h + c, lane l is element 16h + 4l + c. Q4: vector s, lane l is 8l + s.
        let t = match dtype {
            DType::Q8_0 => [transpose(v[0], v[1], v[2], v[3]), transpose(v[4], v[5], v[6], v[7])],
            _ => [transpose(v[0], v[2], v[4], v[6]), transpose(v[1], v[3], v[5], v[7])],
        };
        for (i, r) in t.iter().flatten().enumerate() {
            // SAFETY: as above.
            unsafe { v128_store(ob.add(i), *r) };
        }
    }
    out
}

/// Row r of the result is lane r of a, b, c and d.
#[inline(always)]
fn transpose(a: v128, b: v128, c: v128, d: v128) -> [v128; 4] {
    let (ab01, ab23) = (i32x4_shuffle::<0, 4, 1, 5>(a, b), i32x4_shuffle::<2, 6, 3, 7>(a, b));
    let (cd01, cd23) = (i32x4_shuffle::<0, 4, 1, 5>(c, d), i32x4_shuffle::<2, 6, 3, 7>(c, d));
    [
        i64x2_shuffle::<0, 2>(ab01, cd01),
        i64x2_shuffle::<1, 3>(ab01, cd01),
        i64x2_shuffle::<0, 2>(ab23, cd23),
        i64x2_shuffle::<1, 3>(ab23, cd23),
    ]
}

/// Sum over a row's blocks of d[b] * block(b) (lane-wise, then reduced), in spans of up to
/// [`SPAN`] blocks: a span's scales are converted first (four at a time, into a stack array),
/// and `group(b, n)` runs once per span (the Q4 offset terms); then its blocks are summed one
/// per loop turn into one accumulator.
///
/// Why one block per turn and one accumulator: V8 issues a loop body's loads before the
/// arithmetic that uses them, so a body of several blocks (nine loads each) keeps more values
/// alive than x86-64's 16 vector registers hold and spills them; one add per block into the
/// accumulator is far from the critical path of a block's ~50 instructions. (Two rows per turn,
/// sharing the activation's loads, measured slower for the same reason.)
///
/// # Safety
/// Blocks b0..b0 + nb of `d` must exist (checked by the callers' [`check`]).
#[inline(always)]
unsafe fn row_blocks(d: &[f16], b0: usize, nb: usize, block: impl Fn(usize) -> v128, mut group: impl FnMut(usize, usize)) -> f32 {
    let mut acc = f32x4_splat(0.0);
    let mut ds = [0f32; SPAN];
    let mut s = 0;
    while s < nb {
        let n = SPAN.min(nb - s);
        // SAFETY: blocks b0 + s..b0 + s + n lie inside `d` (the caller's contract).
        unsafe { scales_into(d, b0 + s, n, &mut ds) };
        group(s, n);
        for (j, dj) in ds[..n].iter().enumerate() {
            acc = f32x4_add(acc, f32x4_mul(f32x4_splat(*dj), block(s + j)));
        }
        s += n;
    }
    hsum(acc)
}

/// Scales b..b + n (n <= SPAN) of `src` as f32 into dst[..n].
///
/// # Safety
/// Blocks b..b + n of `src` must exist.
#[inline(always)]
unsafe fn scales_into(src: &[f16], b: usize, n: usize, dst: &mut [f32; SPAN]) {
    for g in (0..n).step_by(G) {
        // SAFETY: the caller's contract; dst holds SPAN floats, a multiple of G.
        unsafe { v128_store(dst.as_mut_ptr().add(g) as *mut v128, scales(src, b + g, G.min(n - g))) };
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

/// Q8_0 block `blk`'s 32 values as 8 x 4 floats: vector 4h + c holds byte c of each 32-bit
/// lane of the block's half h (elements 16h + c, 16h + 4 + c, ...), sign-extended by shifting
/// it to the top of the lane and back.
#[inline(always)]
unsafe fn unpack_q8(qs: &[u8], blk: usize) -> [v128; 8] {
    let p = unsafe { qs.as_ptr().add(blk * QBLOCK) } as *const v128;
    // SAFETY: 32 bytes of block `blk` (unaligned loads are fine in wasm).
    let (v0, v1) = unsafe { (v128_load(p), v128_load(p.add(1))) };
    let bytes = |v: v128| [i32x4_shr(i32x4_shl(v, 24), 24), i32x4_shr(i32x4_shl(v, 16), 24), i32x4_shr(i32x4_shl(v, 8), 24), i32x4_shr(v, 24)];
    let (h0, h1) = (bytes(v0), bytes(v1));
    std::array::from_fn(|i| f32x4_convert_i32x4(if i < 4 { h0[i] } else { h1[i - 4] }))
}

/// Q4 block `blk`'s nibbles as 8 x 4 floats: vector s holds nibble s of each 32-bit lane
/// (elements s, 8 + s, 16 + s, 24 + s: element 2i is the low nibble of byte i).
#[inline(always)]
unsafe fn unpack_q4(qs: &[u8], blk: usize) -> [v128; 8] {
    // SAFETY: 16 bytes of block `blk`.
    let v = unsafe { v128_load(qs.as_ptr().add(blk * 16) as *const v128) };
    let mask = u32x4_splat(0x0f);
    // Values below 16: the signed conversion is exact (and one instruction, unlike the
    // unsigned one).
    [
        f32x4_convert_i32x4(v128_and(v, mask)),
        f32x4_convert_i32x4(v128_and(u32x4_shr(v, 4), mask)),
        f32x4_convert_i32x4(v128_and(u32x4_shr(v, 8), mask)),
        f32x4_convert_i32x4(v128_and(u32x4_shr(v, 12), mask)),
        f32x4_convert_i32x4(v128_and(u32x4_shr(v, 16), mask)),
        f32x4_convert_i32x4(v128_and(u32x4_shr(v, 20), mask)),
        f32x4_convert_i32x4(v128_and(u32x4_shr(v, 24), mask)),
        f32x4_convert_i32x4(u32x4_shr(v, 28)),
    ]
}

/// Lane-wise sum of a block's unpacked weights times the permuted activation's block `b`.
#[inline(always)]
unsafe fn dot(w: &[v128; 8], xp: &[f32], b: usize) -> v128 {
    let xp = unsafe { xp.as_ptr().add(b * QBLOCK) } as *const v128;
    // SAFETY: 32 floats of block b.
    let p: [v128; 8] = std::array::from_fn(|i| f32x4_mul(w[i], unsafe { v128_load(xp.add(i)) }));
    tree8(&p)
}

/// ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)): short dependency chains, one order.
#[inline(always)]
fn tree8(p: &[v128; 8]) -> v128 {
    let a = f32x4_add(f32x4_add(p[0], p[1]), f32x4_add(p[2], p[3]));
    let b = f32x4_add(f32x4_add(p[4], p[5]), f32x4_add(p[6], p[7]));
    f32x4_add(a, b)
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
/// the same way): every token runs the same multiplies and adds in the same order on the same
/// values; only the work that does not depend on the token (widening a block and its scales)
/// is done once per block for up to [`TOKENS`] tokens. x: [tokens, k]; out: [tokens, rows],
/// token-major.
pub(super) fn quant_batch(q: QuantView, x: &[f32], preps: &[XPrep], bias: Option<&[f32]>, k: usize, r0: usize, out: &mut [f32]) {
    let d = preps.len();
    let rows = out.len() / d;
    let nb = k / QBLOCK;
    let xps: Vec<Vec<f32>> = x.chunks_exact(k).take(d).map(|xt| permute(q.dtype, xt, nb)).collect();
    for (g, o) in out.chunks_mut(TOKENS * rows).enumerate() {
        let t0 = g * TOKENS;
        let nt = o.len() / rows;
        let xs: Vec<&[f32]> = xps[t0..t0 + nt].iter().map(|v| v.as_slice()).collect();
        let ps: Vec<&XPrep> = preps[t0..t0 + nt].iter().collect();
        rows_batch(q, &xs, &ps, nb, r0, o);
    }
    if let Some(b) = bias {
        for row in out.chunks_mut(rows) {
            for (v, bv) in row.iter_mut().zip(&b[r0..]) {
                *v += bv;
            }
        }
    }
}

/// [`rows`] for up to [`TOKENS`] tokens (their permuted activations `xps`); out: [tokens,
/// out.len() / tokens], token-major.
fn rows_batch(q: QuantView, xps: &[&[f32]], ps: &[&XPrep], nb: usize, r0: usize, out: &mut [f32]) {
    let nt = xps.len();
    assert!(nt > 0 && nt <= TOKENS && ps.len() == nt && out.len() % nt == 0);
    let rows = out.len() / nt;
    check(q, xps, ps, nb, r0 + rows);
    let mut res = [0f32; TOKENS];
    let q41 = q.dtype == DType::Q4_1;
    for ri in 0..rows {
        let b0 = (r0 + ri) * nb;
        // SAFETY (both arms): `check` keeps blocks b0..b0 + nb of the weights and blocks 0..nb
        // of every token's activation inside their slices.
        match q.dtype {
            DType::Q8_0 => unsafe {
                let unpack = |b: usize| unpack_q8(q.qs, b0 + b);
                let dot = |w: &[v128; 8], t: usize, b: usize| dot(w, xps[t], b);
                row_blocks_batch(q.d, b0, nb, nt, unpack, dot, |_, _| {}, &mut res);
            },
            _ => unsafe {
                let mut off = [f32x4_splat(0.0); TOKENS];
                let offsets = |b: usize, g: usize| {
                    for (t, p) in ps.iter().enumerate() {
                        off[t] = q4_offsets(q, q41, p, b0, b, g, off[t]);
                    }
                };
                let unpack = |b: usize| unpack_q4(q.qs, b0 + b);
                let dot = |w: &[v128; 8], t: usize, b: usize| dot(w, xps[t], b);
                row_blocks_batch(q.d, b0, nb, nt, unpack, dot, offsets, &mut res);
                for t in 0..nt {
                    res[t] += q4_offset_total(q41, off[t]);
                }
            },
        }
        for t in 0..nt {
            out[t * rows + ri] = res[t];
        }
    }
}

/// [`row_blocks`] for `nt` tokens at once: `unpack(b)` prepares block b once, `dot(&w, t, b)`
/// is token t's block sum from it, `group(b, n)` runs once per span.
///
/// # Safety
/// As [`row_blocks`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_blocks_batch<W>(
    d: &[f16],
    b0: usize,
    nb: usize,
    nt: usize,
    unpack: impl Fn(usize) -> W,
    dot: impl Fn(&W, usize, usize) -> v128,
    mut group: impl FnMut(usize, usize),
    res: &mut [f32; TOKENS],
) {
    let mut acc = [f32x4_splat(0.0); TOKENS];
    let mut ds = [0f32; SPAN];
    let mut s = 0;
    while s < nb {
        let n = SPAN.min(nb - s);
        // SAFETY: the caller's contract, as in `row_blocks`.
        unsafe { scales_into(d, b0 + s, n, &mut ds) };
        group(s, n);
        for (j, dj) in ds[..n].iter().enumerate() {
            let w = unpack(s + j);
            let dj = f32x4_splat(*dj);
            for t in 0..nt {
                acc[t] = f32x4_add(acc[t], f32x4_mul(dj, dot(&w, t, s + j)));
            }
        }
        s += n;
    }
    for t in 0..nt {
        res[t] = hsum(acc[t]);
    }
}
