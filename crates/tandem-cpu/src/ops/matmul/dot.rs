//! The portable Q8_0 / Q4 decode kernels: rows of whole blocks dotted in f32 lanes the
//! compiler vectorizes, from [`Split::Floats`](super::prep::Split) (Q4's even/odd copies and
//! block sums; Q8_0 reads x itself).
//!
//! Q4_0 is d * (sum(q * x) - 8 * sum(x)) per block, Q4_1 d * sum(q * x) + m * sum(x), with the
//! activation split into even and odd elements to meet the nibbles of each byte.

use half::slice::HalfFloatSliceExt;
use tandem_core::{DType, QuantView, QBLOCK};

use super::prep::XPrep;

/// out[ri] = dot(row r0 + ri of q, x) for one token; k = x.len(), a multiple of 32.
pub(super) fn quant_rows(q: QuantView, x: &[f32], prep: &XPrep, r0: usize, out: &mut [f32]) {
    let nb = x.len() / QBLOCK;
    let (b_start, b_end) = (r0 * nb, (r0 + out.len()) * nb);
    // Scales of the chunk's blocks as f32 once, rather than one f16 conversion per block.
    let mut d = vec![0f32; b_end - b_start];
    q.d[b_start..b_end].convert_to_f32_slice(&mut d);
    let mut mins = vec![0f32; if q.dtype == DType::Q4_1 { b_end - b_start } else { 0 }];
    if q.dtype == DType::Q4_1 {
        q.m[b_start..b_end].convert_to_f32_slice(&mut mins);
    }
    for (ri, o) in out.iter_mut().enumerate() {
        let b0 = (r0 + ri) * nb;
        let ds = &d[ri * nb..(ri + 1) * nb];
        let mins = (q.dtype == DType::Q4_1).then(|| &mins[ri * nb..(ri + 1) * nb]);
        *o = match q.dtype {
            DType::Q8_0 => {
                let qs = &q.qs[b0 * QBLOCK..(b0 + nb) * QBLOCK];
                dot_q8(qs, ds, x)
            }
            _ => {
                let qs = &q.qs[b0 * 16..(b0 + nb) * 16];
                dot_q4(qs, ds, mins, prep)
            }
        };
    }
}

/// [`quant_rows`] token by token: x: [tokens, k]; out: [tokens, rows].
pub(super) fn quant_tokens(q: QuantView, x: &[f32], preps: &[XPrep], r0: usize, out: &mut [f32]) {
    let (k, rows) = (x.len() / preps.len(), out.len() / preps.len());
    for (t, o) in out.chunks_exact_mut(rows).enumerate() {
        quant_rows(q, &x[t * k..(t + 1) * k], &preps[t], r0, o);
    }
}

/// sum_b d[b] * sum_j q[b, j] * x[b, j] over whole blocks; qs: [nb * 32] i8, x: [nb * 32].
#[inline(always)]
fn dot_q8(qs: &[u8], d: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for ((q, xs), &dv) in qs.chunks_exact(QBLOCK).zip(x.chunks_exact(QBLOCK)).zip(d) {
        // Fixed-size views: no bounds checks, so the block loop unrolls into SIMD lanes.
        let q: &[u8; QBLOCK] = q.try_into().unwrap();
        let xs: &[f32; QBLOCK] = xs.try_into().unwrap();
        let mut s = [0f32; 8];
        for j in 0..4 {
            for l in 0..8 {
                s[l] += (q[j * 8 + l] as i8) as f32 * xs[j * 8 + l];
            }
        }
        for l in 0..8 {
            acc[l] += dv * s[l];
        }
    }
    hsum8(acc)
}

/// Q4_0 (`mins` = None): sum_b d * (sum q x - 8 sum x); Q4_1: sum_b d * sum q x + m * sum x.
/// qs: [nb * 16] bytes, two elements each, low nibble first.
#[inline(always)]
fn dot_q4(qs: &[u8], d: &[f32], mins: Option<&[f32]>, p: &XPrep) -> f32 {
    let mut acc = [0f32; 8];
    let mut offset = 0f32;
    for (b, ((q, e), o)) in
        qs.chunks_exact(16).zip(p.even.chunks_exact(16)).zip(p.odd.chunks_exact(16)).enumerate()
    {
        let (q, e, o): (&[u8; 16], &[f32; 16], &[f32; 16]) =
            (q.try_into().unwrap(), e.try_into().unwrap(), o.try_into().unwrap());
        let mut s = [0f32; 8];
        for j in 0..2 {
            for l in 0..8 {
                let byte = q[j * 8 + l];
                s[l] += (byte & 15) as f32 * e[j * 8 + l] + (byte >> 4) as f32 * o[j * 8 + l];
            }
        }
        let dv = d[b];
        for l in 0..8 {
            acc[l] += dv * s[l];
        }
        offset += match mins {
            None => -8.0 * dv * p.sums[b],
            Some(m) => m[b] * p.sums[b],
        };
    }
    hsum8(acc) + offset
}

#[inline(always)]
fn hsum8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}
