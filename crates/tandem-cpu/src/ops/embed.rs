//! Token embedding lookup, dequantizing the table rows it touches.

use tandem_core::dtype::bf16_to_f32;
use tandem_core::ops::{check_indices, Embed};
use tandem_core::Result;

use crate::table::{Table, Weight};
use crate::Exec;

const OP: &str = "embed";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Embed) -> Result<()> {
    let out_len = op.n * op.dim;
    t.with_out(OP, "out", op.out, |t, out| {
        let table = t.arg(OP, "table", op.table)?;
        let ids = &t.arg(OP, "ids", op.ids)?.u32()[..op.n];
        check_indices(OP, "ids", ids, op.vocab, "vocab")?;
        let out = &mut out.f32_mut()[..out_len];
        match ex.fast {
            false => reference(table.weight(), ids, out, op.dim, op.scale),
            true => fast(ex, table.weight(), ids, out, op.dim, op.scale),
        }
        Ok(())
    })
}

/// table: [vocab, dim]; ids: [n]; out: [n, dim].
pub(crate) fn reference(table: Weight, ids: &[u32], out: &mut [f32], dim: usize, scale: f32) {
    for (i, &id) in ids.iter().enumerate() {
        for j in 0..dim {
            out[i * dim + j] = table.get(id as usize * dim + j) * scale;
        }
    }
}

/// Rows in parallel. Each element is computed with the reference's formula, so the result is
/// bit-identical; a lookup moves n * dim values and needs nothing cleverer.
pub(crate) fn fast(ex: Exec, table: Weight, ids: &[u32], out: &mut [f32], dim: usize, scale: f32) {
    if dim == 0 {
        return;
    }
    ex.for_chunks(out, dim, |i, row| {
        let base = ids[i] as usize * dim;
        match table {
            Weight::F32(w) => row.copy_from_slice(&w[base..base + dim]),
            Weight::BF16(w) => {
                for (o, &b) in row.iter_mut().zip(&w[base..base + dim]) {
                    *o = bf16_to_f32(b);
                }
            }
            // Whole blocks at a time, with `get`'s arithmetic (see `BlockView::decode_range`).
            Weight::Blocks(b) => b.decode_range(base, row),
            _ => {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = table.get(base + j);
                }
            }
        }
        // x * 1 is x: only a real scale costs a pass.
        if scale != 1.0 {
            row.iter_mut().for_each(|o| *o *= scale);
        }
    });
}
