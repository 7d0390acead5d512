//! AVX2 + FMA version of [`super::decode::score_part`] for head_dim % 8 == 0.
//!
//! Why by hand: the portable lane loops came out as 64-bit loads and separate multiplies and
//! adds inside the per-position, per-head loops, several times the work the bytes need. Here
//! scores are taken four positions at a time per query head: four lane-wise accumulators,
//! then one horizontal reduction for all four (a reduction per position and head was as
//! much work as its dot product); f16 is widened by F16C on load. V is summed over the
//! positions in order with the accumulators of up to 3 heads x 4 columns in registers.

use std::arch::x86_64::*;

use super::decode::{Part, PART};
use super::KvElem;

/// Eight cache elements at `p` as f32.
#[inline(always)]
unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
    // SAFETY: callers pass 8 readable elements and run with AVX2 + F16C.
    unsafe {
        if T::F16 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        } else {
            _mm256_loadu_ps(p as *const f32)
        }
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: AVX is enabled in every caller.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

/// As the portable `score_part`: each query head's [max, sum, unnormalized output] into
/// `part`; scratch holds the scores ([group][PART]).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; head_dim % 8 == 0.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn score_part<T: KvElem>(args: Part<T>, scratch: &mut [f32], part: &mut [f32]) {
    let (qs, ck, cv, table, ts, kvh, g) = args;
    let (hd, len) = (g.hd, ts.len());
    let group = qs.len() / hd;
    assert!(hd % 8 == 0 && len <= PART && scratch.len() >= group * PART && part.len() >= group * (hd + 2));
    let scores = &mut scratch[..group * PART];
    let offs: Vec<usize> = ts.map(|t| g.kv_at(table, t, kvh)).collect();
    let (quads, tail) = (len / 4 * 4, len % 4);
    for gi in 0..group {
        let qv = &qs[gi * hd..(gi + 1) * hd];
        let sc = &mut scores[gi * PART..gi * PART + len];
        for j in (0..quads).step_by(4) {
            let o: [usize; 4] = [offs[j], offs[j + 1], offs[j + 2], offs[j + 3]];
            // SAFETY: each offset + hd lies in ck (kv_at of a checked row), qv holds hd
            // elements, and j + 4 <= len = sc.len().
            unsafe {
                let mut acc = [_mm256_setzero_ps(); 4];
                for c in (0..hd).step_by(8) {
                    let qc = _mm256_loadu_ps(qv.as_ptr().add(c));
                    for p in 0..4 {
                        acc[p] = _mm256_fmadd_ps(qc, load8(ck.as_ptr().add(o[p] + c)), acc[p]);
                    }
                }
                // Four lane sums at once: lanes [p0 p1 p2 p3] after the pairwise adds.
                let h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
                let four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                _mm_storeu_ps(sc.as_mut_ptr().add(j), _mm_mul_ps(four, _mm_set1_ps(g.scale)));
            }
        }
        for j in quads..quads + tail {
            // The same sums as a quad's lane, one position at a time.
            // SAFETY: as above.
            unsafe {
                let mut acc = _mm256_setzero_ps();
                for c in (0..hd).step_by(8) {
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(qv.as_ptr().add(c)), load8(ck.as_ptr().add(offs[j] + c)), acc);
                }
                let z = _mm256_setzero_ps();
                let h = _mm256_hadd_ps(_mm256_hadd_ps(acc, z), _mm256_hadd_ps(z, z));
                let four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                sc[j] = _mm_cvtss_f32(four) * g.scale;
            }
        }
    }
    super::decode::softmax_parts(scores, part, hd, len);
    // V: positions in order, up to 4 columns of 8 at a time, one accumulator per (head,
    // column) in registers (up to 3 heads x 4 columns + 3 scores + 1 V vector: AVX2's 16), so
    // each V vector is loaded once for 3 heads and each score broadcast once per 4 columns
    // (8 columns at a time broadcast every score 8 times).
    let half = hd / 2 / 8 * 8;
    for g0 in (0..group).step_by(3) {
        let nh = (group - g0).min(3);
        for (c0, cw) in [(0, half), (half, hd - half)] {
            let mut c = c0;
            while c < c0 + cw {
                let nc = ((c0 + cw - c) / 8).min(4);
                // SAFETY: every offset + c + 8 * nc <= offset + hd lies in cv (kv_at of a
                // checked row); scores hold len entries per head.
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); 4]; 3];
                    for (j, &off) in offs.iter().enumerate() {
                        let e: [__m256; 3] = std::array::from_fn(|h| _mm256_broadcast_ss(&scores[(g0 + h.min(nh - 1)) * PART + j]));
                        for i in 0..4 {
                            if i < nc {
                                let v = load8(cv.as_ptr().add(off + c + 8 * i));
                                for h in 0..3 {
                                    if h < nh {
                                        acc[h][i] = _mm256_fmadd_ps(e[h], v, acc[h][i]);
                                    }
                                }
                            }
                        }
                    }
                    for h in 0..nh {
                        for i in 0..nc {
                            _mm256_storeu_ps(part[(g0 + h) * (hd + 2) + 2 + c + 8 * i..].as_mut_ptr(), acc[h][i]);
                        }
                    }
                }
                c += 8 * nc;
            }
        }
    }
}

/// dot(a, b) for a.len() == b.len() == head_dim, head_dim % 8 == 0: the prompt kernel's
/// scores.
///
/// # Safety
/// The CPU must have AVX2 and FMA; both slices hold a multiple of 8 elements.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: reads below n, 8 at a time (n % 8 == 0 by contract).
    unsafe {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut c = 0;
        while c + 16 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(c)), _mm256_loadu_ps(b.as_ptr().add(c)), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(c + 8)), _mm256_loadu_ps(b.as_ptr().add(c + 8)), a1);
            c += 16;
        }
        if c + 8 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(c)), _mm256_loadu_ps(b.as_ptr().add(c)), a0);
        }
        hsum(_mm256_add_ps(a0, a1))
    }
}

/// acc += sum_j e[j] * vs[j], one 8-lane column of acc at a time held in a register: the
/// prompt kernel's weighted sum of a tile of V.
///
/// # Safety
/// The CPU must have AVX2 and FMA; acc and every vs[j] hold acc.len() % 8 == 0 elements.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpy_tile(acc: &mut [f32], e: &[f32], vs: &[&[f32]]) {
    let hd = acc.len();
    assert!(hd % 8 == 0 && vs.len() >= e.len() && vs.iter().take(e.len()).all(|v| v.len() >= hd));
    for c in (0..hd).step_by(8) {
        // SAFETY: c + 8 <= hd, checked above for acc and every row read.
        unsafe {
            let mut a = _mm256_loadu_ps(acc.as_ptr().add(c));
            for (v, ej) in vs.iter().zip(e) {
                a = _mm256_fmadd_ps(_mm256_broadcast_ss(ej), _mm256_loadu_ps(v.as_ptr().add(c)), a);
            }
            _mm256_storeu_ps(acc.as_mut_ptr().add(c), a);
        }
    }
}
