//! AVX2 rows of the decode matvec (n = 1, k % 32 == 0) for Q8_0, Q4_0 and Q4_1.
//!
//! Why by hand: the auto-vectorizer keeps the block loops at 128 bits, and the portable path
//! widens every chunk's f16 scales into a freshly allocated f32 scratch first, which showed up
//! as ~10% of a decode step. Here the scales of 8 blocks are widened with one F16C
//! instruction into a stack array, and the Q4 per-block offset terms (m * sum(x), or
//! -8 * d * sum(x)) are accumulated 8 blocks per FMA instead of one scalar at a time.

use std::arch::x86_64::*;

use half::f16;
use tandem_core::{DType, QuantView, QBLOCK};

use super::XPrep;

/// Blocks whose scales are widened at once (one 128-bit load of f16s).
const G: usize = 8;

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
            assert!(p.even.len() >= nb * 16 && p.odd.len() >= nb * 16 && p.sums.len() >= nb);
            for (ri, o) in out.iter_mut().enumerate() {
                // SAFETY: as above.
                *o = unsafe { row_q4_group::<1>(q, q41, &[p], (r0 + ri) * nb, nb)[0] };
            }
        }
    }
}

/// Widens scales b..b + g (g <= G) of `src` into `dst`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales(src: &[f16], b: usize, g: usize, dst: &mut [f32; G]) -> __m256 {
    if g == G {
        // SAFETY: the caller checked b + G <= src.len().
        let v = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(b) as *const __m128i)) };
        // SAFETY: dst holds G floats.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) };
        v
    } else {
        // The row's last few blocks: f16 -> f32 is exact either way.
        for j in 0..g {
            dst[j] = src[b + j].to_f32();
        }
        for v in &mut dst[g..] {
            *v = 0.0;
        }
        // SAFETY: dst holds G floats.
        unsafe { _mm256_loadu_ps(dst.as_ptr()) }
    }
}

// The block arithmetic, shared by the one-token and the batched kernels so that a token's
// result is the same in both by construction. SAFETY (all four): the callers checked that
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

/// Q4 block `blk`'s nibbles as floats: low nibbles (bytes 0..8, 8..16), then high ones.
#[inline(always)]
unsafe fn unpack_q4(qs: &[u8], blk: usize) -> [__m256; 4] {
    unsafe {
        let mask = _mm_set1_epi8(0x0f);
        let bytes = _mm_loadu_si128(qs.as_ptr().add(blk * 16) as *const __m128i);
        let lo = _mm_and_si128(bytes, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        [widen(lo), widen(_mm_srli_si128(lo, 8)), widen(hi), widen(_mm_srli_si128(hi, 8))]
    }
}

/// Lane-wise sum of a Q4 block's nibbles times one token's activation block, whose even and
/// odd elements (the low and high nibbles' partners) are at `e` and `o` (16 each).
#[inline(always)]
unsafe fn dot_q4_at(w: &[__m256; 4], e: *const f32, o: *const f32) -> __m256 {
    unsafe {
        let mut s = _mm256_mul_ps(w[0], _mm256_loadu_ps(e));
        s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(e.add(8)), s);
        s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(o), s);
        _mm256_fmadd_ps(w[3], _mm256_loadu_ps(o.add(8)), s)
    }
}

/// The activation sums of blocks b..b + g (g <= G), zero padded to 8 lanes.
#[inline(always)]
unsafe fn block_sums(p: &XPrep, b: usize, g: usize) -> __m256 {
    unsafe {
        if g == G {
            _mm256_loadu_ps(p.sums.as_ptr().add(b))
        } else {
            let mut t = [0f32; G];
            t[..g].copy_from_slice(&p.sums[b..b + g]);
            _mm256_loadu_ps(t.as_ptr())
        }
    }
}

/// The low 8 bytes of `v` as 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
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
        assert!(preps.iter().all(|p| p.even.len() >= nb * 16 && p.odd.len() >= nb * 16 && p.sums.len() >= nb));
    }
    let mut res = [0f32; GROUP];
    for ri in 0..rows {
        let b0 = (r0 + ri) * nb;
        for t0 in (0..nt).step_by(GROUP) {
            let g = GROUP.min(nt - t0);
            let (xg, pg) = (&xs[t0..t0 + g], &preps[t0..t0 + g]);
            // SAFETY: bounds asserted above; the caller guarantees the CPU features.
            unsafe {
                match (q8, g) {
                    (true, 4) => res = row_q8_group::<4>(q, xg, b0, nb),
                    (true, 3) => res[..3].copy_from_slice(&row_q8_group::<3>(q, xg, b0, nb)),
                    (true, 2) => res[..2].copy_from_slice(&row_q8_group::<2>(q, xg, b0, nb)),
                    (true, _) => res[..1].copy_from_slice(&row_q8_group::<1>(q, xg, b0, nb)),
                    (false, 4) => res = row_q4_group::<4>(q, q41, pg, b0, nb),
                    (false, 3) => res[..3].copy_from_slice(&row_q4_group::<3>(q, q41, pg, b0, nb)),
                    (false, 2) => res[..2].copy_from_slice(&row_q4_group::<2>(q, q41, pg, b0, nb)),
                    (false, _) => res[..1].copy_from_slice(&row_q4_group::<1>(q, q41, pg, b0, nb)),
                }
            }
            for (t, &v) in res[..g].iter().enumerate() {
                out[(t0 + t) * rows + ri] = v;
            }
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

/// T tokens' Q8_0 rows: sum_b d[b] * sum_j q[b, j] * x[b, j]; blocks b0..b0 + nb.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
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
/// d * sum q x + m * sum x, with x split into even/odd elements to match the nibble order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q4_group<const T: usize>(q: QuantView, q41: bool, ps: &[&XPrep], b0: usize, nb: usize) -> [f32; T] {
    // SAFETY (whole body): bounds asserted by `rows_batch`.
    unsafe {
        let ep: [*const f32; T] = std::array::from_fn(|t| ps[t].even.as_ptr());
        let op: [*const f32; T] = std::array::from_fn(|t| ps[t].odd.as_ptr());
        let unpack = |b: usize| unpack_q4(q.qs, b0 + b);
        let dot = |w: &[__m256; 4], t: usize, b: usize| dot_q4_at(w, ep[t].add(b * 16), op[t].add(b * 16));
        let sp: [*const f32; T] = std::array::from_fn(|t| ps[t].sums.as_ptr());
        let mut off = [_mm256_setzero_ps(); T];
        let mut tmp = [0f32; G];
        let offsets = |b: usize, g: usize| {
            let src = if q41 { q.m } else { q.d };
            let ov = scales(src, b0 + b, g, &mut tmp);
            for t in 0..T {
                let sums = if g == G { _mm256_loadu_ps(sp[t].add(b)) } else { block_sums(ps[t], b, g) };
                off[t] = _mm256_fmadd_ps(ov, sums, off[t]);
            }
        };
        let mut res = row_blocks_group::<T, _>(q.d, b0, nb, unpack, dot, offsets);
        for t in 0..T {
            let o = hsum(off[t]);
            res[t] += if q41 { o } else { -8.0 * o };
        }
        res
    }
}
