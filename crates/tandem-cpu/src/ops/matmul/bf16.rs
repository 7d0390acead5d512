//! The decode matvec (n = 1) over bf16 weights.
//!
//! A bf16 value is the top half of an f32, so widening is a zero-extend and a 16-bit shift:
//! each row is widened and dotted in one pass, 16 lanes at a time, with no scratch copy
//! (decode is bound by weight bytes, and bf16 streams half of f32's). The portable loop
//! vectorizes as it is; on x86-64 the same loop is compiled a second time with AVX2 enabled
//! (zero-extends, shifts and 256-bit multiply-adds), the AVX2 and AVX-512 tables' entry.
//!
//! Lanes are summed like [`crate::ops::dot`], so the result equals the general path's.

use tandem_core::dtype::bf16_to_f32;

use super::{add_bias, Operands};
use crate::ops::{chunk_rows, hsum, par_chunks_caller, LANES};
use crate::Exec;

/// One token's rows: a.x: [k]; w: [m, k] bf16 bits; a.bias: [m]; out: [m].
pub(super) fn decode(ex: Exec, a: &Operands, w: &[u16], out: &mut [f32]) {
    let (k, m) = (a.k, a.m);
    let ex = ex.sized(k * m);
    let threads = ex.threads();
    // About 8 chunks per thread, as the quantized decode path.
    let c = chunk_rows(m, threads * 2, 16);
    let work = |ci: usize, o: &mut [f32]| {
        let r0 = ci * c;
        (ex.kernels.bf16_rows)(a.x, &w[r0 * k..(r0 + o.len()) * k], o);
        add_bias(o, a.bias, r0);
    };
    match ex.pool {
        Some(pool) => par_chunks_caller(pool, threads, out, c, work),
        None => work(0, out),
    }
}

/// [`rows`] compiled for AVX2 (the kernel tables' AVX2 and AVX-512 entry).
#[cfg(target_arch = "x86_64")]
pub(super) fn rows_avx2(x: &[f32], w: &[u16], out: &mut [f32]) {
    // SAFETY: reached only through the AVX2 and AVX-512 kernel tables, which `Kernels::of`
    // hands out only where AVX2 and FMA were detected.
    unsafe { rows_avx2_tf(x, w, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2_tf(x: &[f32], w: &[u16], out: &mut [f32]) {
    rows(x, w, out)
}

/// out[r] = dot(x, row r of w) for w: [out.len(), x.len()].
#[inline(always)]
pub(super) fn rows(x: &[f32], w: &[u16], out: &mut [f32]) {
    let k = x.len();
    if k == 0 {
        return out.fill(0.0);
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(k)) {
        *o = dot_bf16(x, row);
    }
}

/// sum_j x[j] * w[j], with `LANES` partial sums as [`crate::ops::dot`].
#[inline(always)]
fn dot_bf16(x: &[f32], w: &[u16]) -> f32 {
    let mut acc = [0f32; LANES];
    let (cx, cw) = (x.chunks_exact(LANES), w.chunks_exact(LANES));
    let (rx, rw) = (cx.remainder(), cw.remainder());
    for (xs, ws) in cx.zip(cw) {
        // Fixed-size views: no bounds checks, so the lane loop becomes SIMD.
        let xs: &[f32; LANES] = xs.try_into().unwrap();
        let ws: &[u16; LANES] = ws.try_into().unwrap();
        for l in 0..LANES {
            acc[l] += xs[l] * bf16_to_f32(ws[l]);
        }
    }
    let mut tail = 0f32;
    for (a, &b) in rx.iter().zip(rw) {
        tail += a * bf16_to_f32(b);
    }
    hsum(&acc) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Weight;

    #[test]
    fn bf16_rows_by_hand() {
        // 1.0, -2.0, 0.5, 3.0 (0x4040), then 17 more 1.0s: one full lane group and a tail.
        let mut w = vec![0x3f80u16, 0xc000, 0x3f00, 0x4040];
        w.resize(21, 0x3f80);
        let x: Vec<f32> = (1..=21).map(|i| i as f32).collect();
        let want = 1.0 - 4.0 + 1.5 + 12.0 + (5..=21).sum::<i32>() as f32;
        let mut out = [0f32; 1];
        rows(&x, &w, &mut out);
        assert_eq!(out[0], want);
        let reference: f32 = (0..21).map(|j| x[j] * Weight::BF16(&w).get(j)).sum();
        assert_eq!(reference, want);
        #[cfg(target_arch = "x86_64")]
        if crate::Isa::Avx2.supported() {
            let mut out = [0f32; 1];
            rows_avx2(&x, &w, &mut out);
            assert_eq!(out[0], want);
        }
    }
}
