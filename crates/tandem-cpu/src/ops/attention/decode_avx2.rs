//! AVX2 + FMA version of [`super::decode::score_part`] for head_dim % 8 == 0.
//!
//! Why by hand: the portable lane loops came out as 64-bit loads and separate multiplies and
//! adds inside the per-position, per-head loops, several times the work the bytes need. Here
//! each K vector is loaded once (8 lanes at a time, f16 widened by F16C) and dotted with every
//! query head of the group, and V is summed one 8-lane column at a time over all positions
//! with one accumulator per head, so nothing spills.

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
    for (j, t) in ts.clone().enumerate() {
        let off = g.kv_at(table, t, kvh);
        let k = &ck[off..off + hd];
        for (gi, qv) in qs.chunks_exact(hd).enumerate() {
            // SAFETY: k and qv hold hd elements, read 8 at a time below hd.
            let s = unsafe {
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut c = 0;
                while c + 16 <= hd {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qv.as_ptr().add(c)), load8(k.as_ptr().add(c)), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qv.as_ptr().add(c + 8)), load8(k.as_ptr().add(c + 8)), a1);
                    c += 16;
                }
                if c < hd {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qv.as_ptr().add(c)), load8(k.as_ptr().add(c)), a0);
                }
                hsum(_mm256_add_ps(a0, a1))
            };
            scores[gi * PART + j] = s * g.scale;
        }
    }
    super::decode::softmax_parts(scores, part, hd, len);
    // V: one 8-lane column at a time, all positions, one accumulator per head (up to 4 heads
    // per pass, in registers).
    let offs: Vec<usize> = ts.map(|t| g.kv_at(table, t, kvh)).collect();
    for g0 in (0..group).step_by(4) {
        let nh = (group - g0).min(4);
        for c in (0..hd).step_by(8) {
            // SAFETY: every offset + c + 8 <= offset + hd lies in cv (kv_at of a checked row);
            // scores hold len entries per head.
            unsafe {
                let mut acc = [_mm256_setzero_ps(); 4];
                for (j, &off) in offs.iter().enumerate() {
                    let v = load8(cv.as_ptr().add(off + c));
                    for h in 0..4 {
                        if h < nh {
                            let e = _mm256_broadcast_ss(&scores[(g0 + h) * PART + j]);
                            acc[h] = _mm256_fmadd_ps(e, v, acc[h]);
                        }
                    }
                }
                for h in 0..nh {
                    _mm256_storeu_ps(part[(g0 + h) * (hd + 2) + 2 + c..].as_mut_ptr(), acc[h]);
                }
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
