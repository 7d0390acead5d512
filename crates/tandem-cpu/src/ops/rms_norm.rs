//! out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight.

use tandem_core::ops::RmsNorm;
use tandem_core::Result;

use super::dot;
use crate::table::Table;
use crate::Exec;

const OP: &str = "rms_norm";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &RmsNorm) -> Result<()> {
    let len = op.n * op.dim;
    t.with_out(OP, "out", op.out, |t, out| {
        let x = &t.arg(OP, "x", op.x)?.f32()[..len];
        let w = &t.arg(OP, "weight", op.weight)?.f32()[..op.dim];
        let out = &mut out.f32_mut()[..len];
        match (ex.fast, ex.pool_for(len)) {
            (false, _) => reference(x, w, out, op.dim, op.eps),
            (true, Some(_)) => fast(ex, x, w, out, op.dim, op.eps),
            (true, None) => {
                for (o, row) in out.chunks_mut(op.dim).zip(x.chunks(op.dim)) {
                    norm_row(row, w, o, op.eps);
                }
            }
        }
        Ok(())
    })
}

/// x: [n, dim]; weight: [dim]; out: [n, dim].
pub(crate) fn reference(x: &[f32], w: &[f32], out: &mut [f32], dim: usize, eps: f32) {
    if dim == 0 {
        return;
    }
    for i in 0..x.len() / dim {
        let row = &x[i * dim..(i + 1) * dim];
        let mut ss = 0f32;
        for &v in row {
            ss += v * v;
        }
        let scale = 1.0 / (ss / dim as f32 + eps).sqrt();
        for j in 0..dim {
            out[i * dim + j] = row[j] * scale * w[j];
        }
    }
}

/// Rows in parallel; the sum of squares uses the lane-parallel dot.
pub(crate) fn fast(ex: Exec, x: &[f32], w: &[f32], out: &mut [f32], dim: usize, eps: f32) {
    if dim == 0 {
        return;
    }
    ex.for_chunks(out, dim, |i, o| norm_row(&x[i * dim..(i + 1) * dim], w, o, eps));
}

fn norm_row(row: &[f32], w: &[f32], o: &mut [f32], eps: f32) {
    let dim = row.len();
    let scale = 1.0 / (dot(row, row) / dim as f32 + eps).sqrt();
    for j in 0..dim {
        o[j] = row[j] * scale * w[j];
    }
}
