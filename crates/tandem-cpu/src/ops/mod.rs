//! One file per op, each with its scalar `reference` and its multithreaded `fast` function
//! side by side, plus `run`, which checks the op against its buffers and picks one.

pub(crate) mod add;
pub(crate) mod argmax;
pub(crate) mod attention;
pub(crate) mod copy_rows;
pub(crate) mod embed;
pub(crate) mod geglu;
pub(crate) mod hadamard;
pub(crate) mod kv_write;
pub(crate) mod lora;
pub(crate) mod mask_logits;
pub(crate) mod matmul;
pub(crate) mod moe;
pub(crate) mod rms_norm;
pub(crate) mod rope;
pub(crate) mod sample;
pub(crate) mod softcap;
pub(crate) mod swiglu;

/// Lanes of the vectorizable loops: independent accumulators the compiler maps onto SIMD
/// registers (f32 addition is not associative, so it never reorders a single accumulator).
pub(crate) const LANES: usize = 16;

/// Dot product with `LANES` independent partial sums. Both slices have the same length.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    hsum(&acc) + tail
}

/// [`dot`] of x with each of R rows, each bit for bit `dot(x, row)`: the same lane sums in
/// the same order, interleaved. Why: one dot is a chain of dependent adds (latency-bound, a
/// sixth of what the FMA units could do); R independent chains fill them, and x is loaded
/// once for all R.
#[inline(always)]
pub(crate) fn dots<const R: usize>(x: &[f32], rows: [&[f32]; R]) -> [f32; R] {
    let n = rows.iter().fold(x.len(), |n, r| n.min(r.len()));
    let (x, rows) = (&x[..n], rows.map(|r| &r[..n]));
    let mut acc = [[0f32; LANES]; R];
    let whole = n - n % LANES;
    for c in (0..whole).step_by(LANES) {
        let xc: &[f32; LANES] = x[c..c + LANES].try_into().unwrap();
        for (a, row) in acc.iter_mut().zip(&rows) {
            let wc: &[f32; LANES] = row[c..c + LANES].try_into().unwrap();
            for l in 0..LANES {
                a[l] += xc[l] * wc[l];
            }
        }
    }
    std::array::from_fn(|r| {
        let mut tail = 0f32;
        for (a, b) in x[whole..].iter().zip(&rows[r][whole..]) {
            tail += a * b;
        }
        hsum(&acc[r]) + tail
    })
}

/// [`dots`] for 4 rows in AVX2 registers (the portable loop spilled its 4 x 16 accumulators
/// and ran slower than 4 separate dots): each row's 16 lane sums are two vectors, added in
/// `dot`'s order (a multiply, then an add: no FMA, as `dot` compiles), then reduced by `hsum`.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn dots4_avx2(x: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = rows.iter().fold(x.len(), |n, r| n.min(r.len()));
    let whole = n - n % LANES;
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    for c in (0..whole).step_by(LANES) {
        // SAFETY: c + 16 <= whole <= the length of x and of every row.
        unsafe {
            let x0 = _mm256_loadu_ps(x.as_ptr().add(c));
            let x1 = _mm256_loadu_ps(x.as_ptr().add(c + 8));
            for (a, row) in acc.iter_mut().zip(&rows) {
                a[0] = _mm256_add_ps(a[0], _mm256_mul_ps(x0, _mm256_loadu_ps(row.as_ptr().add(c))));
                a[1] = _mm256_add_ps(
                    a[1],
                    _mm256_mul_ps(x1, _mm256_loadu_ps(row.as_ptr().add(c + 8))),
                );
            }
        }
    }
    // Stored in a loop of their own: a closure borrowing `acc` made the compiler store every
    // accumulator on each turn of the loop above.
    let mut sums = [[0f32; LANES]; 4];
    for (s, a) in sums.iter_mut().zip(acc) {
        // SAFETY: s holds 16 floats.
        unsafe {
            _mm256_storeu_ps(s.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(s.as_mut_ptr().add(8), a[1]);
        }
    }
    std::array::from_fn(|r| {
        let lanes = sums[r];
        let mut tail = 0f32;
        for (a, b) in x[whole..n].iter().zip(&rows[r][whole..n]) {
            tail += a * b;
        }
        hsum(&lanes) + tail
    })
}

/// [`dots`] of T tokens with the same 4 rows, in AVX-512: one 512-bit register holds a dot's
/// 16 lane sums (`dot`'s, added in its order: a multiply, then an add), so a 4 x 4 tile's
/// accumulators fit in the registers, and each loaded vector of a row or a token serves 4
/// products. Why: batched decode rows (a verify step's K + 1 tokens) then cost little more
/// than one token's, which reads the rows from memory. out[t][r] = dot(xs[t], rows[r]).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn dots_avx512<const T: usize>(
    xs: [&[f32]; T],
    rows: [&[f32]; 4],
) -> [[f32; 4]; T] {
    use std::arch::x86_64::*;
    let n = rows.iter().chain(&xs).fold(usize::MAX, |n, r| n.min(r.len()));
    let whole = n - n % LANES;
    let mut acc = [[_mm512_setzero_ps(); 4]; T];
    for c in (0..whole).step_by(LANES) {
        // SAFETY: c + 16 <= whole <= the length of every token and row.
        unsafe {
            let w: [__m512; 4] = std::array::from_fn(|r| _mm512_loadu_ps(rows[r].as_ptr().add(c)));
            for (a, x) in acc.iter_mut().zip(&xs) {
                let xv = _mm512_loadu_ps(x.as_ptr().add(c));
                for r in 0..4 {
                    a[r] = _mm512_add_ps(a[r], _mm512_mul_ps(xv, w[r]));
                }
            }
        }
    }
    // Stored in a loop of their own (see `dots4_avx2`).
    let mut sums = [[[0f32; LANES]; 4]; T];
    for (st, at) in sums.iter_mut().zip(acc) {
        for (s, a) in st.iter_mut().zip(at) {
            // SAFETY: s holds 16 floats.
            unsafe { _mm512_storeu_ps(s.as_mut_ptr(), a) };
        }
    }
    std::array::from_fn(|t| {
        std::array::from_fn(|r| {
            let lanes = sums[t][r];
            let mut tail = 0f32;
            for (a, b) in xs[t][whole..n].iter().zip(&rows[r][whole..n]) {
                tail += a * b;
            }
            hsum(&lanes) + tail
        })
    })
}

/// Pairwise sum of the lanes, a fixed order so results do not depend on the thread count.
#[inline(always)]
pub(crate) fn hsum(acc: &[f32; LANES]) -> f32 {
    let mut v = *acc;
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            v[l] += v[l + w];
        }
    }
    v[0]
}

/// Sum with `LANES` independent partial sums, added pairwise: a fixed order.
#[inline(always)]
pub(crate) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let c = xs.chunks_exact(LANES);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for l in 0..LANES {
            acc[l] += x[l];
        }
    }
    hsum(&acc) + tail
}

/// The largest element, NaNs ignored (as `f32::max` does); -inf for an empty slice. Lane-wise
/// so it vectorizes: the maximum does not depend on the order anyway.
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let c = xs.chunks_exact(LANES);
    let mut m = c.remainder().iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    for x in c {
        for l in 0..LANES {
            acc[l] = if x[l] > acc[l] { x[l] } else { acc[l] };
        }
    }
    for a in acc {
        m = m.max(a);
    }
    m
}

/// x = e^(x - m) for every element: softmax's numerator, vectorized (libm's `expf` is a call
/// per element, and a long context's attention makes millions of them per token).
#[inline(always)]
pub(crate) fn exp_sub(xs: &mut [f32], m: f32) {
    for x in xs {
        *x = exp(*x - m);
    }
}

/// e^x to within about 2 ulp, written so it vectorizes: Cody-Waite reduction x = n ln2 + r
/// with |r| <= ln2/2, Cephes' degree-6 polynomial for e^r, and 2^n built in the exponent bits.
/// Below -87.33 (where e^x leaves the normal range) it is 0; NaN stays NaN. Only used on
/// arguments <= 0 (a score minus its maximum), so overflow needs no care beyond the clamp.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5 * 2^23 rounds to an integer (the default rounding mode, to nearest) and
    // leaves that integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.33, 88.7);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits((ni + 127).clamp(0, 255) as u32 * (1 << 23));
    let e = p * scale;
    if x < -87.33 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

/// tanh(x) to within a few ulp, written so it vectorizes (libm's `tanhf` is a call per
/// element; soft-capped attention takes one per score). For |x| < 0.625 Cephes' odd
/// polynomial; else (1 - e) / (1 + e) with e = e^(-2|x|) <= 0.29, which neither cancels nor
/// overflows (and is 1 for |x| = inf). NaN stays NaN.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let s = x * x;
    let mut p = -5.704_988_7e-3f32;
    p = p * s + 2.063_909e-2;
    p = p * s - 5.373_971_6e-2;
    p = p * s + 0.133_314_42;
    p = p * s - 0.333_332_8;
    let small = p * s * x + x;
    let e = exp(-2.0 * a);
    let large = ((1.0 - e) / (1.0 + e)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// Rows per parallel task: enough tasks to balance `threads` workers, not so few rows that
/// scheduling dominates.
pub(crate) fn chunk_rows(rows: usize, threads: usize, min: usize) -> usize {
    rows.div_ceil(threads.max(1) * 4).max(min).max(1)
}

/// Runs `work(i, chunk)` over `out.chunks_mut(c)` across the step's team (the calling thread
/// included), each chunk claimed by whoever is free; see [`crate::team`].
pub(crate) fn par_chunks_caller<T, F>(
    team: &crate::team::Team,
    threads: usize,
    out: &mut [T],
    c: usize,
    work: F,
) where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync,
{
    let (len, c) = (out.len(), c.max(1));
    let chunks = len.div_ceil(c);
    if threads <= 1 || chunks <= 1 {
        return out.chunks_mut(c).enumerate().for_each(|(i, o)| work(i, o));
    }
    let base = OutPtr(out.as_mut_ptr());
    team.run(chunks, &|i| {
        let (start, end) = (i * c, ((i + 1) * c).min(len));
        // SAFETY: each index is run exactly once, so the chunks are disjoint ranges of `out`,
        // which stays mutably borrowed until every item is done.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        work(i, chunk);
    });
}

/// The output's base pointer, shared by the team in [`par_chunks_caller`]; a method, not the
/// field, so closures capture the whole (Sync) wrapper.
struct OutPtr<T>(*mut T);
// SAFETY: only used to build disjoint chunks, see `par_chunks_caller`; T: Send is required there.
unsafe impl<T: Send> Sync for OutPtr<T> {}
impl<T> OutPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tanh` against f64's over both branches, the switch between them, the saturated range
    /// and the specials.
    #[test]
    fn tanh_is_within_a_few_ulp() {
        let ulp = |v: f32| f32::from_bits(v.abs().to_bits() + 1) - v.abs();
        let mut x = 1e-6f32;
        while x < 20.0 {
            for v in [x, -x] {
                let (got, want) = (tanh(v), (v as f64).tanh() as f32);
                assert!((got - want).abs() <= 4.0 * ulp(want), "tanh({v}) = {got}, want {want}");
            }
            x *= 1.0001;
        }
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh(0.0).to_bits(), 0f32.to_bits());
        assert!(tanh(f32::NAN).is_nan());
    }

    /// `dots` (and its AVX2 form) give each row `dot`'s bits, with a tail past the last 16
    /// lanes and values whose sums round differently in another order.
    #[test]
    fn dots_are_dot_bit_for_bit() {
        for n in [0, 5, 16, 576, 579] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.7e-3).collect();
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| {
                    (0..n)
                        .map(|i| (((i + 97 * r) * 104729 % 997) as f32 - 498.0) * 3.1e-2)
                        .collect()
                })
                .collect();
            let want: Vec<u32> = rows.iter().map(|w| dot(&x, w).to_bits()).collect();
            let refs: [&[f32]; 4] = std::array::from_fn(|r| rows[r].as_slice());
            assert_eq!(dots::<4>(&x, refs).map(f32::to_bits).to_vec(), want, "portable, n = {n}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 was detected.
                assert_eq!(
                    unsafe { dots4_avx2(&x, refs) }.map(f32::to_bits).to_vec(),
                    want,
                    "AVX2, n = {n}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f") {
                let y: Vec<f32> = x.iter().map(|v| v * -0.37).collect();
                let want_y: Vec<u32> = rows.iter().map(|w| dot(&y, w).to_bits()).collect();
                // SAFETY: AVX-512F was detected.
                let [a, b] = unsafe { dots_avx512::<2>([&x, &y], refs) };
                assert_eq!(
                    (a.map(f32::to_bits).to_vec(), b.map(f32::to_bits).to_vec()),
                    (want.clone(), want_y),
                    "AVX-512, n = {n}"
                );
            } else {
                eprintln!("AVX-512 dots not checked: this CPU has no AVX-512F");
            }
        }
    }
}
