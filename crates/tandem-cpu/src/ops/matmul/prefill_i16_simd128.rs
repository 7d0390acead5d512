//! WebAssembly SIMD (simd128) prompt rows (n > 1) of Q8_0 / Q4_0 / Q4_1 matmuls in 16-bit
//! integers: the browser's CPU fallback's prefill, in the `I16Activations` class its decode
//! rows use (see `decode_simd128`).
//!
//! Why: the f32 micro-kernel ([`super::prefill_simd128`]) spends a splat, a multiply and an
//! add per weight and 4 tokens (simd128 has no FMA). Here `i32x4.dot_i16x8_s` takes a pair of
//! weights against 4 tokens' activation pairs: lanes are tokens, the weight pair is splat from
//! memory, 8 multiply-adds per instruction, so a splat, two products and two adds cover a pair
//! for 8 tokens. At each block's end the integer sums are converted and scaled once:
//! acc += sum * (d * s) (+ m * sum(x) for Q4_1), a multiply then an add.
//!
//! Layouts: the panel holds `NR` weight rows widened to 16-bit integers in element order
//! (Q4_0 minus its 8 offset); the activations of each group of `W` tokens are packed as
//! `[block][pair][W]` 32-bit words (one token's two 16-bit values each), their block scales
//! and sums as `[block][W]`. Each output's arithmetic is fixed by its own row and token (blocks
//! in order, the same operations), so a prompt row never depends on the other tokens.

use core::arch::wasm32::*;

use half::f16;
use tandem_core::{DType, QuantView, QBLOCK};

use super::prefill_simd128::unload;
use super::scatter_strips;
use super::{int_split, Operands, Order};
use crate::ops::chunk_rows;
use crate::Exec;

/// Weight rows per micro-tile: 4 rows x 2 vectors of tokens is 8 integer accumulators, with
/// the two activation vectors and a weight splat 11 registers, within the 16 V8 gives simd128
/// on x86-64 (the float accumulators wait in memory between blocks). Fewer rows share each
/// activation load among fewer products; 6 rows spill (see bench/BROWSER.md).
const NR: usize = 4;
/// Tokens per group: two i32x4 (the f32 kernel's group, whose `unload` this one shares).
const W: usize = 8;
/// Weight pairs per block.
const PAIRS: usize = QBLOCK / 2;

/// Whether prompt rows of a matmul with this weight dtype and k take this kernel.
pub(crate) fn applies(dtype: DType, k: usize) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1) && k.is_multiple_of(QBLOCK) && k > 0
}

/// Token groups' activations: ints [group][block][pair][W], scales and sums [group][block][W].
struct Packed {
    ints: Vec<i32>,
    scales: Vec<f32>,
    sums: Vec<f32>,
}

/// a.x: [n, k]; q (a.w): [m, k]; a.bias: [m]; out: [n, m]; `applies(q.dtype, k)` must hold.
pub(super) fn prefill(ex: Exec, a: &Operands, q: QuantView, out: &mut [f32]) {
    let Operands { x, bias, n, k, m, .. } = *a;
    assert!(applies(q.dtype, k) && x.len() >= n * k && out.len() >= n * m);
    let nb = k / QBLOCK;
    let ex = ex.sized(n * k * m);
    let groups = n.div_ceil(W);
    let mut p = Packed {
        ints: vec![0; groups * nb * PAIRS * W],
        scales: vec![0.0; groups * nb * W],
        sums: vec![0.0; groups * nb * W],
    };
    for (t, xt) in x[..n * k].chunks_exact(k).enumerate() {
        let (ints, scales) = int_split(xt, Order::Natural, false, false);
        let (g, l) = (t / W, t % W);
        for (j, pair) in ints.chunks_exact(2).enumerate() {
            p.ints[(g * nb * PAIRS + j) * W + l] =
                (pair[0] as u16 as u32 | (pair[1] as u16 as u32) << 16) as i32;
        }
        for (b, xb) in xt.chunks_exact(QBLOCK).enumerate() {
            p.scales[(g * nb + b) * W + l] = scales[b];
            p.sums[(g * nb + b) * W + l] = xb.iter().sum();
        }
    }
    let c = chunk_rows(m, ex.threads(), NR).next_multiple_of(NR);
    let parts: Vec<(usize, Vec<f32>)> = ex.map_range(m.div_ceil(c), |ci| {
        let r0 = ci * c;
        let rows = c.min(m - r0);
        let mut local = vec![0f32; n * rows];
        let mut panel = Panel { w: vec![0; NR * k], d: vec![0.0; NR * nb], m: vec![0.0; NR * nb] };
        for p0 in (0..rows).step_by(NR) {
            let live = NR.min(rows - p0);
            panel.widen(q, nb, r0 + p0, live);
            for g in 0..groups {
                let acc = tile(&panel, &p, g, nb, q.dtype == DType::Q4_1);
                let (t0, tokens) = (g * W, W.min(n - g * W));
                for (r, ar) in acc.iter().enumerate().take(live) {
                    let b = bias.map_or(0.0, |b| b[r0 + p0 + r]);
                    for t in 0..tokens {
                        local[(t0 + t) * rows + p0 + r] = ar[t] + b;
                    }
                }
            }
        }
        (r0, local)
    });
    scatter_strips(parts, out, n, m);
}

/// `NR` weight rows as 16-bit integers [NR][k] with their block scales and minimums [NR][nb].
struct Panel {
    w: Vec<i16>,
    d: Vec<f32>,
    m: Vec<f32>,
}

impl Panel {
    /// Rows row0..row0 + live of q; rows past `live` are zero.
    fn widen(&mut self, q: QuantView, nb: usize, row0: usize, live: usize) {
        let k = nb * QBLOCK;
        if live < NR {
            self.w[live * k..].fill(0);
            self.d[live * nb..].fill(0.0);
            self.m[live * nb..].fill(0.0);
        }
        for r in 0..live {
            let blk0 = (row0 + r) * nb;
            let w = &mut self.w[r * k..(r + 1) * k];
            match q.dtype {
                DType::Q8_0 => {
                    for (d, &b) in w.iter_mut().zip(&q.qs[blk0 * QBLOCK..(blk0 + nb) * QBLOCK]) {
                        *d = b as i8 as i16;
                    }
                }
                _ => {
                    // Byte j of a block holds elements 2j (low nibble) and 2j + 1 (high).
                    let off = if q.dtype == DType::Q4_0 { 8 } else { 0 };
                    for (d, &b) in w
                        .chunks_exact_mut(2)
                        .zip(&q.qs[blk0 * QBLOCK / 2..(blk0 + nb) * QBLOCK / 2])
                    {
                        d[0] = (b & 0x0f) as i16 - off;
                        d[1] = (b >> 4) as i16 - off;
                    }
                }
            }
            for b in 0..nb {
                self.d[r * nb + b] = f16::to_f32(q.d[blk0 + b]);
                if q.dtype == DType::Q4_1 {
                    self.m[r * nb + b] = f16::to_f32(q.m[blk0 + b]);
                }
            }
        }
    }
}

/// tile[r][t]: the panel's rows against group g's tokens.
fn tile(panel: &Panel, p: &Packed, g: usize, nb: usize, q41: bool) -> [[f32; W]; NR] {
    let k = nb * QBLOCK;
    assert!(panel.w.len() >= NR * k && panel.d.len() >= NR * nb && panel.m.len() >= NR * nb);
    assert!(
        p.ints.len() >= (g + 1) * nb * PAIRS * W
            && p.scales.len() >= (g + 1) * nb * W
            && p.sums.len() >= (g + 1) * nb * W
    );
    let (wp, xp) = (panel.w.as_ptr(), p.ints[g * nb * PAIRS * W..].as_ptr());
    let (sp, mp) = (p.scales[g * nb * W..].as_ptr(), p.sums[g * nb * W..].as_ptr());
    let mut acc = [[f32x4_splat(0.0); 2]; NR];
    // SAFETY (whole loop): block b < nb and pair j < PAIRS keep every load inside the
    // lengths asserted above.
    for b in 0..nb {
        let mut sum = [[i32x4_splat(0); 2]; NR];
        for j in 0..PAIRS {
            unsafe {
                let x = xp.add((b * PAIRS + j) * W) as *const v128;
                let (x0, x1) = (v128_load(x), v128_load(x.add(1)));
                for (r, s) in sum.iter_mut().enumerate() {
                    let w = v128_load32_splat(wp.add(r * k + b * QBLOCK + 2 * j) as *const u32);
                    s[0] = i32x4_add(s[0], i32x4_dot_i16x8(w, x0));
                    s[1] = i32x4_add(s[1], i32x4_dot_i16x8(w, x1));
                }
            }
        }
        unsafe {
            let s = [
                v128_load(sp.add(b * W) as *const v128),
                v128_load(sp.add(b * W + 4) as *const v128),
            ];
            let xs = [
                v128_load(mp.add(b * W) as *const v128),
                v128_load(mp.add(b * W + 4) as *const v128),
            ];
            for r in 0..NR {
                let d = f32x4_splat(panel.d[r * nb + b]);
                let mn = f32x4_splat(panel.m[r * nb + b]);
                for h in 0..2 {
                    let v = f32x4_mul(f32x4_convert_i32x4(sum[r][h]), f32x4_mul(d, s[h]));
                    acc[r][h] = f32x4_add(acc[r][h], v);
                    if q41 {
                        acc[r][h] = f32x4_add(acc[r][h], f32x4_mul(mn, xs[h]));
                    }
                }
            }
        }
    }
    unload(&acc)
}
