//! AVX2 + FMA version of [`super::decode::score_part`] for head_dim % 8 == 0.
//!
//! Why by hand: the portable lane loops came out as 64-bit loads and separate multiplies and
//! adds inside the per-position, per-head loops, several times the work the bytes need. Here
//! scores are taken four positions at a time per query head: four lane-wise accumulators,
//! then one horizontal reduction for all four (a reduction per position and head was as
//! much work as its dot product); f16 is widened by F16C on load. V is summed over the
//! positions in order with the accumulators of up to 3 heads x 4 columns in registers.

use std::arch::x86_64::*;
use std::cell::RefCell;

use tandem_core::dtype::QBLOCK;

use super::decode::{Part, PART};
use super::decode_q8::{self, Queries};
use super::{Geom, KvSrc};

thread_local! {
    /// A unit's query heads rounded for a q8_0 cache's integer products.
    static QUERIES: RefCell<Queries> = const { RefCell::new(Queries::new()) };
}

/// How many positions ahead of the one being scored its K vector is prefetched: a position's
/// vectors sit in blocks scattered over the cache, where the hardware's stride prefetchers
/// lose track, and the loop is otherwise waiting on each vector's memory latency.
const AHEAD: usize = 16;

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
/// `vnni`: a q8_0 K cache's integer products may use AVX-512 VNNI.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C (and AVX-512 F, BW, VL and VNNI if `vnni`);
/// head_dim % 8 == 0.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn score_part<K: KvSrc, V: KvSrc>(
    args: Part<K, V>,
    scratch: &mut [f32],
    part: &mut [f32],
    vnni: bool,
) {
    let (qs, ck, cv, table, ts, kvh, g) = args;
    let (hd, len) = (g.hd, ts.len());
    let group = qs.len() / hd;
    assert!(
        hd % 8 == 0
            && len <= PART
            && scratch.len() >= group * PART
            && part.len() >= group * (hd + 2)
    );
    let scores = &mut scratch[..group * PART];
    // On the stack (len <= PART): a Vec here was three allocations a layer.
    let mut at = [0usize; PART];
    for (o, t) in at.iter_mut().zip(ts) {
        *o = g.kv_at(table, t, kvh);
    }
    let offs = &at[..len];
    // K for the first positions now; before positions j..j + 4 are scored, the K vectors AHEAD
    // positions on and their own V vectors (for the pass over V).
    for &off in offs.iter().take(AHEAD) {
        ck.prefetch(off, hd);
    }
    let ahead = |j: usize| {
        for &off in offs.iter().skip(j + AHEAD).take(4) {
            ck.prefetch(off, hd);
        }
        for &off in offs.iter().skip(j).take(4) {
            cv.prefetch(off, hd);
        }
    };
    let (quads, tail) = (len / 4 * 4, len % 4);
    // A q8_0 K cache: integer products with the queries rounded to 16 bits (decode_q8.rs).
    if let Some(k8) = ck.q8().filter(|_| hd % QBLOCK == 0) {
        let done = QUERIES.with_borrow_mut(|rounded| {
            if !rounded.round(qs, hd) {
                return false;
            }
            // SAFETY: AVX2 and F16C (this function's features), AVX-512 VNNI where `vnni`
            // says so; every offset + hd lies in the cache (kv_at of a checked row); the
            // queries were rounded from qs.
            unsafe {
                if vnni {
                    decode_q8::scores_vnni(rounded, k8, offs, hd, g.scale, scores, ahead)
                } else {
                    decode_q8::scores(rounded, k8, offs, hd, g.scale, scores, ahead)
                }
            };
            true
        });
        if done {
            // SAFETY: as this function's.
            return unsafe { values(scores, cv, offs, part, g, group) };
        }
    }
    // Up to 3 query heads per pass over K, so each K vector is loaded (and widened or
    // dequantized) once for them all: 3 heads x 4 positions of accumulators fill 12 of AVX2's
    // 16 registers. Each (head, position) sums over the columns in order as it would alone.
    for g0 in (0..group).step_by(3) {
        let nh = (group - g0).min(3);
        let q = |h: usize| &qs[(g0 + h.min(nh - 1)) * hd..][..hd];
        for j in (0..quads).step_by(4) {
            if g0 == 0 {
                ahead(j);
            }
            let o: [usize; 4] = [offs[j], offs[j + 1], offs[j + 2], offs[j + 3]];
            // SAFETY: each offset + hd lies in ck (kv_at of a checked row), each query head
            // holds hd elements, and j + 4 <= len.
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); 4]; 3];
                for c in (0..hd).step_by(8) {
                    for p in 0..4 {
                        let k = ck.load8(o[p] + c);
                        for h in 0..3 {
                            if h < nh {
                                let qc = _mm256_loadu_ps(q(h).as_ptr().add(c));
                                acc[h][p] = _mm256_fmadd_ps(qc, k, acc[h][p]);
                            }
                        }
                    }
                }
                for (h, acc) in acc.iter().enumerate().take(nh) {
                    // Four lane sums at once: lanes [p0 p1 p2 p3] after the pairwise adds.
                    let h4 = _mm256_hadd_ps(
                        _mm256_hadd_ps(acc[0], acc[1]),
                        _mm256_hadd_ps(acc[2], acc[3]),
                    );
                    let four = _mm_add_ps(_mm256_castps256_ps128(h4), _mm256_extractf128_ps(h4, 1));
                    let sc = scores[(g0 + h) * PART + j..].as_mut_ptr();
                    _mm_storeu_ps(sc, _mm_mul_ps(four, _mm_set1_ps(g.scale)));
                }
            }
        }
        for j in quads..quads + tail {
            // The same sums as a quad's lane, one position at a time.
            // SAFETY: as above.
            unsafe {
                let mut acc = [_mm256_setzero_ps(); 3];
                for c in (0..hd).step_by(8) {
                    let k = ck.load8(offs[j] + c);
                    for h in 0..3 {
                        if h < nh {
                            let qc = _mm256_loadu_ps(q(h).as_ptr().add(c));
                            acc[h] = _mm256_fmadd_ps(qc, k, acc[h]);
                        }
                    }
                }
                let z = _mm256_setzero_ps();
                for (h, &acc) in acc.iter().enumerate().take(nh) {
                    let h4 = _mm256_hadd_ps(_mm256_hadd_ps(acc, z), _mm256_hadd_ps(z, z));
                    let four = _mm_add_ps(_mm256_castps256_ps128(h4), _mm256_extractf128_ps(h4, 1));
                    scores[(g0 + h) * PART + j] = _mm_cvtss_f32(four) * g.scale;
                }
            }
        }
    }
    // SAFETY: as this function's.
    unsafe { values(scores, cv, offs, part, g, group) }
}

/// The softmax of the scores, then V weighted by them into `part` (as [`score_part`]).
///
/// # Safety
/// As [`score_part`]; `offs` are checked rows' vectors of V.
#[inline(always)]
unsafe fn values<V: KvSrc>(
    scores: &mut [f32],
    cv: V,
    offs: &[usize],
    part: &mut [f32],
    g: Geom,
    group: usize,
) {
    let (hd, len) = (g.hd, offs.len());
    super::decode::softmax_parts(scores, part, g, len);
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
                // A blocked cache's columns inside one block (each head's blocks start at
                // its first value when hd % 32 == 0): the block's scale goes into the three
                // weights, not into every value.
                let fold = V::BLOCKS && hd % QBLOCK == 0 && c % QBLOCK + 8 * nc <= QBLOCK;
                let at = (g0, nh, c, nc);
                // SAFETY: every offset + c + 8 * nc <= offset + hd lies in cv (kv_at of a
                // checked row); scores hold len entries per head.
                let acc = unsafe {
                    if fold {
                        columns_v::<V, true>(&*scores, cv, offs, at)
                    } else {
                        columns_v::<V, false>(&*scores, cv, offs, at)
                    }
                };
                for h in 0..nh {
                    for i in 0..nc {
                        // SAFETY: part holds group * (hd + 2) values, c + 8 * nc <= hd.
                        unsafe {
                            _mm256_storeu_ps(
                                part[(g0 + h) * (hd + 2) + 2 + c + 8 * i..].as_mut_ptr(),
                                acc[h][i],
                            );
                        }
                    }
                }
                c += 8 * nc;
            }
        }
    }
}

/// Columns c..c + 8 * nc of V summed over the positions in order, weighted by the scores of
/// up to 3 query heads from g0: (g0, nh, c, nc) = `at`. FOLD: the columns share one block, whose
/// scale multiplies each weight instead of each value.
///
/// # Safety
/// AVX2 and FMA; every offset + c + 8 * nc lies in cv; scores hold offs.len() per head.
#[inline(always)]
unsafe fn columns_v<V: KvSrc, const FOLD: bool>(
    scores: &[f32],
    cv: V,
    offs: &[usize],
    (g0, nh, c, nc): (usize, usize, usize, usize),
) -> [[__m256; 4]; 3] {
    // SAFETY: the caller's bounds.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 4]; 3];
        for (j, &off) in offs.iter().enumerate() {
            let w = |h: usize| scores[(g0 + h.min(nh - 1)) * PART + j];
            let e: [__m256; 3] = if FOLD {
                let d = cv.block_scale(off + c);
                std::array::from_fn(|h| _mm256_set1_ps(w(h) * d))
            } else {
                std::array::from_fn(|h| _mm256_set1_ps(w(h)))
            };
            for i in 0..4 {
                if i < nc {
                    let e_i = off + c + 8 * i;
                    let v = if FOLD { cv.codes8(e_i) } else { cv.load8(e_i) };
                    for h in 0..3 {
                        if h < nh {
                            acc[h][i] = _mm256_fmadd_ps(e[h], v, acc[h][i]);
                        }
                    }
                }
            }
        }
        acc
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
            a0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(c)),
                _mm256_loadu_ps(b.as_ptr().add(c)),
                a0,
            );
            a1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(c + 8)),
                _mm256_loadu_ps(b.as_ptr().add(c + 8)),
                a1,
            );
            c += 16;
        }
        if c + 8 <= n {
            a0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(c)),
                _mm256_loadu_ps(b.as_ptr().add(c)),
                a0,
            );
        }
        hsum(_mm256_add_ps(a0, a1))
    }
}

/// s[j] = dot(q, ks[j]) * scale for 8 keys at once: 8 independent accumulators (one key's
/// `dot` is a chain of dependent fmas) reduced together, 8 sums in one register. Each key's
/// sum is a fixed tree over its lanes, so a score depends on q and its key alone.
///
/// # Safety
/// The CPU must have AVX2 and FMA; q and the 8 keys hold q.len() % 8 == 0 elements.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn scores8(q: &[f32], ks: &[&[f32]], scale: f32, s: &mut [f32]) {
    let hd = q.len();
    assert!(
        hd.is_multiple_of(8) && ks.len() == 8 && s.len() == 8 && ks.iter().all(|k| k.len() >= hd)
    );
    // SAFETY: reads below hd of q and of every key, checked above.
    unsafe {
        let mut a = [_mm256_setzero_ps(); 8];
        for c in (0..hd).step_by(8) {
            let qv = _mm256_loadu_ps(q.as_ptr().add(c));
            for (ai, k) in a.iter_mut().zip(ks) {
                *ai = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.as_ptr().add(c)), *ai);
            }
        }
        let (t0, t1) = (_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let (t2, t3) = (_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        let (u0, u1) = (_mm256_hadd_ps(t0, t1), _mm256_hadd_ps(t2, t3));
        let sums = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(u0, u1),
            _mm256_permute2f128_ps::<0x31>(u0, u1),
        );
        _mm256_storeu_ps(s.as_mut_ptr(), _mm256_mul_ps(sums, _mm256_set1_ps(scale)));
    }
}

/// acc += sum_j e[j] * vs[j]: the prompt kernel's weighted sum of a tile of V. Each element
/// takes its fmas in j order, so the result is that of one column at a time; but 64 lanes (8
/// registers) go at once, j outermost: one column at a time would be a chain of dependent fmas,
/// each waiting out the last one's latency.
///
/// # Safety
/// The CPU must have AVX2 and FMA; acc and every vs[j] hold acc.len() % 8 == 0 elements.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpy_tile(acc: &mut [f32], e: &[f32], vs: &[&[f32]]) {
    let hd = acc.len();
    assert!(
        hd.is_multiple_of(8)
            && vs.len() >= e.len()
            && vs.iter().take(e.len()).all(|v| v.len() >= hd)
    );
    let mut c = 0;
    while c < hd {
        // SAFETY: c + 8 * width <= hd, checked above for acc and every row read.
        unsafe {
            c += match (hd - c) / 8 {
                8.. => columns::<8>(acc, e, vs, c),
                4.. => columns::<4>(acc, e, vs, c),
                2.. => columns::<2>(acc, e, vs, c),
                _ => columns::<1>(acc, e, vs, c),
            };
        }
    }
}

/// [`axpy_tile`] over acc[c..c + 8 * W], in W registers; returns 8 * W.
///
/// # Safety
/// As [`axpy_tile`], with c + 8 * W <= acc.len().
#[inline(always)]
unsafe fn columns<const W: usize>(acc: &mut [f32], e: &[f32], vs: &[&[f32]], c: usize) -> usize {
    // SAFETY: the caller's bounds.
    unsafe {
        let mut a: [__m256; W] =
            std::array::from_fn(|i| _mm256_loadu_ps(acc.as_ptr().add(c + 8 * i)));
        for (v, ej) in vs.iter().zip(e) {
            let b = _mm256_broadcast_ss(ej);
            for (i, ai) in a.iter_mut().enumerate() {
                *ai = _mm256_fmadd_ps(b, _mm256_loadu_ps(v.as_ptr().add(c + 8 * i)), *ai);
            }
        }
        for (i, ai) in a.iter().enumerate() {
            _mm256_storeu_ps(acc.as_mut_ptr().add(c + 8 * i), *ai);
        }
    }
    8 * W
}
