//! Decode scores over a q8_0 K cache as integer dot products (AVX2), in the 16-bit
//! activation class ([`tandem_core::ops::Precision::I16Activations`]): each query head is
//! rounded to 16 bits per block of 32 (x ~ s * q, q in -32767..=32767, s = max |x| / 32767),
//! multiplied with the block's codes exactly in integers (`vpmaddwd`), and each block's
//! integer sum is scaled by s and the block's scale in f32.
//!
//! Why: dequantizing every K code to f32 (widen, convert, broadcast the block's scale,
//! multiply) took more instructions per value than an f16 cache's widening, so a q8_0 cache
//! read half the bytes and was no faster. Here 16 products are one instruction, and the
//! scales are applied once per block and position.
//!
//! A score depends on its query and its position's K alone (four positions go through the
//! lanes of one reduction, each in its own lane), so it is the same whatever else is in the
//! partition, the step or the batch.

use std::arch::x86_64::*;

use tandem_core::dtype::QBLOCK;

use super::decode::PART;
use super::kv::Q8;
use crate::ops::matmul::prep::{int_split_into, Order};

/// The query heads of a group rounded to 16 bits per block of 32.
pub(super) struct Queries {
    /// [heads][head_dim] codes.
    ints: Vec<i16>,
    /// [heads][head_dim / 32] block scales s (zeros after them, to a multiple of 8).
    scales: Vec<f32>,
}

impl Queries {
    pub const fn new() -> Self {
        Queries { ints: Vec::new(), scales: Vec::new() }
    }

    /// Rounds `qs` ([heads][hd], hd % 32 == 0) as the matmul rounds its activations (its
    /// `int_split`, element order, no low half). False (and nothing to use) when a query holds
    /// a NaN or an infinity: the f32 kernel then keeps the float path's NaN and infinities.
    pub fn round(&mut self, qs: &[f32], hd: usize) -> bool {
        debug_assert!(hd.is_multiple_of(QBLOCK));
        if !qs.iter().all(|v| v.is_finite()) {
            return false;
        }
        int_split_into(qs, Order::Natural, false, false, &mut self.ints, &mut self.scales);
        true
    }
}

/// Scores ([group][PART], scaled by `scale`) of the query heads in `q` at the cache offsets
/// `offs` (each a head vector's first element, hd % 32 == 0); `ahead(j)` is called before
/// positions j..j + 4 (to prefetch).
///
/// # Safety
/// The CPU must have AVX2 and F16C; every offset + hd lies in `k`; `q` was rounded from
/// `scores.len() / PART` heads of `hd` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scores(
    q: &Queries,
    k: Q8,
    offs: &[usize],
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    ahead: impl Fn(usize),
) {
    // SAFETY: the caller's contract.
    unsafe { scores_with::<false>(q, k, offs, hd, scale, scores, ahead) }
}

/// [`scores`] with AVX-512 VNNI's fused multiply-adds of 16-bit pairs (`vpdpwssd`): the same
/// integers, so the same scores.
///
/// # Safety
/// As [`scores`], and the CPU must have AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn scores_vnni(
    q: &Queries,
    k: Q8,
    offs: &[usize],
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    ahead: impl Fn(usize),
) {
    // SAFETY: the caller's contract.
    unsafe { scores_with::<true>(q, k, offs, hd, scale, scores, ahead) }
}

/// The body of [`scores`] and [`scores_vnni`].
///
/// # Safety
/// As [`scores`]; VNNI: as [`scores_vnni`].
#[inline(always)]
unsafe fn scores_with<const VNNI: bool>(
    q: &Queries,
    k: Q8,
    offs: &[usize],
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    ahead: impl Fn(usize),
) {
    let (group, nb) = (q.ints.len() / hd, hd / QBLOCK);
    assert!(q.scales.len() >= group * nb && scores.len() >= group * PART && offs.len() <= PART);
    assert!(offs.iter().all(|&o| o + hd <= k.qs.len() && (o + hd) / QBLOCK <= k.d.len()));
    let len = offs.len();
    for g0 in (0..group).step_by(3) {
        let nh = (group - g0).min(3);
        for j in (0..len).step_by(4) {
            if g0 == 0 {
                ahead(j);
            }
            // A partial quad repeats its last position in the spare lanes, never stored.
            let o: [usize; 4] = std::array::from_fn(|p| offs[(j + p).min(len - 1)]);
            // SAFETY: offsets checked above, queries of nh <= 3 heads from g0.
            let acc = unsafe { quad::<VNNI>(q, k, &o, g0, nh, nb) };
            for (h, acc) in acc.iter().enumerate().take(nh) {
                let mut four = [0f32; 4];
                // SAFETY: four holds 4 lanes.
                unsafe { _mm_storeu_ps(four.as_mut_ptr(), _mm_mul_ps(*acc, _mm_set1_ps(scale))) };
                let n = (len - j).min(4);
                scores[(g0 + h) * PART + j..][..n].copy_from_slice(&four[..n]);
            }
        }
    }
}

/// The unscaled scores of up to 3 query heads (from g0) at 4 positions, one per lane.
///
/// # Safety
/// As [`scores`].
#[inline(always)]
unsafe fn quad<const VNNI: bool>(
    q: &Queries,
    k: Q8,
    o: &[usize; 4],
    g0: usize,
    nh: usize,
    nb: usize,
) -> [__m128; 3] {
    let hd = nb * QBLOCK;
    // SAFETY: the caller's bounds.
    unsafe {
        let mut acc = [_mm_setzero_ps(); 3];
        for b in 0..nb {
            let mut t = [[_mm256_setzero_si256(); 4]; 3];
            for p in 0..4 {
                let kp = k.qs.as_ptr().add(o[p] + b * QBLOCK) as *const __m128i;
                let k0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(kp));
                let k1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(kp.add(1)));
                for h in 0..3 {
                    if h < nh {
                        let qp = q.ints.as_ptr().add((g0 + h) * hd + b * QBLOCK) as *const __m256i;
                        let (q0, q1) = (_mm256_loadu_si256(qp), _mm256_loadu_si256(qp.add(1)));
                        t[h][p] = if VNNI {
                            _mm256_dpwssd_epi32(_mm256_madd_epi16(k0, q0), k1, q1)
                        } else {
                            _mm256_add_epi32(_mm256_madd_epi16(k0, q0), _mm256_madd_epi16(k1, q1))
                        };
                    }
                }
            }
            // The four positions' block scales, widened exactly.
            let d = |p: usize| k.d.get_unchecked((o[p] + b * QBLOCK) / QBLOCK).to_bits() as i16;
            let dk = _mm_cvtph_ps(_mm_setr_epi16(d(0), d(1), d(2), d(3), 0, 0, 0, 0));
            for h in 0..nh {
                // Lane sums of the four positions at once: [p0 p1 p2 p3] (exact in i32: at most
                // 32 * 127 * 32767 in magnitude).
                let s = _mm256_hadd_epi32(
                    _mm256_hadd_epi32(t[h][0], t[h][1]),
                    _mm256_hadd_epi32(t[h][2], t[h][3]),
                );
                let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                let qs = _mm_set1_ps(*q.scales.get_unchecked((g0 + h) * nb + b));
                acc[h] = _mm_fmadd_ps(_mm_cvtepi32_ps(s), _mm_mul_ps(qs, dk), acc[h]);
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// A deterministic spread of values with an outlier every 7th.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let v = (s % 20001) as f32 / 10000.0 - 1.0;
                if i % 7 == 3 {
                    v * 30.0
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn queries_round_to_16_bits_of_their_block() {
        let x = values(3 * 64, 1);
        let mut q = Queries::new();
        assert!(q.round(&x, 64));
        for (b, blk) in x.chunks_exact(QBLOCK).enumerate() {
            let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = q.scales[b];
            assert_eq!(s, amax / 32767.0);
            for (i, &v) in blk.iter().enumerate() {
                let code = q.ints[b * QBLOCK + i];
                assert!((s * code as f32 - v).abs() <= s * 0.5 + amax * 1e-6, "{v} as {code}");
            }
        }
        // A zero block: zero codes and a zero scale.
        assert!(q.round(&[0.0; 32], 32));
        assert!(q.ints.iter().all(|&c| c == 0) && q.scales[0] == 0.0);
        // Non-finite queries are left to the float path.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut y = x.clone();
            y[70] = bad;
            assert!(!q.round(&y, 64), "{bad}");
        }
    }

    #[test]
    fn integer_scores_are_the_rounded_dot_products_position_by_position() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            eprintln!("SKIP integer_scores: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let (hd, group, positions) = (64, 5, 11);
        let qf = values(group * hd, 2);
        let mut q = Queries::new();
        assert!(q.round(&qf, hd));
        let codes: Vec<u8> = values(positions * hd, 3)
            .iter()
            .map(|v| (v * 4.0).clamp(-127.0, 127.0) as i8 as u8)
            .collect();
        let d: Vec<f16> =
            (0..positions * hd / QBLOCK).map(|b| f16::from_f32(0.01 + b as f32 * 1e-3)).collect();
        let k = Q8 { qs: &codes, d: &d };
        // Positions out of order, as a block table gives them.
        let offs: Vec<usize> = [7, 0, 3, 10, 1, 9, 2].iter().map(|p| p * hd).collect();
        let run = |offs: &[usize]| {
            let mut s = vec![f32::NAN; group * PART];
            // SAFETY: AVX2/FMA/F16C detected above; offsets + hd inside the cache.
            unsafe { scores(&q, k, offs, hd, 0.125, &mut s, |_| {}) };
            s
        };
        let all = run(&offs);
        for (j, &off) in offs.iter().enumerate() {
            let alone = run(&[off]);
            for h in 0..group {
                let want: f64 = (0..hd)
                    .map(|i| {
                        let qv = q.scales[h * 2 + i / QBLOCK] as f64 * q.ints[h * hd + i] as f64;
                        let kv = d[(off + i) / QBLOCK].to_f64() * (codes[off + i] as i8) as f64;
                        qv * kv
                    })
                    .sum::<f64>()
                    * 0.125;
                let got = all[h * PART + j];
                assert!((got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{got} {want}");
                // A position's score is the same in a quad or alone in the lanes.
                assert_eq!(got.to_bits(), alone[h * PART].to_bits(), "head {h} position {j}");
            }
        }
    }
}
