//! Index of each row's largest value: lowest index on ties, NaN never wins.

use tandem_core::ops::Argmax;
use tandem_core::Result;

use crate::table::Table;
use crate::Exec;

const OP: &str = "argmax";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Argmax) -> Result<()> {
    let len = op.n * op.width;
    t.with_out(OP, "out", op.out, |t, out| {
        let x = &t.arg(OP, "x", op.x)?.f32()[..len];
        let out = &mut out.u32_mut()[..op.n];
        match ex.pool {
            // One row (a decode step's logits) is a single scan: no pool. Without a pool the
            // reference loop is the fast mode's loop too.
            Some(_) if ex.fast && op.n > 1 => fast(ex, x, out, op.width),
            _ => reference(x, out, op.width),
        }
        Ok(())
    })
}

/// The first index holding the row's maximum; 0 when every value is NaN (or the row is empty).
fn row_argmax(row: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (j, &v) in row.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((j, v)),
        }
    }
    best.map_or(0, |(j, _)| j as u32)
}

/// x: [n, width]; out: [n].
pub(crate) fn reference(x: &[f32], out: &mut [u32], width: usize) {
    for i in 0..out.len() {
        out[i] = row_argmax(&x[i * width..(i + 1) * width]);
    }
}

/// Rows in parallel; each row is one scan (argmax runs once per step on the logits).
pub(crate) fn fast(ex: Exec, x: &[f32], out: &mut [u32], width: usize) {
    ex.for_chunks(out, 1, |i, o| o[0] = row_argmax(&x[i * width..(i + 1) * width]));
}
