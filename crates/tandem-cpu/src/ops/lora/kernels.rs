//! The fast loops of LoRA's shrink (a dot product per output) and expand (an axpy per rank),
//! register-blocked without changing a bit: several outputs' dot products share each load of
//! x, each keeping its own lanes and order; the expand keeps a strip of outputs in registers
//! across the ranks instead of loading and storing it once per rank. Written once, built for
//! the target's baseline and, on x86-64, again with AVX2 enabled (wider vectors, the same
//! separate multiplies and adds: Rust never fuses them).

use half::slice::HalfFloatSliceExt;

use crate::table::Weight;

/// Outputs whose dot products run at once (they share each load of x).
const OUTS: usize = 4;
/// Lanes of one output's partial sums.
const LANES: usize = 8;
/// Outputs the expand keeps in registers across the ranks.
const STRIP: usize = 32;

/// out[r] = dot(row r of `w` (rows of k), x) for r < out.len(): see [`dot_n`].
pub(super) fn dots(w: Weight, k: usize, x: &[f32], out: &mut [f32]) {
    let m = out.len();
    let mut buf = vec![0f32; if matches!(w, Weight::F16(_)) { OUTS * k } else { 0 }];
    let whole = m / OUTS * OUTS;
    for r0 in (0..whole).step_by(OUTS) {
        let rows = rows_of::<OUTS>(w, r0 * k, k, &mut buf);
        out[r0..r0 + OUTS].copy_from_slice(&dot_n(rows, x));
    }
    for r in whole..m {
        out[r] = dot_n(rows_of::<1>(w, r * k, k, &mut buf), x)[0];
    }
}

/// y[o] += sum_j t[j] * bt[j * m + o], j ascending, one multiply and add at a time (the
/// reference's order): see [`axpys_body`].
pub(super) fn axpys(bt: Weight, m: usize, t: &[f32], y: &mut [f32]) {
    axpys_body(bt, m, t, y)
}

/// [`dots`] with AVX2 (and F16C: an f16 pool widened in registers).
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn dots_avx2(w: Weight, k: usize, x: &[f32], out: &mut [f32]) {
    let m = out.len();
    let whole = m / OUTS * OUTS;
    macro_rules! run {
        ($v:expr) => {{
            let v = $v;
            for r0 in (0..whole).step_by(OUTS) {
                let rows = std::array::from_fn(|q| &v[(r0 + q) * k..(r0 + q + 1) * k]);
                // SAFETY: the caller's CPU has AVX2 and F16C.
                out[r0..r0 + OUTS].copy_from_slice(&unsafe { avx2::dot_n::<OUTS, _>(rows, x) });
            }
            for r in whole..m {
                // SAFETY: as above.
                out[r] = unsafe { avx2::dot_n::<1, _>([&v[r * k..(r + 1) * k]], x) }[0];
            }
        }};
    }
    match w {
        Weight::F32(v) => run!(v),
        Weight::F16(v) => run!(v),
        _ => unreachable!("LoRA pools are f32 or f16"),
    }
}

/// [`axpys`] with AVX2 (and F16C).
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn axpys_avx2(bt: Weight, m: usize, t: &[f32], y: &mut [f32]) {
    // SAFETY (both): the caller's CPU has AVX2 and F16C.
    match bt {
        Weight::F32(v) => unsafe { avx2::axpys(v, m, t, y) },
        Weight::F16(v) => unsafe { avx2::axpys(v, m, t, y) },
        _ => unreachable!("LoRA pools are f32 or f16"),
    }
}

/// [`dot_n`] and [`axpys_body`] in AVX2 registers: the same lanes, the same separate
/// multiplies and adds, an f16 pool's values widened exactly (F16C) where they are loaded.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, STRIP};
    use half::f16;
    use std::arch::x86_64::*;

    /// A pool's element type: 8 of them loaded as f32 lanes, one widened alone.
    pub(super) trait Pool: Copy {
        /// # Safety
        /// `p` must point at 8 readable values; the CPU must have AVX2 and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
        fn f32(self) -> f32;
    }

    impl Pool for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        fn f32(self) -> f32 {
            self
        }
    }

    impl Pool for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller's contract (16 bytes at p; F16C).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
        #[inline(always)]
        fn f32(self) -> f32 {
            self.to_f32()
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn dot_n<const N: usize, P: Pool>(a: [&[P]; N], b: &[f32]) -> [f32; N] {
        let k = b.len();
        assert!(a.iter().all(|r| r.len() >= k));
        let whole = k / LANES * LANES;
        let mut acc = [_mm256_setzero_ps(); N];
        for c in (0..whole).step_by(LANES) {
            // SAFETY: c + LANES <= whole <= k, within b and every row (asserted).
            unsafe {
                let xb = _mm256_loadu_ps(b.as_ptr().add(c));
                for q in 0..N {
                    let ab = P::load8(a[q].as_ptr().add(c));
                    acc[q] = _mm256_add_ps(acc[q], _mm256_mul_ps(ab, xb));
                }
            }
        }
        let mut out = [0f32; N];
        for q in 0..N {
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` holds LANES f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[q]) };
            let mut s = lanes.iter().sum::<f32>();
            for j in whole..k {
                s += a[q][j].f32() * b[j];
            }
            out[q] = s;
        }
        out
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn axpys<P: Pool>(bt: &[P], m: usize, t: &[f32], y: &mut [f32]) {
        assert!(bt.len() >= t.len() * m && y.len() >= m);
        let whole = m / STRIP * STRIP;
        const V: usize = STRIP / 8;
        for c0 in (0..whole).step_by(STRIP) {
            // SAFETY: c0 + STRIP <= m: inside y and inside each of bt's t.len() rows of m.
            unsafe {
                let mut acc: [__m256; V] =
                    std::array::from_fn(|v| _mm256_loadu_ps(y.as_ptr().add(c0 + 8 * v)));
                for (j, &tj) in t.iter().enumerate() {
                    let tv = _mm256_set1_ps(tj);
                    let row = bt.as_ptr().add(j * m + c0);
                    for (v, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(tv, P::load8(row.add(8 * v))));
                    }
                }
                for (v, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(y.as_mut_ptr().add(c0 + 8 * v), *a);
                }
            }
        }
        for (j, &tj) in t.iter().enumerate() {
            for (o, y) in y.iter_mut().enumerate().take(m).skip(whole) {
                *y += tj * bt[j * m + o].f32();
            }
        }
    }
}

/// N consecutive rows of k from element e0 as f32 (see [`widen`]).
#[inline(always)]
fn rows_of<'b, const N: usize>(
    w: Weight<'b>,
    e0: usize,
    k: usize,
    buf: &'b mut [f32],
) -> [&'b [f32]; N] {
    let all = widen(w, e0, N * k, buf);
    std::array::from_fn(|q| &all[q * k..(q + 1) * k])
}

/// Each a[q] · b: sum a[q][j] * b[j] in [`LANES`] lanes, then the lanes in order, then the tail.
/// An output's bits do not depend on N or on the other rows.
#[inline(always)]
fn dot_n<const N: usize>(a: [&[f32]; N], b: &[f32]) -> [f32; N] {
    let k = b.len();
    let whole = k / LANES * LANES;
    let mut acc = [[0f32; LANES]; N];
    for c in (0..whole).step_by(LANES) {
        let xb: &[f32; LANES] = b[c..c + LANES].try_into().expect("a lane group");
        for q in 0..N {
            let ab: &[f32; LANES] = a[q][c..c + LANES].try_into().expect("a lane group");
            for l in 0..LANES {
                acc[q][l] += ab[l] * xb[l];
            }
        }
    }
    let mut out = [0f32; N];
    for q in 0..N {
        let mut s = acc[q].iter().sum::<f32>();
        for j in whole..k {
            s += a[q][j] * b[j];
        }
        out[q] = s;
    }
    out
}

/// Strips of [`STRIP`] outputs held across every rank; each output's operations are the
/// reference's, in its order.
#[inline(always)]
fn axpys_body(bt: Weight, m: usize, t: &[f32], y: &mut [f32]) {
    let mut buf = [0f32; STRIP];
    for c0 in (0..m).step_by(STRIP) {
        let len = STRIP.min(m - c0);
        if len == STRIP {
            let mut acc: [f32; STRIP] = y[c0..c0 + STRIP].try_into().expect("a strip");
            for (j, &tj) in t.iter().enumerate() {
                let row: &[f32; STRIP] =
                    widen(bt, j * m + c0, STRIP, &mut buf).try_into().expect("a strip");
                for l in 0..STRIP {
                    acc[l] += tj * row[l];
                }
            }
            y[c0..c0 + STRIP].copy_from_slice(&acc);
        } else {
            for (j, &tj) in t.iter().enumerate() {
                let row = widen(bt, j * m + c0, len, &mut buf);
                for (y, &w) in y[c0..c0 + len].iter_mut().zip(row) {
                    *y += tj * w;
                }
            }
        }
    }
}

/// Elements e0..e0 + len of a pool as f32: the f32 pool's own slice, an f16 one's widened
/// into `buf`.
#[inline(always)]
fn widen<'b>(w: Weight<'b>, e0: usize, len: usize, buf: &'b mut [f32]) -> &'b [f32] {
    match w {
        Weight::F32(v) => &v[e0..e0 + len],
        Weight::F16(v) => {
            v[e0..e0 + len].convert_to_f32_slice(&mut buf[..len]);
            &buf[..len]
        }
        // `supports` takes f32 and f16 pools only (the op's shape check).
        _ => unreachable!("LoRA pools are f32 or f16"),
    }
}
