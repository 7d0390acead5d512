//! WebAssembly SIMD (simd128) prefill matmul (n > 1): the browser's CPU fallback's prompt
//! products, the same scheme as [`super::prefill`] sized for simd128 and V8.
//!
//! Each panel of `NR` weight rows is dequantized to f32 once (whole blocks with simd128
//! widening, four block scales converted from f16 at a time) and multiplied against every
//! token. The activations are packed once per call into groups of `W` tokens, `[k][W]`, zero
//! padded. The micro-kernel keeps an `NR x W` tile of outputs in registers and runs k
//! innermost: per k it loads the group's two x vectors, splats each row's weight and does one
//! multiply and one add per (row, vector). 4 x 8 is 8 accumulators + 2 x + 1 splat + 1
//! product: V8 keeps them in x86-64's vector registers (it reserves one of the 16), where
//! 5 x 8 spills two accumulators to memory; that loop is about as fast as simd128's
//! separate multiply and add allow (8 products per cycle on two multiply pipes).
//!
//! Each output is accumulated over k in index order with one accumulator, a multiply then an
//! add (simd128 has no FMA), and every weight is dequantized with `QuantView::get`'s formula:
//! the products are those of the reference loops bit for bit, whatever the tokens' grouping,
//! so a prompt row's result cannot depend on what else is in the step.

use core::arch::wasm32::*;

use tandem_core::{DType, QuantView, QBLOCK};

use super::decode_simd128::scales;
use super::dequant_into;
use super::{scatter_strips, Operands};
use crate::ops::chunk_rows;
use crate::table::Weight;
use crate::Exec;

/// Weight rows per micro-tile.
const NR: usize = 4;
/// Tokens per micro-tile: two f32x4.
const W: usize = 8;

/// a.x: [n, k]; a.w: [m, k]; a.bias: [m]; out: [n, m]; n > 0, m > 0.
pub(super) fn prefill(ex: Exec, a: &Operands, out: &mut [f32]) {
    let Operands { x, w, bias, n, k, m } = *a;
    if k == 0 {
        for row in out.chunks_exact_mut(m) {
            for (r, o) in row.iter_mut().enumerate() {
                *o = bias.map_or(0.0, |b| b[r]);
            }
        }
        return;
    }
    let ex = ex.sized(n * k * m);
    let groups = n.div_ceil(W);
    // x transposed into token groups: group g is [k][W] at g * k * W, padding tokens zero.
    let mut packed = vec![0f32; groups * k * W];
    for (t, xt) in x.chunks_exact(k).enumerate() {
        let g = &mut packed[(t / W) * k * W..(t / W + 1) * k * W];
        for (j, &v) in xt.iter().enumerate() {
            g[j * W + t % W] = v;
        }
    }
    let c = chunk_rows(m, ex.threads(), NR).next_multiple_of(NR);
    // Row chunks of out: [n, m] are column strips; compute each into a local [n, rows] block
    // and scatter afterwards (n * m copies against n * m * k multiply-adds).
    let parts: Vec<(usize, Vec<f32>)> = ex.map_range(m.div_ceil(c), |ci| {
        let r0 = ci * c;
        let rows = c.min(m - r0);
        let mut local = vec![0f32; n * rows];
        chunk(&packed, w, bias, &mut local, n, k, r0);
        (r0, local)
    });
    scatter_strips(parts, out, n, m);
}

/// out: [n, rows] for weight rows r0..r0 + rows (rows = out.len() / n).
fn chunk(
    packed: &[f32],
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    n: usize,
    k: usize,
    r0: usize,
) {
    let rows = out.len() / n;
    // The panel's rows, dequantized (or copied: f32 weights), [NR][k]; rows past the end of a
    // short last panel are zero. (Not interleaved as [k][NR], which would put a step's
    // weights together: the interleaving pass costs more than it saves.)
    let mut panel = vec![0f32; NR * k];
    for p0 in (0..rows).step_by(NR) {
        let live = NR.min(rows - p0);
        for (r, dst) in panel.chunks_exact_mut(k).take(live).enumerate() {
            dequant_row(w, (r0 + p0 + r) * k, dst);
        }
        if live < NR {
            panel[live * k..].fill(0.0);
        }
        for (g, xg) in packed.chunks_exact(k * W).enumerate() {
            let acc = tile(&panel, xg, k);
            let (t0, tokens) = (g * W, W.min(n - g * W));
            for (r, ar) in acc.iter().enumerate().take(live) {
                let b = bias.map_or(0.0, |b| b[r0 + p0 + r]);
                for t in 0..tokens {
                    out[(t0 + t) * rows + p0 + r] = ar[t] + b;
                }
            }
        }
    }
}

/// tile[r][t] = sum_j panel[r * k + j] * xg[j * W + t], j in order, a multiply then an add.
fn tile(panel: &[f32], xg: &[f32], k: usize) -> [[f32; W]; NR] {
    assert!(panel.len() >= NR * k && xg.len() >= k * W);
    let (pp, xp) = (panel.as_ptr(), xg.as_ptr());
    let mut acc = [[f32x4_splat(0.0); 2]; NR];
    for j in 0..k {
        // SAFETY: j < k, so every load is inside `panel` and `xg` (asserted above).
        unsafe {
            let x0 = v128_load(xp.add(j * W) as *const v128);
            let x1 = v128_load(xp.add(j * W + 4) as *const v128);
            for (r, a) in acc.iter_mut().enumerate() {
                let b = v128_load32_splat(pp.add(r * k + j) as *const u32);
                a[0] = f32x4_add(a[0], f32x4_mul(b, x0));
                a[1] = f32x4_add(a[1], f32x4_mul(b, x1));
            }
        }
    }
    unload(&acc)
}

/// A tile's accumulators, two f32x4 (8 tokens) per row, as floats.
pub(super) fn unload<const R: usize>(acc: &[[v128; 2]; R]) -> [[f32; W]; R] {
    acc.map(|a| {
        let mut o = [0f32; W];
        // SAFETY: W = 8 floats, two vectors.
        unsafe {
            v128_store(o.as_mut_ptr() as *mut v128, a[0]);
            v128_store(o.as_mut_ptr().add(4) as *mut v128, a[1]);
        }
        o
    })
}

/// dst[j] = w[start + j], as [`dequant_into`], with whole quantized blocks in simd128.
fn dequant_row(w: Weight, start: usize, dst: &mut [f32]) {
    let Weight::Q(q) = w else {
        return dequant_into(w, start, dst);
    };
    // Scalar up to the first block boundary and after the last one; whole blocks between.
    let end = start + dst.len();
    let first = start.next_multiple_of(QBLOCK).min(end);
    let last = (end / QBLOCK * QBLOCK).max(first);
    let (head, rest) = dst.split_at_mut(first - start);
    let (mid, tail) = rest.split_at_mut(last - first);
    dequant_into(w, start, head);
    dequant_blocks(q, first / QBLOCK, mid);
    dequant_into(w, last, tail);
}

/// dst = the whole blocks b0.. of `q` (dst.len() / 32 of them), with the formulas of
/// `QuantView::get`: multiply and add stay separate, so values match exactly.
fn dequant_blocks(q: QuantView, b0: usize, dst: &mut [f32]) {
    let nb = dst.len() / QBLOCK;
    let q8 = q.dtype == DType::Q8_0;
    let q41 = q.dtype == DType::Q4_1;
    assert!(
        q.d.len() >= b0 + nb
            && (!q41 || q.m.len() >= b0 + nb)
            && q.qs.len() >= (b0 + nb) * if q8 { QBLOCK } else { QBLOCK / 2 }
    );
    let mask = u8x16_splat(0x0f);
    let eight = i32x4_splat(8);
    for (g, dg) in dst.chunks_mut(4 * QBLOCK).enumerate() {
        let (b, c) = (b0 + g * 4, dg.len() / QBLOCK);
        // SAFETY: blocks b..b + c lie inside `q.d` and `q.m` (asserted above).
        let (ds, ms) = unsafe {
            (
                scales::<false>(q.d, b, c),
                if q41 { scales::<false>(q.m, b, c) } else { f32x4_splat(0.0) },
            )
        };
        let (ds, ms) = (lanes(ds), lanes(ms));
        for (i, o) in dg.chunks_exact_mut(QBLOCK).enumerate() {
            let (d, mn) = (f32x4_splat(ds[i]), f32x4_splat(ms[i]));
            let o = o.as_mut_ptr() as *mut v128;
            // The block's values as 8 x 4 integers, in element order.
            let v: [v128; 8] = if q8 {
                // SAFETY: the 32 bytes of block b + i lie inside `q.qs` (asserted above).
                let p = unsafe { q.qs.as_ptr().add((b + i) * QBLOCK) } as *const v128;
                let (v0, v1) = unsafe { (v128_load(p), v128_load(p.add(1))) };
                let h = [
                    i16x8_extend_low_i8x16(v0),
                    i16x8_extend_high_i8x16(v0),
                    i16x8_extend_low_i8x16(v1),
                    i16x8_extend_high_i8x16(v1),
                ];
                std::array::from_fn(|j| {
                    if j.is_multiple_of(2) {
                        i32x4_extend_low_i16x8(h[j / 2])
                    } else {
                        i32x4_extend_high_i16x8(h[j / 2])
                    }
                })
            } else {
                // SAFETY: the 16 bytes of block b + i lie inside `q.qs` (asserted above).
                let bytes = unsafe { v128_load(q.qs.as_ptr().add((b + i) * 16) as *const v128) };
                let lo = v128_and(bytes, mask);
                let hi = v128_and(u16x8_shr(bytes, 4), mask);
                // Element 2i is the low nibble of byte i, 2i + 1 the high one.
                let (e0, e1) = (
                    i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(lo, hi),
                    i8x16_shuffle::<8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31>(
                        lo, hi,
                    ),
                );
                let h = [
                    u16x8_extend_low_u8x16(e0),
                    u16x8_extend_high_u8x16(e0),
                    u16x8_extend_low_u8x16(e1),
                    u16x8_extend_high_u8x16(e1),
                ];
                std::array::from_fn(|j| {
                    if j.is_multiple_of(2) {
                        u32x4_extend_low_u16x8(h[j / 2])
                    } else {
                        u32x4_extend_high_u16x8(h[j / 2])
                    }
                })
            };
            for (j, v) in v.into_iter().enumerate() {
                let f = match (q8, q41) {
                    (true, _) => f32x4_mul(d, f32x4_convert_i32x4(v)),
                    (_, true) => f32x4_add(f32x4_mul(d, f32x4_convert_i32x4(v)), mn),
                    _ => f32x4_mul(d, f32x4_convert_i32x4(i32x4_sub(v, eight))),
                };
                // SAFETY: the block's 32 floats of `dst`.
                unsafe { v128_store(o.add(j), f) };
            }
        }
    }
}

#[inline(always)]
fn lanes(v: v128) -> [f32; 4] {
    [
        f32x4_extract_lane::<0>(v),
        f32x4_extract_lane::<1>(v),
        f32x4_extract_lane::<2>(v),
        f32x4_extract_lane::<3>(v),
    ]
}
