//! Rotary position embedding in place, rotate-half layout: element i of a head's first
//! rot_dim pairs with element i + rot_dim/2, rotated by position * inv_freq[i], cos and sin
//! scaled by `scale`; the rest of the head passes through.

use tandem_core::ops::Rope;
use tandem_core::Result;

use crate::table::Table;
use crate::Exec;

const OP: &str = "rope";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Rope) -> Result<()> {
    let len = op.n * op.heads * op.head_dim;
    let half = op.rot_dim / 2;
    let shape =
        Shape { heads: op.heads, head_dim: op.head_dim, rot_dim: op.rot_dim, scale: op.scale };
    t.with_out(OP, "x", op.x, |t, x| {
        let pos = &t.arg(OP, "positions", op.positions)?.u32()[..op.n];
        let inv_freq = &t.arg(OP, "inv_freq", op.inv_freq)?.f32()[..half];
        let x = &mut x.f32_mut()[..len];
        match (ex.fast, ex.pool_for(len)) {
            (false, _) => reference(x, pos, inv_freq, shape),
            (true, Some(_)) => fast(ex, x, pos, inv_freq, shape),
            (true, None) => {
                let row = op.heads * op.head_dim;
                for (xr, &p) in x.chunks_mut(row.max(1)).zip(pos) {
                    rope_row(xr, p, inv_freq, shape);
                }
            }
        }
        Ok(())
    })
}

/// The op's head geometry.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub heads: usize,
    pub head_dim: usize,
    pub rot_dim: usize,
    pub scale: f32,
}

/// x: [n, heads, head_dim]; positions: [n]; inv_freq: [rot_dim / 2].
pub(crate) fn reference(x: &mut [f32], positions: &[u32], inv_freq: &[f32], g: Shape) {
    let half = g.rot_dim / 2;
    for (i, &p) in positions.iter().enumerate() {
        for h in 0..g.heads {
            let base = (i * g.heads + h) * g.head_dim;
            for j in 0..half {
                let angle = p as f32 * inv_freq[j];
                let (s, c) = angle.sin_cos();
                let (s, c) = (s * g.scale, c * g.scale);
                let (a, b) = (x[base + j], x[base + j + half]);
                x[base + j] = a * c - b * s;
                x[base + j + half] = a * s + b * c;
            }
        }
    }
}

/// Tokens in parallel; sin/cos computed once per token and shared by all heads.
pub(crate) fn fast(ex: Exec, x: &mut [f32], positions: &[u32], inv_freq: &[f32], g: Shape) {
    let row = g.heads * g.head_dim;
    if row == 0 {
        return;
    }
    ex.for_chunks(x, row, |i, xr| rope_row(xr, positions[i], inv_freq, g));
}

/// One token's heads; sin/cos computed once and shared by all of them, a stack chunk of
/// frequencies at a time (as Vecs they were four allocations a layer in decode).
fn rope_row(xr: &mut [f32], p: u32, inv_freq: &[f32], g: Shape) {
    const CHUNK: usize = 64;
    let half = g.rot_dim / 2;
    for j0 in (0..half).step_by(CHUNK) {
        let n = CHUNK.min(half - j0);
        let (mut sin, mut cos) = ([0f32; CHUNK], [0f32; CHUNK]);
        for (j, &f) in inv_freq[j0..j0 + n].iter().enumerate() {
            let (s, c) = (p as f32 * f).sin_cos();
            (sin[j], cos[j]) = (s * g.scale, c * g.scale);
        }
        for head in xr.chunks_exact_mut(g.head_dim) {
            let (lo, hi) = head[..g.rot_dim].split_at_mut(half);
            for j in 0..n {
                let (a, b) = (lo[j0 + j], hi[j0 + j]);
                lo[j0 + j] = a * cos[j] - b * sin[j];
                hi[j0 + j] = a * sin[j] + b * cos[j];
            }
        }
    }
}
