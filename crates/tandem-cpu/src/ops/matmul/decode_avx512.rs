//! AVX-512 rows of the Q8_0 / Q4_0 / Q4_1 decode matvec: the AVX2 kernel's arithmetic
//! ([`super::decode_avx2`]), bit for bit, two blocks per instruction.
//!
//! Why: the AVX2 kernel is bound by instructions, not memory (a Q4_1 matvec runs as fast on
//! weights in cache as out of it; see NOTES.md), and batching decode rows shares
//! only the unpacking, a quarter of them. Per block and token it issues 4 `madd`, 2 adds,
//! 2 conversions, 2 FMAs and a broadcast. Here a 512-bit register holds two blocks: the
//! AVX2 kernel's even-block accumulator is the low half, its odd-block one the high half,
//! the two 8-lane integer sums of each block are the same integers (VNNI `dpwssd` fuses
//! the second `madd` with its add, exactly), and every float operation gets the same
//! operands in the same order. So a token's result is the AVX2 kernel's to the bit, on
//! this machine and on one without AVX-512, alone or batched.
//!
//! The activation's 16-bit split is laid out by pairs of blocks (`int_split`'s `pairs`) so that
//! each of its two parts is one 512-bit load for two blocks.

use std::arch::x86_64::*;

use tandem_core::{DType, QuantView, QBLOCK};

use super::decode_avx2::{
    check, hsum, offsets, padded, prefetch_ahead, unpack, widen_scales, G, PER_BLOCK,
};
use super::XPrep;

/// out[ri] = dot(row r0 + ri of w, x), as `decode_avx2::rows`; p's ints in `int_split`'s
/// pairs layout.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/DQ/VL and VNNI, AVX2, FMA and F16C ([`crate::Isa::Avx512`]).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn rows(q: QuantView, p: &XPrep, nb: usize, r0: usize, out: &mut [f32]) {
    check(q, &[p], nb, r0 + out.len(), PER_BLOCK);
    assert!(p.ints.len() >= nb.next_multiple_of(2) * PER_BLOCK);
    for (ri, o) in out.iter_mut().enumerate() {
        prefetch_ahead(q, (r0 + ri) * nb, nb);
        // SAFETY: bounds checked above; the caller guarantees the CPU features.
        *o = unsafe { row_group::<1>(q, &[p], (r0 + ri) * nb, nb)[0] };
    }
}

/// Tokens whose accumulators AVX-512's 32 registers hold at once: twice AVX2's group.
const GROUP: usize = 8;

/// Several tokens' rows, as `decode_avx2::tokens` (each token's bits what [`rows`] gives it),
/// in groups of [`GROUP`]; p's ints in `int_split`'s pairs layout.
///
/// # Safety
/// As [`rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn tokens(q: QuantView, preps: &[&XPrep], nb: usize, r0: usize, out: &mut [f32]) {
    let nt = preps.len();
    assert!(nt > 0 && out.len().is_multiple_of(nt));
    let rows = out.len() / nt;
    for t0 in (0..nt).step_by(GROUP) {
        let g = GROUP.min(nt - t0);
        let pg = &preps[t0..t0 + g];
        let o = &mut out[t0 * rows..];
        // SAFETY: the caller guarantees the CPU features; `group_rows` checks the bounds.
        unsafe {
            match g {
                8 => group_rows::<8>(q, pg, nb, r0, rows, o),
                7 => group_rows::<7>(q, pg, nb, r0, rows, o),
                6 => group_rows::<6>(q, pg, nb, r0, rows, o),
                5 => group_rows::<5>(q, pg, nb, r0, rows, o),
                4 => group_rows::<4>(q, pg, nb, r0, rows, o),
                3 => group_rows::<3>(q, pg, nb, r0, rows, o),
                2 => group_rows::<2>(q, pg, nb, r0, rows, o),
                _ => group_rows::<1>(q, pg, nb, r0, rows, o),
            }
        }
    }
}

/// T tokens' products over rows r0..r0 + rows (out[t * rows + ri]), as
/// `decode_avx2::group_rows`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/DQ/VL and VNNI, AVX2, FMA and F16C ([`crate::Isa::Avx512`]).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    assert!(ps.iter().all(|p| p.ints.len() >= nb.next_multiple_of(2) * PER_BLOCK));
    for ri in 0..rows {
        prefetch_ahead(q, (r0 + ri) * nb, nb);
        // SAFETY: as in `rows`.
        let res = unsafe { row_group::<T>(q, ps, (r0 + ri) * nb, nb) };
        for (t, v) in res.into_iter().enumerate() {
            out[t * rows + ri] = v;
        }
    }
}

/// Blocks blk and blk + 1 as the AVX2 kernel's two vectors of each, side by side: lanes 0-15
/// block blk's, 16-31 block blk + 1's (see `decode_avx2::unpack`).
#[inline(always)]
unsafe fn unpack_pair(q: QuantView, blk: usize) -> (__m512i, __m512i) {
    // SAFETY: the callers checked that blocks blk and blk + 1 lie inside q.qs.
    unsafe {
        if q.dtype == DType::Q8_0 {
            // Quadwords 0-3 are block blk's bytes, 4-7 block blk + 1's: each block's first
            // halves go below, its second halves above.
            let v = _mm512_loadu_si512(q.qs.as_ptr().add(blk * QBLOCK) as *const __m512i);
            let v = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7), v);
            (
                _mm512_cvtepi8_epi16(_mm512_castsi512_si256(v)),
                _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64::<1>(v)),
            )
        } else {
            let bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256(
                q.qs.as_ptr().add(blk * 16) as *const __m256i
            ));
            (_mm512_and_si512(bytes, _mm512_set1_epi16(0x0f)), _mm512_srli_epi16::<4>(bytes))
        }
    }
}

/// T tokens' rows over blocks b0..b0 + nb: `decode_avx2::row_group`'s operations on two
/// blocks at once (see the module doc).
#[inline(always)]
unsafe fn row_group<const T: usize>(q: QuantView, ps: &[&XPrep], b0: usize, nb: usize) -> [f32; T] {
    // SAFETY (whole body): bounds asserted by `check`; the callers run with the features.
    unsafe {
        let ip: [*const i16; T] = std::array::from_fn(|t| ps[t].ints.as_ptr());
        let mut acc = [_mm512_setzero_ps(); T];
        let per = PER_BLOCK;
        // Lanes 0-7 take scale j, lanes 8-15 scale j + 1, for j = 0, 2, 4, 6.
        let pick = |j: i32| {
            _mm512_setr_epi32(
                j,
                j,
                j,
                j,
                j,
                j,
                j,
                j,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
            )
        };
        let picks = [pick(0), pick(2), pick(4), pick(6)];
        let mut b = 0;
        while b < nb {
            let g = G.min(nb - b);
            let dv = widen_scales(q.d, b0 + b, g);
            let ds: [__m256; T] =
                std::array::from_fn(|t| _mm256_mul_ps(dv, padded(&ps[t].scales, b)));
            let mut j = 0;
            while j + 1 < g {
                let (wl, wh) = unpack_pair(q, b0 + b + j);
                for t in 0..T {
                    // Blocks b + j (even) and b + j + 1: pair (b + j) / 2, 128 values.
                    let xp = ip[t].add((b + j) * per) as *const __m512i;
                    let hi = _mm512_dpwssd_epi32(
                        _mm512_madd_epi16(wl, _mm512_loadu_si512(xp)),
                        wh,
                        _mm512_loadu_si512(xp.add(1)),
                    );
                    let v = _mm512_cvtepi32_ps(hi);
                    let dj = _mm512_permutexvar_ps(picks[j / 2], _mm512_castps256_ps512(ds[t]));
                    acc[t] = _mm512_fmadd_ps(dj, v, acc[t]);
                }
                j += 2;
            }
            if j < g {
                // The row's last block, unpaired (nb odd): even, so the low half's, with the
                // AVX2 kernel's 256-bit operations.
                let (wl, wh) = unpack(q, b0 + b + j);
                for t in 0..T {
                    let xp = ip[t].add((b + j) * per) as *const __m256i;
                    let hi = _mm256_add_epi32(
                        _mm256_madd_epi16(wl, _mm256_loadu_si256(xp)),
                        _mm256_madd_epi16(wh, _mm256_loadu_si256(xp.add(2))),
                    );
                    let v = _mm256_cvtepi32_ps(hi);
                    let dj = _mm256_permutevar8x32_ps(ds[t], _mm256_set1_epi32(j as i32));
                    let a0 = _mm256_fmadd_ps(dj, v, _mm512_castps512_ps256(acc[t]));
                    acc[t] = _mm512_insertf32x8::<0>(acc[t], a0);
                }
            }
            b += g;
        }
        let sums: [f32; T] = std::array::from_fn(|t| {
            let (a0, a1) = (_mm512_castps512_ps256(acc[t]), _mm512_extractf32x8_ps::<1>(acc[t]));
            hsum(_mm256_add_ps(a0, a1))
        });
        match q.dtype {
            DType::Q8_0 => sums,
            _ => offsets::<T>(q, ps, b0, nb, sums),
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;
    use tandem_core::{DType, QuantView};

    use super::super::{decode_avx2, int_split, Order, XPrep};

    /// Weights of `rows` rows of nb blocks, bytes (32 per block: Q8_0 uses them all, Q4 the
    /// first 16 of each 32), scales and minimums from a hash, a few scales negative or tiny.
    fn weights(rows: usize, nb: usize) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
        let n = rows * nb;
        let qs = (0..n * 32).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
        let d = (0..n).map(|b| f16::from_f32(((b * 7919 % 211) as f32 - 90.0) * 1e-3)).collect();
        let m = (0..n).map(|b| f16::from_f32(((b * 104729 % 97) as f32 - 48.0) * 1e-2)).collect();
        (qs, d, m)
    }

    fn prep(x: &[f32], dtype: DType, pairs: bool) -> XPrep {
        let (ints, scales) = int_split(
            x,
            if dtype == DType::Q8_0 { Order::Natural } else { Order::Nibbles },
            pairs,
            false,
        );
        let mut p = XPrep::empty();
        p.ints = ints;
        p.scales = scales;
        p.sums = x.chunks_exact(32).map(|b| b.iter().sum()).collect();
        p.sums.resize(p.scales.len(), 0.0);
        p
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// The AVX-512 rows are the AVX2 rows to the bit: Q8_0, Q4_0 and Q4_1, one to eight
    /// tokens, rows of an odd block count (an unpaired last block, a partial scale group) and
    /// of whole groups, activations with an outlier and a zero block.
    #[test]
    fn avx512_rows_are_the_avx2_rows() {
        if !crate::Isa::Avx512.supported() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI, so only the AVX2 kernel runs here");
            return;
        }
        let rows = 7;
        for nb in [1, 2, 9, 16, 18, 48] {
            let (qs, d, m) = weights(rows, nb);
            let xs: Vec<Vec<f32>> = (0..8)
                .map(|t| {
                    let mut x: Vec<f32> = (0..nb * 32)
                        .map(|i| (((i + 31 * t) * 7919 % 1013) as f32 - 506.0) * 1e-3)
                        .collect();
                    let at = (3 + t) % x.len();
                    x[at] = 40.0;
                    if nb > 2 {
                        x[64..96].fill(0.0);
                    }
                    x
                })
                .collect();
            for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
                let q = QuantView { dtype, qs: &qs, d: &d, m: &m, finite_scales: false };
                let (std, pairs): (Vec<XPrep>, Vec<XPrep>) =
                    xs.iter().map(|x| (prep(x, dtype, false), prep(x, dtype, true))).unzip();
                let (ps, pp): (Vec<&XPrep>, Vec<&XPrep>) =
                    (std.iter().collect(), pairs.iter().collect());
                let (mut want, mut got) = (vec![0f32; 8 * rows], vec![0f32; 8 * rows]);
                // SAFETY: `Isa::Avx512.supported()` checked the features (AVX2's among them).
                unsafe {
                    decode_avx2::group_rows::<4>(q, &ps[..4], nb, 0, rows, &mut want[..4 * rows]);
                    decode_avx2::group_rows::<4>(q, &ps[4..], nb, 0, rows, &mut want[4 * rows..]);
                    super::group_rows::<8>(q, &pp, nb, 0, rows, &mut got);
                }
                assert_eq!(bits(&want), bits(&got), "{dtype} nb {nb}, 8 tokens");
                let mut one = vec![0f32; rows - 2];
                // SAFETY: as above.
                unsafe { super::rows(q, &pairs[6], nb, 2, &mut one) };
                assert_eq!(
                    bits(&one),
                    bits(&want[6 * rows + 2..7 * rows]),
                    "{dtype} nb {nb}, one token"
                );
            }
        }
    }
}
