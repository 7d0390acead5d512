//! AVX2 rows of the decode matvec (n = 1, k % 32 == 0) for Q8_0, Q4_0 and Q4_1.
//!
//! Why by hand: the auto-vectorizer keeps the block loops at 128 bits, and the portable path
//! widens every chunk's f16 scales into a freshly allocated f32 scratch first, an allocation
//! and a pass in the hottest loop of a decode step. Here the scales of 8 blocks are widened
//! with one F16C instruction, and the Q4 per-block offset terms (m * sum(x), or
//! -8 * d * sum(x)) are accumulated 8 blocks per FMA instead of one scalar at a time.
//!
//! Blocks are dotted in integers (`madd_epi16`) against the activation rounded to 16 bits per
//! block (`XPrep::ints`, the `I16Activations` class; see [`row_group`]), for Q8_0 and Q4
//! alike: the 16-bit activation holds the reference's greedy answers (see NOTES.md for the
//! 31-bit split this replaced). [`super::decode_avx512`] gives the same bits faster (the
//! AVX-512 kernel table's entry).

use std::arch::x86_64::*;

use half::f16;
use tandem_core::{DType, QuantView, QBLOCK};

use super::XPrep;

/// Blocks whose scales are widened at once (one 128-bit load of f16s).
pub(super) const G: usize = 8;

/// out[ri] = dot(row r0 + ri of w, x) for k = nb * 32 (the table's `quant_rows`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows(q: QuantView, p: &XPrep, nb: usize, r0: usize, out: &mut [f32]) {
    check(q, &[p], nb, r0 + out.len(), PER_BLOCK);
    // SAFETY: bounds checked above; the caller guarantees the CPU features.
    unsafe {
        match q.dtype {
            DType::Q8_0 => rows_by::<true>(q, p, nb, r0, out),
            _ => rows_by::<false>(q, p, nb, r0, out),
        }
    }
}

/// [`rows`] with the weight's kind known at compile time (no test of it per block).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_by<const Q8: bool>(q: QuantView, p: &XPrep, nb: usize, r0: usize, out: &mut [f32]) {
    for (ri, o) in out.iter_mut().enumerate() {
        let b0 = (r0 + ri) * nb;
        prefetch_ahead(q, b0, nb);
        // SAFETY: the caller checked the bounds of rows r0..r0 + out.len().
        *o = unsafe { row_one::<Q8>(q, p, b0, nb) };
    }
}

/// One row from block b0, `row_group::<1>`'s bits: the scales of up to [`SPAN`] blocks are
/// multiplied out into a buffer first, so each block broadcasts its scale from memory (a load)
/// instead of shuffling it out of a register (the shuffle units also unpack the weights).
#[inline(always)]
unsafe fn row_one<const Q8: bool>(q: QuantView, p: &XPrep, b0: usize, nb: usize) -> f32 {
    // SAFETY (whole body): bounds checked by the callers (`check`).
    unsafe {
        let ip = p.ints.as_ptr();
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut ds = [0f32; SPAN];
        let mut b = 0;
        while b < nb {
            let span = SPAN.min(nb - b);
            let mut c = 0;
            while c < span {
                let g = G.min(nb - b - c);
                let dv = widen_scales(q.d, b0 + b + c, g);
                _mm256_storeu_ps(ds[c..].as_mut_ptr(), _mm256_mul_ps(dv, padded(&p.scales, b + c)));
                c += G;
            }
            macro_rules! block {
                ($j:expr, $acc:ident) => {{
                    let j = $j;
                    let xp = ip.add((b + j) * PER_BLOCK) as *const __m256i;
                    let (w0, w1) = unpack_as::<Q8>(q, b0 + b + j);
                    let hi = _mm256_add_epi32(
                        _mm256_madd_epi16(w0, _mm256_loadu_si256(xp)),
                        _mm256_madd_epi16(w1, _mm256_loadu_si256(xp.add(1))),
                    );
                    let dj = _mm256_broadcast_ss(&ds[j]);
                    $acc = _mm256_fmadd_ps(dj, _mm256_cvtepi32_ps(hi), $acc);
                }};
            }
            let mut j = 0;
            while j + 1 < span {
                block!(j, a0);
                block!(j + 1, a1);
                j += 2;
            }
            if j < span {
                block!(j, a0);
            }
            b += span;
        }
        let sum = hsum(_mm256_add_ps(a0, a1));
        if Q8 {
            sum
        } else {
            offsets::<1>(q, &[p], b0, nb, [sum])[0]
        }
    }
}

/// Blocks whose scales [`row_one`] multiplies out at once: a multiple of [`G`] (so its groups
/// of scales are `row_group`'s) and of 2 (so a block's accumulator goes by its parity).
const SPAN: usize = 64;

/// [`unpack`] with the weight's kind known at compile time (Q8_0, or else Q4_0 / Q4_1).
#[inline(always)]
unsafe fn unpack_as<const Q8: bool>(q: QuantView, blk: usize) -> (__m256i, __m256i) {
    // SAFETY: the callers checked that block `blk` lies inside q.qs.
    unsafe {
        if Q8 {
            let p = q.qs.as_ptr().add(blk * QBLOCK) as *const __m128i;
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(1))),
            )
        } else {
            let bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                q.qs.as_ptr().add(blk * 16) as *const __m128i
            ));
            (_mm256_and_si256(bytes, _mm256_set1_epi16(0x0f)), _mm256_srli_epi16(bytes, 4))
        }
    }
}

/// Bytes ahead of the row being dotted that [`prefetch_ahead`] asks for: a few short rows
/// (a 576-wide Q4 row is 288 bytes), far enough ahead for the bytes to arrive before their row
/// is dotted. The distance is not critical within a few KiB (see NOTES.md).
const PREFETCH: usize = 1024;

/// Asks for the weight bytes (and their block scales) [`PREFETCH`] bytes past row `b0`'s
/// blocks b0..b0 + nb, for rows shorter than that. Why: such a decode row is a few cache
/// lines, too short for the hardware's stream prefetcher to run ahead of, so each row's first
/// loads would wait on memory. A hint: nothing is read past the matrix.
#[inline(always)]
pub(super) fn prefetch_ahead(q: QuantView, b0: usize, nb: usize) {
    let per = if q.dtype == DType::Q8_0 { QBLOCK } else { QBLOCK / 2 };
    let (start, end) = (b0 * per + PREFETCH, (b0 + nb) * per + PREFETCH);
    // A row this long is a stream the hardware runs ahead of by itself; the hints only cost
    // issue slots (Phi-4-mini's 3072- and 8192-wide rows: 5-15% faster without them).
    if nb * per >= PREFETCH || end > q.qs.len() {
        return;
    }
    let at = |s: &[u8], i: usize| s[i..].as_ptr() as *const i8;
    // SAFETY: `_mm_prefetch` is a hint that never faults; every address is inside q.qs.
    unsafe {
        for line in (start & !63..end).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(at(q.qs, line));
        }
    }
    // The scales (2 bytes a block): the row's first and last, which span at most two lines.
    let (b, e) = (b0 + PREFETCH / per, b0 + nb + PREFETCH / per);
    for src in [q.d, if q.dtype == DType::Q4_1 { q.m } else { &[] }] {
        if e <= src.len() {
            // SAFETY: as above, inside `src`.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(src[b..].as_ptr() as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(src[e - 1..].as_ptr() as *const i8);
            }
        }
    }
}

/// Activation integers per block: the 16-bit split's hi half (see the module doc).
pub(super) const PER_BLOCK: usize = 32;

/// The bounds every raw load of the row kernels ([`row_group`] and the AVX-512 one) stays
/// inside, for rows below `end_row`, with `per_block` activation integers per block.
pub(super) fn check(q: QuantView, ps: &[&XPrep], nb: usize, end_row: usize, per_block: usize) {
    let end = end_row * nb;
    let bytes = if q.dtype == DType::Q8_0 { QBLOCK } else { 16 };
    assert!(matches!(q.dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1));
    assert!(
        q.d.len() >= end
            && q.qs.len() >= end * bytes
            && (q.dtype != DType::Q4_1 || q.m.len() >= end)
    );
    let q4 = q.dtype != DType::Q8_0;
    assert!(ps.iter().all(|p| p.ints.len() >= nb * per_block
        && p.scales.len() >= nb
        && (!q4 || p.sums.len() >= nb)));
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// Tokens whose accumulators stay (mostly) in registers at once: two per token for the block
/// parity and one for the Q4 offsets, plus the unpacked block and a scale, about fill AVX2's
/// 16 vector registers for 4 tokens (with 16 at once every accumulator lived on the stack, a
/// load and a store around each FMA).
const GROUP: usize = 4;

/// Several tokens' products over the same rows (decode rows batched in one step), each token's
/// result bit for bit what [`rows`] gives it alone: every token runs the same operations in
/// the same order on the same values; only work that does not depend on the token (unpacking
/// the quantized block and widening its scales) is shared, by up to [`GROUP`] tokens. A row's
/// bytes stay in L1 between its token groups, so the weights are still read from memory once.
/// preps: the tokens' splits; out: [tokens, out.len() / tokens], token-major.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tokens(q: QuantView, preps: &[&XPrep], nb: usize, r0: usize, out: &mut [f32]) {
    let nt = preps.len();
    assert!(nt > 0 && out.len().is_multiple_of(nt));
    let rows = out.len() / nt;
    check(q, preps, nb, r0 + rows, PER_BLOCK);
    for t0 in (0..nt).step_by(GROUP) {
        let g = GROUP.min(nt - t0);
        let pg = &preps[t0..t0 + g];
        let o = &mut out[t0 * rows..];
        // SAFETY: bounds checked above; the caller guarantees the CPU features.
        unsafe {
            match g {
                4 => group_rows::<4>(q, pg, nb, r0, rows, o),
                3 => group_rows::<3>(q, pg, nb, r0, rows, o),
                2 => group_rows::<2>(q, pg, nb, r0, rows, o),
                _ => group_rows::<1>(q, pg, nb, r0, rows, o),
            }
        }
    }
}

/// T tokens' products over rows r0..r0 + rows: out[t * rows + ri]. One call per token group
/// with the row loop inside, so the per-row kernels inline and their setup is paid once per
/// group, not per row and group (see NOTES.md).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn group_rows<const T: usize>(
    q: QuantView,
    ps: &[&XPrep],
    nb: usize,
    r0: usize,
    rows: usize,
    out: &mut [f32],
) {
    assert!(ps.len() == T && out.len() >= T * rows);
    check(q, ps, nb, r0 + rows, PER_BLOCK);
    for ri in 0..rows {
        prefetch_ahead(q, (r0 + ri) * nb, nb);
        // SAFETY: bounds checked above.
        let res = unsafe { row_group::<T>(q, ps, (r0 + ri) * nb, nb) };
        for (t, v) in res.into_iter().enumerate() {
            out[t * rows + ri] = v;
        }
    }
}

/// Block `blk`'s weights as two vectors of 16 integers, the partners of the activation's
/// first and second 16 split values (`XPrep::ints`): Q8_0's elements 0-15 and 16-31, a Q4
/// block's low nibbles (even elements) and high nibbles (odd ones).
#[inline(always)]
pub(super) unsafe fn unpack(q: QuantView, blk: usize) -> (__m256i, __m256i) {
    // SAFETY: the callers checked that block `blk` lies inside q.qs.
    unsafe {
        if q.dtype == DType::Q8_0 {
            unpack_as::<true>(q, blk)
        } else {
            unpack_as::<false>(q, blk)
        }
    }
}

/// T tokens' rows over blocks b0..b0 + nb, in integers against each activation's 16-bit
/// split (`XPrep::ints`): per block, one exact integer sum of 32 products, scaled by d * s in
/// f32. Q8_0: sum_b d * sum q x; Q4_0: sum_b d * (sum q x - 8 sum x); Q4_1: sum_b d * sum q x
/// plus m * sum x. `madd_epi16` multiplies 16 weights per instruction with no conversion of the
/// weights to floats; the integer sums are exact (Q8_0's 4-product lanes stay below 2^24, so
/// even their conversion is), so their order, and the instruction set, does not change a bit
/// of the result.
/// The dtype is tested per block, a branch the predictor always gets right. Inlined into
/// its AVX2 callers.
#[inline(always)]
unsafe fn row_group<const T: usize>(q: QuantView, ps: &[&XPrep], b0: usize, nb: usize) -> [f32; T] {
    // SAFETY (whole body): bounds checked by the callers (`check`).
    unsafe {
        let ip: [*const i16; T] = std::array::from_fn(|t| ps[t].ints.as_ptr());
        let sc: [&[f32]; T] = std::array::from_fn(|t| &ps[t].scales[..]);
        let (mut a0, mut a1) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
        let mut ds = [[0f32; G]; T];
        let per = PER_BLOCK;
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
                    let (w0, w1) = unpack(q, b0 + b + j);
                    for t in 0..T {
                        let xp = ip[t].add((b + j) * per) as *const __m256i;
                        let hi = _mm256_add_epi32(
                            _mm256_madd_epi16(w0, _mm256_loadu_si256(xp)),
                            _mm256_madd_epi16(w1, _mm256_loadu_si256(xp.add(1))),
                        );
                        let v = _mm256_cvtepi32_ps(hi);
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
        let sums: [f32; T] = std::array::from_fn(|t| hsum(_mm256_add_ps(a0[t], a1[t])));
        match q.dtype {
            DType::Q8_0 => sums,
            _ => offsets::<T>(q, ps, b0, nb, sums),
        }
    }
}

/// The Q4 rows' offset terms added to their block sums: Q4_1 + sum_b m * sum x, Q4_0 minus
/// 8 sum_b d * sum x. A pass of their own: their accumulators would not fit in the
/// registers beside the block loop's (they spilled to the stack). Shared by the AVX-512
/// kernel, so its results stay these.
#[inline(always)]
pub(super) unsafe fn offsets<const T: usize>(
    q: QuantView,
    ps: &[&XPrep],
    b0: usize,
    nb: usize,
    sums: [f32; T],
) -> [f32; T] {
    // SAFETY (whole body): bounds checked by the callers (`check`); AVX2 + F16C callers.
    unsafe {
        let q41 = q.dtype == DType::Q4_1;
        let mut off = [_mm256_setzero_ps(); T];
        let mut b = 0;
        while b < nb {
            let g = G.min(nb - b);
            let mv = widen_scales(if q41 { q.m } else { q.d }, b0 + b, g);
            for t in 0..T {
                off[t] = _mm256_fmadd_ps(mv, padded(&ps[t].sums, b), off[t]);
            }
            b += g;
        }
        std::array::from_fn(|t| {
            let o = hsum(off[t]);
            sums[t] + if q41 { o } else { -8.0 * o }
        })
    }
}

/// f16 scales src[b..b + g] (g <= G) as 8 f32 lanes, zero padded; inlined into the AVX2 +
/// F16C caller. A row's last few blocks read on into the next row's scales and mask them off
/// rather than copy them into a padded array, whose bytes a wide load cannot take from the
/// store buffer (it waits for the stores to retire); only the matrix's last row copies.
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
    unsafe {
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(g as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        ))
    }
}

/// v[b..b + G]: `XPrep`'s per-block arrays are zero padded to a multiple of G blocks, so a
/// row's last group reads zeros past its blocks.
#[inline(always)]
pub(super) unsafe fn padded(v: &[f32], b: usize) -> __m256 {
    assert!(b + G <= v.len());
    // SAFETY: bounds asserted; AVX is enabled in every caller.
    unsafe { _mm256_loadu_ps(v.as_ptr().add(b)) }
}
