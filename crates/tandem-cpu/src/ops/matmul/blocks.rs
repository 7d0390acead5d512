//! Decode matvec for the GGUF block types (Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS) whose rows
//! are whole blocks (every GGUF file's are): each block is decoded to f32 on the stack with
//! the reference formula ([`BlockView::decode_block`]) and dotted with the activation at once,
//! so each weight byte is read once and no row is ever held dequantized.
//!
//! Every row's arithmetic is fixed by k alone (`LANES` lanes over the row, then a fixed pairwise
//! sum), so one or several decode rows, one or two threads, give the same bits.

use tandem_core::quant::BlockView;

use super::super::{chunk_rows, hsum, par_chunks_caller, LANES};
use super::{add_bias, scatter_strips, Operands};
use crate::Exec;

/// Whether rows of length k start on block boundaries (the kernel's precondition).
pub(super) fn row_aligned(b: BlockView, k: usize) -> bool {
    k > 0 && k.is_multiple_of(b.layout.elems)
}

/// All decode rows with the portable loop (a.x: [n, k]; w: [m, k] of whole blocks; out:
/// [n, m]).
pub(super) fn decode_portable(ex: Exec, a: &Operands, w: BlockView, out: &mut [f32]) {
    decode_rows(ex, a, w, out, rows)
}

/// All decode rows with the AVX2 block kernels where the block type has them, else the
/// portable loop compiled for AVX2 (the AVX2 and AVX-512 tables' entry).
#[cfg(target_arch = "x86_64")]
pub(super) fn decode_avx2(ex: Exec, a: &Operands, w: BlockView, out: &mut [f32]) {
    if super::blocks_avx2::supported(w.dtype) {
        return decode_ints(ex, a, w, out);
    }
    decode_rows(ex, a, w, out, |w, x, r0, out| {
        // SAFETY: reached only through the AVX2 and AVX-512 kernel tables, which
        // `Kernels::of` hands out only where AVX2 and FMA were detected.
        unsafe { rows_avx2(w, x, r0, out) }
    })
}

type Rows = fn(BlockView, &[f32], usize, &mut [f32]);

/// Every token's rows with `rows`, parallel over chunks of weight rows.
fn decode_rows(ex: Exec, a: &Operands, w: BlockView, out: &mut [f32], rows: Rows) {
    let Operands { x, bias, n, k, m, .. } = *a;
    if n == 1 {
        let threads = ex.threads();
        let c = chunk_rows(m, threads * 2, 16);
        let work = |ci: usize, o: &mut [f32]| {
            rows(w, x, ci * c, o);
            add_bias(o, bias, ci * c);
        };
        return match ex.pool {
            Some(pool) => par_chunks_caller(pool, threads, out, c, work),
            None => work(0, out),
        };
    }
    let ex = ex.sized(n * k * m);
    let c = chunk_rows(m, ex.threads(), 16);
    let parts: Vec<(usize, Vec<f32>)> = ex.map_range(m.div_ceil(c), |ci| {
        let r0 = ci * c;
        let nr = c.min(m - r0);
        let mut local = vec![0f32; n * nr];
        for (i, o) in local.chunks_exact_mut(nr).enumerate() {
            rows(w, &x[i * k..(i + 1) * k], r0, o);
            add_bias(o, bias, r0);
        }
        (r0, local)
    });
    scatter_strips(parts, out, n, m);
}

/// Every token's rows with the AVX2 integer block kernels: one token's chunk by chunk, several
/// tokens' with each chunk of weight rows unpacked once for up to `blocks_avx2::TOKENS` of
/// them, every token getting the bits it gets alone.
#[cfg(target_arch = "x86_64")]
fn decode_ints(ex: Exec, a: &Operands, w: BlockView, out: &mut [f32]) {
    use super::blocks_avx2::{rows, BPrep, TOKENS};
    let Operands { x, bias, n, k, m, .. } = *a;
    if n == 1 {
        let p = BPrep::new(x);
        let threads = ex.threads();
        let c = chunk_rows(m, threads * 2, 16);
        let work = |ci: usize, o: &mut [f32]| {
            // SAFETY: reached only through the AVX2 and AVX-512 kernel tables (see
            // `decode_avx2`), so AVX2, FMA and F16C were detected.
            unsafe { rows(w, &[&p], k, ci * c, o) };
            add_bias(o, bias, ci * c);
        };
        return match ex.pool {
            Some(pool) => par_chunks_caller(pool, threads, out, c, work),
            None => work(0, out),
        };
    }
    let ex = ex.sized(n * k * m);
    let preps: Vec<BPrep> = x.chunks_exact(k).map(BPrep::new).collect();
    let c = chunk_rows(m, ex.threads(), 16);
    let parts: Vec<(usize, Vec<f32>)> = ex.map_range(m.div_ceil(c), |ci| {
        let r0 = ci * c;
        let nr = c.min(m - r0);
        let mut local = vec![0f32; n * nr];
        for (g, o) in local.chunks_mut(TOKENS * nr).enumerate() {
            let ps: Vec<&BPrep> = preps[g * TOKENS..g * TOKENS + o.len() / nr].iter().collect();
            // SAFETY: as above.
            unsafe { rows(w, &ps, k, r0, o) };
        }
        for o in local.chunks_exact_mut(nr) {
            add_bias(o, bias, r0);
        }
        (r0, local)
    });
    scatter_strips(parts, out, n, m);
}

/// The same loop compiled for AVX2 (wider lanes; the arithmetic, mul then add, is unchanged).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(w: BlockView, x: &[f32], r0: usize, out: &mut [f32]) {
    rows(w, x, r0, out)
}

/// out[ri] = dot(row r0 + ri of w, x), x: [k] with k = row length.
#[inline(always)]
fn rows(w: BlockView, x: &[f32], r0: usize, out: &mut [f32]) {
    let n = w.layout.elems;
    let nb = x.len() / n;
    let mut tmp = [0f32; 256];
    for (ri, o) in out.iter_mut().enumerate() {
        let b0 = (r0 + ri) * nb;
        let mut acc = [0f32; LANES];
        for (b, xs) in x.chunks_exact(n).enumerate() {
            let wv = &mut tmp[..n];
            w.decode_block(b0 + b, wv);
            for (wc, xc) in wv.chunks_exact(LANES).zip(xs.chunks_exact(LANES)) {
                for l in 0..LANES {
                    acc[l] += wc[l] * xc[l];
                }
            }
        }
        *o = hsum(&acc);
    }
}
