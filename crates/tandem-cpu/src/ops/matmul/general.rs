//! The general decode path: weights no one-token kernel takes (f32, f16, quantized rows with
//! k % 32 != 0). A tile of [`TILE`] rows is dequantized into an f32 scratch (f32 rows are read
//! in place) and dotted against up to [`TOKEN_TILE`] tokens at once, each dot the bits of
//! [`dot`] alone however the tile groups the work.

use super::dequant::dequant_into;
use super::Operands;
use crate::ops::{chunk_rows, dot, dots};
use crate::Exec;

/// Rows dequantized per tile and shared by all tokens in the tile loop.
const TILE: usize = 4;

/// Tokens whose dots with a tile of rows are taken at once: a verify step's K + 1 = 5 (the
/// AVX-512 tile's 20 accumulators fit its 32 registers).
const TOKEN_TILE: usize = 5;

/// One token's rows (a.n = 1; out: [m]), parallel over chunks of tiles.
pub(super) fn decode(ex: Exec, a: &Operands, out: &mut [f32]) {
    let ex = ex.sized(a.k * a.m);
    let c = chunk_rows(a.m, ex.threads(), TILE);
    ex.for_chunks(out, c, |ci, o| (ex.kernels.general_tokens)(a, ci * c, o));
}

/// Rows r0.. of every token's product: out: [a.n, rows], rows = out.len() / a.n.
pub(super) fn tokens_portable(a: &Operands, r0: usize, out: &mut [f32]) {
    tokens(a, r0, out, |xs, rows, res| {
        for (x, r) in xs.iter().zip(res) {
            *r = dots::<TILE>(x, rows);
        }
    })
}

/// [`tokens_portable`] with AVX2 dots.
#[cfg(target_arch = "x86_64")]
pub(super) fn tokens_avx2(a: &Operands, r0: usize, out: &mut [f32]) {
    // SAFETY: this function is reached only through the AVX2 and AVX-512 kernel tables, which
    // `Kernels::of` hands out only where AVX2 and FMA were detected.
    unsafe { tokens_avx2_tf(a, r0, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tokens_avx2_tf(a: &Operands, r0: usize, out: &mut [f32]) {
    tokens(a, r0, out, |xs, rows, res| {
        for (x, r) in xs.iter().zip(res) {
            // SAFETY: this function runs only where AVX2 was detected.
            *r = unsafe { crate::ops::dots4_avx2(x, rows) };
        }
    })
}

/// [`tokens_portable`] with a tile of up to 5 tokens x 4 rows in AVX-512 registers.
#[cfg(target_arch = "x86_64")]
pub(super) fn tokens_avx512(a: &Operands, r0: usize, out: &mut [f32]) {
    // SAFETY: reached only through the AVX-512 kernel table, which `Kernels::of` hands out only
    // where AVX-512F, AVX2 and FMA were detected.
    unsafe { tokens_avx512_tf(a, r0, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tokens_avx512_tf(a: &Operands, r0: usize, out: &mut [f32]) {
    use crate::ops::dots_avx512 as dots;
    tokens(a, r0, out, |xs, rows, res| {
        // SAFETY (every arm): the caller detected AVX-512F.
        match *xs {
            [a, b, c, d, e] => res.copy_from_slice(&unsafe { dots::<5>([a, b, c, d, e], rows) }),
            [a, b, c, d] => res.copy_from_slice(&unsafe { dots::<4>([a, b, c, d], rows) }),
            [a, b, c] => res.copy_from_slice(&unsafe { dots::<3>([a, b, c], rows) }),
            [a, b] => res.copy_from_slice(&unsafe { dots::<2>([a, b], rows) }),
            [a] => res.copy_from_slice(&unsafe { dots::<1>([a], rows) }),
            _ => unreachable!("token groups of 1 to TOKEN_TILE"),
        }
    })
}

/// out: [a.n, rows] for weight rows r0..r0 + rows (rows = out.len() / a.n). `tile(xs, rows,
/// res)` is [`dots`] for up to [`TOKEN_TILE`] tokens and a tile of rows, res[t][j] =
/// dot(xs[t], rows[j]), the same bits however the ISA's form of it groups the work.
#[inline(always)]
fn tokens(
    a: &Operands,
    r0: usize,
    out: &mut [f32],
    tile: impl Fn(&[&[f32]], [&[f32]; TILE], &mut [[f32; TILE]]),
) {
    let Operands { x, w, bias, n, k, .. } = *a;
    let rows = out.len() / n;
    // f32 rows are read where they are; the others are widened a tile at a time.
    let dense = match w {
        crate::table::Weight::F32(v) => Some(v),
        _ => None,
    };
    let mut scratch = vec![0f32; if dense.is_some() { 0 } else { TILE * k }];
    for t0 in (0..rows).step_by(TILE) {
        let t1 = (t0 + TILE).min(rows);
        if dense.is_none() {
            for r in t0..t1 {
                dequant_into(w, (r0 + r) * k, &mut scratch[(r - t0) * k..(r - t0 + 1) * k]);
            }
        }
        let row = |r: usize| match dense {
            Some(v) => &v[(r0 + r) * k..(r0 + r + 1) * k],
            None => &scratch[(r - t0) * k..(r - t0 + 1) * k],
        };
        let b = |r: usize| bias.map_or(0.0, |b| b[r0 + r]);
        if t1 - t0 < TILE {
            for i in 0..n {
                for r in t0..t1 {
                    out[i * rows + r] = dot(&x[i * k..(i + 1) * k], row(r)) + b(r);
                }
            }
            continue;
        }
        // The tile's rows with a group of tokens at once (each the same bits as `dot` alone).
        for i0 in (0..n).step_by(TOKEN_TILE) {
            let g = TOKEN_TILE.min(n - i0);
            let xs: [&[f32]; TOKEN_TILE] = std::array::from_fn(|t| {
                let i = (i0 + t).min(n - 1);
                &x[i * k..(i + 1) * k]
            });
            let mut res = [[0f32; TILE]; TOKEN_TILE];
            tile(&xs[..g], std::array::from_fn(|j| row(t0 + j)), &mut res[..g]);
            for (i, v) in (i0..i0 + g).zip(res) {
                for (j, v) in v.into_iter().enumerate() {
                    out[i * rows + t0 + j] = v + b(t0 + j);
                }
            }
        }
    }
}
