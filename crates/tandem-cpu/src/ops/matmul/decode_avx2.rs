//! AVX2 rows of the decode matvec (n = 1, k % 32 == 0) for Q8_0, Q4_0 and Q4_1.
//!
//! Why by hand: the auto-vectorizer keeps the block loops at 128 bits, and the portable path
//! widens every chunk's f16 scales into a freshly allocated f32 scratch first, which showed up
//! as ~10% of a decode step. Here the scales of 8 blocks are widened with one F16C
//! instruction into a stack array, and the Q4 per-block offset terms (m * sum(x), or
//! -8 * d * sum(x)) are accumulated 8 blocks per FMA instead of one scalar at a time.
//!
//! Q4 blocks are dotted in integers (`madd_epi16`) against a 16-bit split of the activation
//! that carries more bits than f32 (see [`row_q4_group`]): 1.3-1.4x the f32 kernel's speed on a
//! 1536 x 576 Q4_1 matvec (bench_matmul, one thread, weights in cache), answers unchanged.

use std::arch::x86_64::*;

use half::f16;
use tandem_core::{DType, QuantView, QBLOCK};

use super::XPrep;

/// Blocks whose scales are widened at once (one 128-bit load of f16s).
pub(super) const G: usize = 8;

/// out[ri] = dot(row r0 + ri of w, x) for k = nb * 32 (as `super::quant_rows`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows(
    q: QuantView,
    x: &[f32],
    p: &XPrep,
    nb: usize,
    r0: usize,
    out: &mut [f32],
) {
    let end = (r0 + out.len()) * nb;
    // These bounds keep every raw load below inside its slice.
    assert!(q.d.len() >= end);
    match q.dtype {
        DType::Q8_0 => {
            assert!(q.qs.len() >= end * QBLOCK && x.len() >= nb * QBLOCK);
            for (ri, o) in out.iter_mut().enumerate() {
                // SAFETY: bounds asserted above; the caller guarantees the CPU features.
                *o = unsafe { row_q8_group::<1>(q, &[x], (r0 + ri) * nb, nb)[0] };
            }
        }
        _ => {
            let q41 = q.dtype == DType::Q4_1;
            assert!(q.qs.len() >= end * 16 && (!q41 || q.m.len() >= end));
            if super::decode_avx512::available() {
                // SAFETY: the features were detected; `p` was laid out for this kernel.
                return unsafe { super::decode_avx512::rows(q, p, nb, r0, out) };
            }
            assert!(p.ints.len() >= nb * 64 && p.scales.len() >= nb && p.sums.len() >= nb);
            for (ri, o) in out.iter_mut().enumerate() {
                // SAFETY: as above.
                *o = unsafe { row_q4_group::<1>(q, q41, &[p], (r0 + ri) * nb, nb)[0] };
            }
        }
    }
}

/// Widens scales b..b + g (g <= G) of `src` into `dst` (zeros above g), through
/// [`widen_scales`]: one wide store, whose lanes the per-block broadcasts then read.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales(src: &[f16], b: usize, g: usize, dst: &mut [f32; G]) -> __m256 {
    // SAFETY: the caller checked b + g <= src.len(); dst holds G floats.
    unsafe {
        let v = widen_scales(src, b, g);
        _mm256_storeu_ps(dst.as_mut_ptr(), v);
        v
    }
}

// The block arithmetic, shared by the one-token and the batched kernels so that a token's
// result is the same in both by construction. SAFETY (both): the callers checked that
// block `blk` of the weights and blocks 0..=b of the activation lie inside their slices.

/// Q8_0 block `blk`'s 32 values as 4 x 8 floats.
#[inline(always)]
unsafe fn unpack_q8(qs: &[u8], blk: usize) -> [__m256; 4] {
    let qp = unsafe { qs.as_ptr().add(blk * QBLOCK) };
    std::array::from_fn(|i| unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(qp.add(i * 8) as *const __m128i))) })
}

/// Lane-wise sum of a Q8_0 block's values times the 32 activations at `xp`.
#[inline(always)]
unsafe fn dot_q8(w: &[__m256; 4], xp: *const f32) -> __m256 {
    let mut s = _mm256_setzero_ps();
    for (i, &qv) in w.iter().enumerate() {
        s = unsafe { _mm256_fmadd_ps(qv, _mm256_loadu_ps(xp.add(i * 8)), s) };
    }
    s
}





#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// Tokens per call of the batched rows (the caller's grouping).
pub(super) const TOKENS: usize = 16;

/// Tokens whose accumulators stay (mostly) in registers at once: two per token for the block
/// parity and one for the Q4 offsets, plus the unpacked block and a scale, about fill AVX2's
/// 16 vector registers for 4 tokens. With 16 at once every accumulator lived on the stack, a
/// load and a store around each FMA: 37-44 us per token for a 1536 x 576 Q4_1 matmul against
/// 30 us in groups of 4 (2 threads, weights in cache; a one-token call takes 57 us).
const GROUP: usize = 4;

/// Several tokens' products over the same rows (decode rows batched in one step), each token's
/// result bit for bit what [`rows`] gives it alone: every token runs the same FMAs in the same
/// order on the same values; only work that does not depend on the token (widening the
/// quantized block and its scales) is shared, by up to [`GROUP`] tokens. A row's bytes stay
/// in L1 between its token groups, so the weights are still read from memory once.
/// xs, preps: up to [`TOKENS`] tokens; out: [tokens, out.len() / tokens], token-major.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows_batch(q: QuantView, xs: &[&[f32]], preps: &[&XPrep], nb: usize, r0: usize, out: &mut [f32]) {
    let nt = xs.len();
    assert!(nt > 0 && nt <= TOKENS && preps.len() == nt && out.len() % nt == 0);
    let rows = out.len() / nt;
    let end = (r0 + rows) * nb;
    assert!(q.d.len() >= end);
    let q8 = q.dtype == DType::Q8_0;
    let q41 = q.dtype == DType::Q4_1;
    if q8 {
        assert!(q.qs.len() >= end * QBLOCK && xs.iter().all(|x| x.len() >= nb * QBLOCK));
    } else {
        assert!(q.qs.len() >= end * 16 && (!q41 || q.m.len() >= end));
        assert!(preps.iter().all(|p| p.ints.len() >= nb * 64 && p.scales.len() >= nb && p.sums.len() >= nb));
    }
    // AVX-512's 32 registers hold twice the tokens' accumulators.
    let group = if !q8 && super::decode_avx512::available() { 2 * GROUP } else { GROUP };
    for t0 in (0..nt).step_by(group) {
        let g = group.min(nt - t0);
        let (xg, pg) = (&xs[t0..t0 + g], &preps[t0..t0 + g]);
        let o = &mut out[t0 * rows..];
        // SAFETY: bounds asserted above; the caller guarantees the CPU features.
        unsafe {
            if !q8 && super::decode_avx512::available() {
                match g {
                    8 => super::decode_avx512::group_rows::<8>(q, pg, nb, r0, rows, o),
                    7 => super::decode_avx512::group_rows::<7>(q, pg, nb, r0, rows, o),
                    6 => super::decode_avx512::group_rows::<6>(q, pg, nb, r0, rows, o),
                    5 => super::decode_avx512::group_rows::<5>(q, pg, nb, r0, rows, o),
                    4 => super::decode_avx512::group_rows::<4>(q, pg, nb, r0, rows, o),
                    3 => super::decode_avx512::group_rows::<3>(q, pg, nb, r0, rows, o),
                    2 => super::decode_avx512::group_rows::<2>(q, pg, nb, r0, rows, o),
                    _ => super::decode_avx512::group_rows::<1>(q, pg, nb, r0, rows, o),
                }
                continue;
            }
            match g {
                4 => group_rows::<4>(q, xg, pg, nb, r0, rows, o),
                3 => group_rows::<3>(q, xg, pg, nb, r0, rows, o),
                2 => group_rows::<2>(q, xg, pg, nb, r0, rows, o),
                _ => group_rows::<1>(q, xg, pg, nb, r0, rows, o),
            }
        }
    }
}

/// T tokens' products over rows r0..r0 + rows: out[t * rows + ri]. One call per token group
/// with the row loop inside, so the per-row kernels inline and their setup is not paid per
/// row and group (a call per row and group cost about a third of a batched matmul).
///
/// # Safety
/// As [`rows_batch`], whose asserts cover every access.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn group_rows<const T: usize>(q: QuantView, xs: &[&[f32]], ps: &[&XPrep], nb: usize, r0: usize, rows: usize, out: &mut [f32]) {
    assert!(xs.len() == T && ps.len() == T && out.len() >= (T - 1) * rows + rows);
    let q41 = q.dtype == DType::Q4_1;
    for ri in 0..rows {
        let b0 = (r0 + ri) * nb;
        // SAFETY: as the caller's.
        let res = unsafe {
            if q.dtype == DType::Q8_0 {
                row_q8_group::<T>(q, xs, b0, nb)
            } else {
                row_q4_group::<T>(q, q41, ps, b0, nb)
            }
        };
        for (t, v) in res.into_iter().enumerate() {
            out[t * rows + ri] = v;
        }
    }
}

/// Sum over a row's blocks of d[b] * block sum, for T tokens at once: `unpack(b)` prepares
/// block b once, `dot(&w, t, b)` is token t's block sum from it, `group(b, g)` runs once per
/// group of G scales (widened together, one F16C instruction). Two accumulators per token, by
/// block parity. The one-token kernel is this with T = 1, so a token's result is the same alone
/// and batched by construction.
#[inline(always)]
unsafe fn row_blocks_group<const T: usize, W>(
    d: &[f16],
    b0: usize,
    nb: usize,
    unpack: impl Fn(usize) -> W,
    dot: impl Fn(&W, usize, usize) -> __m256,
    mut group: impl FnMut(usize, usize),
) -> [f32; T] {
    // SAFETY (whole body): the callers are AVX2 + F16C functions whose bounds were checked.
    unsafe {
        let mut a0 = [_mm256_setzero_ps(); T];
        let mut a1 = [_mm256_setzero_ps(); T];
        let mut ds = [0f32; G];
        let mut b = 0;
        while b + G <= nb {
            scales(d, b0 + b, G, &mut ds);
            group(b, G);
            for j in (0..G).step_by(2) {
                let (w, dj) = (unpack(b + j), _mm256_set1_ps(ds[j]));
                for t in 0..T {
                    a0[t] = _mm256_fmadd_ps(dj, dot(&w, t, b + j), a0[t]);
                }
                let (w, dj) = (unpack(b + j + 1), _mm256_set1_ps(ds[j + 1]));
                for t in 0..T {
                    a1[t] = _mm256_fmadd_ps(dj, dot(&w, t, b + j + 1), a1[t]);
                }
            }
            b += G;
        }
        if b < nb {
            let g = nb - b;
            scales(d, b0 + b, g, &mut ds);
            group(b, g);
            for j in 0..g {
                let (w, dj) = (unpack(b + j), _mm256_set1_ps(ds[j]));
                for t in 0..T {
                    a0[t] = _mm256_fmadd_ps(dj, dot(&w, t, b + j), a0[t]);
                }
            }
        }
        std::array::from_fn(|t| hsum(_mm256_add_ps(a0[t], a1[t])))
    }
}

/// T tokens' Q8_0 rows: sum_b d[b] * sum_j q[b, j] * x[b, j]; blocks b0..b0 + nb. Inlined
/// into its AVX2 callers.
#[inline(always)]
unsafe fn row_q8_group<const T: usize>(q: QuantView, xs: &[&[f32]], b0: usize, nb: usize) -> [f32; T] {
    // SAFETY (whole body): bounds asserted by `rows_batch`.
    unsafe {
        let xp: [*const f32; T] = std::array::from_fn(|t| xs[t].as_ptr());
        let unpack = |b: usize| unpack_q8(q.qs, b0 + b);
        let dot = |w: &[__m256; 4], t: usize, b: usize| dot_q8(w, xp[t].add(b * QBLOCK));
        row_blocks_group::<T, _>(q.d, b0, nb, unpack, dot, |_, _| {})
    }
}

/// T tokens' Q4 rows; blocks b0..b0 + nb. Q4_0: sum_b d * (sum q x - 8 sum x); Q4_1: sum_b
/// d * sum q x + m * sum x. sum q x is taken in integers against the activation's 16-bit
/// split (`XPrep::ints`): per block, two exact integer sums (hi, lo) of 16 products each,
/// widened exactly and joined as hi + lo / 2^15, then scaled by d * s in f32. `madd_epi16`
/// multiplies 16 nibbles per instruction with no conversion of the weights to floats, about
/// half the instructions of the f32 kernel per block; the integer sums are exact, so their
/// order (and the instruction set) does not change a bit of the result. Inlined into its AVX2
/// callers.
#[inline(always)]
unsafe fn row_q4_group<const T: usize>(q: QuantView, q41: bool, ps: &[&XPrep], b0: usize, nb: usize) -> [f32; T] {
    // SAFETY (whole body): bounds asserted by the callers (`rows`, `rows_batch`).
    unsafe {
        let ip: [*const i16; T] = std::array::from_fn(|t| ps[t].ints.as_ptr());
        let sc: [&[f32]; T] = std::array::from_fn(|t| &ps[t].scales[..]);
        let su: [&[f32]; T] = std::array::from_fn(|t| &ps[t].sums[..]);
        let (mut a0, mut a1, mut off) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
        let mut ds = [[0f32; G]; T];
        let lo_weight = _mm256_set1_ps(1.0 / 32768.0);
        let mut b = 0;
        while b < nb {
            let g = G.min(nb - b);
            let dv = widen_scales(q.d, b0 + b, g);
            for t in 0..T {
                _mm256_storeu_ps(ds[t].as_mut_ptr(), _mm256_mul_ps(dv, padded(sc[t], b)));
            }
            // A macro, not a closure: a closure would not inherit the callers' target features.
            macro_rules! block {
                ($j:expr) => {{
                    let j = $j;
                    let bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(q.qs.as_ptr().add((b0 + b + j) * 16) as *const __m128i));
                    let (wl, wh) = (_mm256_and_si256(bytes, _mm256_set1_epi16(0x0f)), _mm256_srli_epi16(bytes, 4));
                    for t in 0..T {
                        let xp = ip[t].add((b + j) * 64) as *const __m256i;
                        let hi = _mm256_add_epi32(_mm256_madd_epi16(wl, _mm256_loadu_si256(xp)), _mm256_madd_epi16(wh, _mm256_loadu_si256(xp.add(1))));
                        let lo = _mm256_add_epi32(_mm256_madd_epi16(wl, _mm256_loadu_si256(xp.add(2))), _mm256_madd_epi16(wh, _mm256_loadu_si256(xp.add(3))));
                        let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), lo_weight, _mm256_cvtepi32_ps(hi));
                        let dj = _mm256_broadcast_ss(&ds[t][j]);
                        if j % 2 == 0 {
                            a0[t] = _mm256_fmadd_ps(dj, v, a0[t]);
                        } else {
                            a1[t] = _mm256_fmadd_ps(dj, v, a1[t]);
                        }
                    }
                }};
            }
            // A constant trip count for whole groups, so the loop unrolls.
            if g == G {
                for j in 0..G {
                    block!(j);
                }
            } else {
                for j in 0..g {
                    block!(j);
                }
            }
            b += g;
        }
        // The offset terms in a pass of their own: their accumulators would not fit in the
        // registers beside the block loop's (they spilled to the stack).
        let mut b = 0;
        while b < nb {
            let g = G.min(nb - b);
            let mv = widen_scales(if q41 { q.m } else { q.d }, b0 + b, g);
            for t in 0..T {
                off[t] = _mm256_fmadd_ps(mv, padded(su[t], b), off[t]);
            }
            b += g;
        }
        std::array::from_fn(|t| {
            let o = hsum(off[t]);
            hsum(_mm256_add_ps(a0[t], a1[t])) + if q41 { o } else { -8.0 * o }
        })
    }
}

/// f16 scales src[b..b + g] (g <= G) as 8 f32 lanes, zero padded; inlined into the AVX2 +
/// F16C caller. A row's last few blocks read on into the next
/// row's scales and mask them off (a copy into a padded array, whose bytes a wide load could
/// not take from the store buffer, cost a third of a decode matvec); only the matrix's last
/// row copies.
#[inline(always)]
pub(super) unsafe fn widen_scales(src: &[f16], b: usize, g: usize) -> __m256 {
    // SAFETY: the callers checked b + g <= src.len() and run with F16C; full loads are taken
    // only where b + G <= src.len().
    unsafe {
        if b + G <= src.len() {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(b) as *const __m128i));
            if g == G {
                v
            } else {
                _mm256_and_ps(v, lanes_below(g))
            }
        } else {
            let mut t = [f16::ZERO; G];
            t[..g].copy_from_slice(&src[b..b + g]);
            _mm256_cvtph_ps(_mm_loadu_si128(t.as_ptr() as *const __m128i))
        }
    }
}

/// All ones in lanes 0..g, zeros above.
#[inline(always)]
unsafe fn lanes_below(g: usize) -> __m256 {
    // SAFETY: AVX is enabled in every caller.
    unsafe { _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(g as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))) }
}

/// v[b..b + G]: `XPrep`'s per-block arrays are zero padded to a multiple of G blocks, so a
/// row's last group reads zeros past its blocks.
#[inline(always)]
pub(super) unsafe fn padded(v: &[f32], b: usize) -> __m256 {
    assert!(b + G <= v.len());
    // SAFETY: bounds asserted; AVX is enabled in every caller.
    unsafe { _mm256_loadu_ps(v.as_ptr().add(b)) }
}
