//! Prompt rows (n > 1) of Q8_0 matmuls in 16-bit integers with AVX-512 VNNI: the
//! `I16Activations` precision class (see `precision` in lib.rs).
//!
//! Why: prefill is bound by arithmetic, and the f32 micro-kernel ([`super::prefill`]) gets 16
//! multiply-adds from a 512-bit FMA, where `vpdpwssd` gets 32 (pairs of 16-bit products summed
//! into 32-bit lanes, exactly). llama.cpp gets 64 by rounding activations to 8 bits, which
//! flips near-ties of the reference's answers; 16 bits per block of 32 (x ~ s * q, s = max |x|
//! / 32767) keep them. Q8_0's bytes widen to 16 bits exactly.
//!
//! Layout: a panel of 16 weight rows is widened once per call into `[block][pair][row]` 32-bit
//! words (each word two consecutive weights of one row), so one 512-bit load feeds one pair of
//! k to 16 rows, one row per lane. Each token's activation pair is broadcast from memory
//! (`{1to16}`) into the product. A tile of 8 tokens keeps 8 integer sums and 8 f32 sums in
//! registers; at each block's end the integer sum is converted and scaled: acc = fma(sum, d *
//! s, acc). Per block and 16 rows x 8 tokens: 128 products and 24 float operations, against
//! 256 FMAs in f32.
//!
//! Each output's arithmetic is the same whatever tile, chunk or batch it lands in (blocks in
//! order, one fma per block), so a token's row never depends on the other tokens.

use std::arch::x86_64::*;

use half::f16;
use tandem_core::{DType, QuantView, QBLOCK};

use super::scatter_strips;
use super::{int_split, Operands, Order};
use crate::ops::chunk_rows;
use crate::Exec;

/// Weight rows per panel: one 512-bit lane each.
const NR: usize = 16;
/// Tokens per tile.
const T: usize = 8;
/// Pairs of weights per block.
const PAIRS: usize = QBLOCK / 2;

/// Whether prompt rows of a matmul with this weight dtype and k take this kernel (where the
/// CPU has it: the AVX-512 kernel table's `prompt`).
pub(crate) fn applies(dtype: DType, k: usize) -> bool {
    dtype == DType::Q8_0 && k.is_multiple_of(QBLOCK) && k > 0
}

/// a.x: [n, k]; q (a.w): [m, k] Q8_0; a.bias: [m]; out: [n, m]; `applies(Q8_0, k)` must
/// hold, and the CPU must have AVX-512 F/BW/DQ/VL and VNNI (only the AVX-512 kernel table,
/// checked when it is taken, calls this).
pub(super) fn q8(ex: Exec, a: &Operands, q: QuantView, out: &mut [f32]) {
    let Operands { x, bias, n, k, m, .. } = *a;
    assert!(applies(q.dtype, k) && x.len() >= n * k && out.len() >= n * m);
    let nb = k / QBLOCK;
    assert!(q.qs.len() >= m * nb * QBLOCK && q.d.len() >= m * nb);
    let ex = ex.sized(n * k * m);
    // Each token's 16-bit activation (element order) and block scales, once for every panel.
    // Across the team: done serially, a long prompt's splits are a large share of a small
    // projection's time.
    let acts: Vec<(Vec<i16>, Vec<f32>)> =
        ex.map_range(n, |t| int_split(&x[t * k..(t + 1) * k], Order::Natural, false, false));
    // Stands in for the tokens past the end of a short last tile.
    let zero = (vec![0i16; nb * QBLOCK], vec![0f32; nb]);
    let c = chunk_rows(m, ex.threads(), NR).next_multiple_of(NR);
    let parts: Vec<(usize, Vec<f32>)> = ex.map_range(m.div_ceil(c), |ci| {
        let r0 = ci * c;
        let rows = c.min(m - r0);
        let mut local = vec![0f32; n * rows];
        let (mut wp, mut dp) = (vec![0i32; nb * PAIRS * NR], vec![0f32; nb * NR]);
        for p0 in (0..rows).step_by(NR) {
            let live = NR.min(rows - p0);
            widen_panel(q, nb, r0 + p0, live, &mut wp, &mut dp);
            for t0 in (0..n).step_by(T) {
                let tl = T.min(n - t0);
                let a: [&(Vec<i16>, Vec<f32>); T] =
                    std::array::from_fn(|t| if t < tl { &acts[t0 + t] } else { &zero });
                // SAFETY: the caller guarantees the CPU features; `wp`/`dp` hold nb blocks of the
                // panel, every token's ints nb * 32 and scales at least nb.
                let sums = unsafe { tile(&wp, &dp, nb, &a) };
                for (t, s) in sums.iter().enumerate().take(tl) {
                    let dst = &mut local[(t0 + t) * rows + p0..][..live];
                    dst.copy_from_slice(&s[..live]);
                    if let Some(b) = bias {
                        for (v, bv) in dst.iter_mut().zip(&b[r0 + p0..]) {
                            *v += bv;
                        }
                    }
                }
            }
        }
        (r0, local)
    });
    scatter_strips(parts, out, n, m);
}

/// Rows row0..row0 + live of q as the kernel's panel: wp[(b * PAIRS + p) * NR + r] holds row
/// r's weights 2p and 2p + 1 of block b (low and high 16 bits), dp[b * NR + r] its scale;
/// rows past `live` are zero.
fn widen_panel(q: QuantView, nb: usize, row0: usize, live: usize, wp: &mut [i32], dp: &mut [f32]) {
    if live < NR {
        wp.fill(0);
        dp.fill(0.0);
    }
    for r in 0..live {
        let blk0 = (row0 + r) * nb;
        for b in 0..nb {
            let src = &q.qs[(blk0 + b) * QBLOCK..][..QBLOCK];
            for p in 0..PAIRS {
                let (lo, hi) = (
                    src[2 * p] as i8 as i16 as u16 as u32,
                    src[2 * p + 1] as i8 as i16 as u16 as u32,
                );
                wp[(b * PAIRS + p) * NR + r] = (lo | hi << 16) as i32;
            }
            dp[b * NR + r] = f16::to_f32(q.d[blk0 + b]);
        }
    }
}

/// The panel's 16 rows (lanes) for each of the tile's tokens.
///
/// # Safety
/// AVX-512 F/BW/VNNI must be available; wp and dp hold nb blocks (as [`widen_panel`]); every
/// token's ints hold nb * 32 values and its scales nb.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn tile(
    wp: &[i32],
    dp: &[f32],
    nb: usize,
    a: &[&(Vec<i16>, Vec<f32>); T],
) -> [[f32; NR]; T] {
    assert!(wp.len() >= nb * PAIRS * NR && dp.len() >= nb * NR);
    assert!(a.iter().all(|(ints, s)| ints.len() >= nb * QBLOCK && s.len() >= nb));
    let ip: [*const i32; T] = std::array::from_fn(|t| a[t].0.as_ptr() as *const i32);
    let sp: [*const f32; T] = std::array::from_fn(|t| a[t].1.as_ptr());
    // SAFETY (whole body): every offset stays below the lengths asserted above (block b < nb,
    // pair p < PAIRS); unaligned loads throughout.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let mut sum = [_mm512_setzero_si512(); T];
            let wb = wp.as_ptr().add(b * PAIRS * NR);
            for p in 0..PAIRS {
                let w = _mm512_loadu_si512(wb.add(p * NR) as *const __m512i);
                for t in 0..T {
                    let x = _mm512_set1_epi32(ip[t].add(b * PAIRS + p).read_unaligned());
                    sum[t] = _mm512_dpwssd_epi32(sum[t], w, x);
                }
            }
            let d = _mm512_loadu_ps(dp.as_ptr().add(b * NR));
            for t in 0..T {
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(*sp[t].add(b)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t]), scale, acc[t]);
            }
        }
        acc.map(|v| {
            let mut o = [0f32; NR];
            _mm512_storeu_ps(o.as_mut_ptr(), v);
            o
        })
    }
}
