//! Rotary position embedding in place, rotate-half layout: element i of a head pairs with
//! element i + head_dim/2, rotated by position * inv_freq[i].

use tandem_core::ops::Rope;
use tandem_core::Result;

use crate::table::Table;
use crate::Exec;

const OP: &str = "rope";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Rope) -> Result<()> {
    let len = op.n * op.heads * op.head_dim;
    let half = op.head_dim / 2;
    t.with_out(OP, "x", op.x, |t, x| {
        let pos = &t.arg(OP, "positions", op.positions)?.u32()[..op.n];
        let inv_freq = &t.arg(OP, "inv_freq", op.inv_freq)?.f32()[..half];
        let x = &mut x.f32_mut()[..len];
        match (ex.fast, ex.pool_for(len)) {
            (false, _) => reference(x, pos, inv_freq, op.heads, op.head_dim),
            (true, Some(_)) => fast(ex, x, pos, inv_freq, op.heads, op.head_dim),
            (true, None) => {
                let row = op.heads * op.head_dim;
                for (xr, &p) in x.chunks_mut(row.max(1)).zip(pos) {
                    rope_row(xr, p, inv_freq, op.head_dim);
                }
            }
        }
        Ok(())
    })
}

/// x: [n, heads, head_dim]; positions: [n]; inv_freq: [head_dim / 2].
pub(crate) fn reference(
    x: &mut [f32],
    positions: &[u32],
    inv_freq: &[f32],
    heads: usize,
    head_dim: usize,
) {
    let half = head_dim / 2;
    for (i, &p) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (i * heads + h) * head_dim;
            for j in 0..half {
                let angle = p as f32 * inv_freq[j];
                let (s, c) = angle.sin_cos();
                let (a, b) = (x[base + j], x[base + j + half]);
                x[base + j] = a * c - b * s;
                x[base + j + half] = a * s + b * c;
            }
        }
    }
}

/// Tokens in parallel; sin/cos computed once per token and shared by all heads.
pub(crate) fn fast(
    ex: Exec,
    x: &mut [f32],
    positions: &[u32],
    inv_freq: &[f32],
    heads: usize,
    head_dim: usize,
) {
    let row = heads * head_dim;
    if row == 0 {
        return;
    }
    ex.for_chunks(x, row, |i, xr| rope_row(xr, positions[i], inv_freq, head_dim));
}

/// One token's heads; sin/cos computed once and shared by all of them, a stack chunk of
/// frequencies at a time (as Vecs they were four allocations a layer in decode).
fn rope_row(xr: &mut [f32], p: u32, inv_freq: &[f32], head_dim: usize) {
    const CHUNK: usize = 64;
    let half = head_dim / 2;
    for j0 in (0..half).step_by(CHUNK) {
        let n = CHUNK.min(half - j0);
        let (mut sin, mut cos) = ([0f32; CHUNK], [0f32; CHUNK]);
        for (j, &f) in inv_freq[j0..j0 + n].iter().enumerate() {
            (sin[j], cos[j]) = (p as f32 * f).sin_cos();
        }
        for head in xr.chunks_exact_mut(head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for j in 0..n {
                let (a, b) = (lo[j0 + j], hi[j0 + j]);
                lo[j0 + j] = a * cos[j] - b * sin[j];
                hi[j0 + j] = a * sin[j] + b * cos[j];
            }
        }
    }
}
