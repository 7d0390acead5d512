//! Decode matvec for the GGUF block types (Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS) whose rows
//! are whole blocks (every GGUF file's are): each block is decoded to f32 on the stack with
//! the reference formula ([`BlockView::decode_block`]) and dotted with the activation at once,
//! so each weight byte is read once and no row is ever held dequantized.
//!
//! Every row's arithmetic is fixed by k alone (`LANES` lanes over the row, then a fixed pairwise
//! sum), so one or several decode rows, one or two threads, give the same bits.

use tandem_core::quant::BlockView;

use super::super::{chunk_rows, hsum, par_chunks_caller, LANES};
use crate::Exec;

/// Whether rows of length k start on block boundaries (the kernel's precondition).
pub(super) fn row_aligned(b: BlockView, k: usize) -> bool {
    k > 0 && k % b.layout.elems == 0
}

/// out = w @ x (+ bias); x: [k]; w: [m, k] of whole blocks; out: [m].
pub(super) fn decode(
    ex: Exec,
    x: &[f32],
    w: BlockView,
    bias: Option<&[f32]>,
    out: &mut [f32],
    k: usize,
    m: usize,
) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = k;
    #[cfg(target_arch = "x86_64")]
    let prep = (ex.avx2 && super::blocks_avx2::supported(w.dtype))
        .then(|| super::blocks_avx2::BPrep::new(x));
    let threads = ex.threads();
    let c = chunk_rows(m, threads * 2, 16);
    let work = |ci: usize, o: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = &prep {
            // SAFETY: `prep` exists only where AVX2, FMA and F16C were detected at run time.
            unsafe { super::blocks_avx2::rows(w, &[p], k, ci * c, o) };
        } else {
            rows_dispatch(ex.avx2, w, x, ci * c, o);
        }
        #[cfg(not(target_arch = "x86_64"))]
        rows_dispatch(ex.avx2, w, x, ci * c, o);
        if let Some(b) = bias {
            for (v, bv) in o.iter_mut().zip(&b[ci * c..]) {
                *v += bv;
            }
        }
    };
    match ex.pool {
        Some(pool) => par_chunks_caller(pool, threads, out, c, work),
        None => work(0, out),
    }
}

/// d decode rows at once with the AVX2 block kernels: each chunk of weight rows is unpacked
/// once for up to `blocks_avx2::TOKENS` tokens, and every token gets the bits it gets alone.
/// x: [d, k]; out: [d, m].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_batch(
    ex: Exec,
    x: &[f32],
    w: BlockView,
    bias: Option<&[f32]>,
    out: &mut [f32],
    d: usize,
    k: usize,
    m: usize,
) {
    use super::blocks_avx2::{rows, BPrep, TOKENS};
    let preps: Vec<BPrep> = x.chunks_exact(k).map(BPrep::new).collect();
    let c = chunk_rows(m, ex.threads(), 16);
    let parts: Vec<(usize, Vec<f32>)> = ex.map_range(m.div_ceil(c), |ci| {
        let r0 = ci * c;
        let n = c.min(m - r0);
        let mut local = vec![0f32; d * n];
        for (g, o) in local.chunks_mut(TOKENS * n).enumerate() {
            let ps: Vec<&BPrep> = preps[g * TOKENS..g * TOKENS + o.len() / n].iter().collect();
            // SAFETY: callers pass `ex.avx2`, true only when AVX2, FMA and F16C were detected.
            unsafe { rows(w, &ps, k, r0, o) };
        }
        (r0, local)
    });
    for (r0, local) in parts {
        let n = local.len() / d;
        for i in 0..d {
            let o = &mut out[i * m + r0..i * m + r0 + n];
            o.copy_from_slice(&local[i * n..(i + 1) * n]);
            if let Some(b) = bias {
                for (v, bv) in o.iter_mut().zip(&b[r0..]) {
                    *v += bv;
                }
            }
        }
    }
}

/// out[ri] = dot(row r0 + ri of w, x), x: [k] with k = row length.
pub(super) fn rows_dispatch(avx2: bool, w: BlockView, x: &[f32], r0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when AVX2 and FMA were detected at run time.
        return unsafe { rows_avx2(w, x, r0, out) };
    }
    let _ = avx2;
    rows(w, x, r0, out)
}

/// The same loop compiled for AVX2 (wider lanes; the arithmetic, mul then add, is unchanged).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(w: BlockView, x: &[f32], r0: usize, out: &mut [f32]) {
    rows(w, x, r0, out)
}

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
