//! Residual add, in place: x += y.

use tandem_core::ops::Add;
use tandem_core::Result;

use super::chunk_rows;
use crate::table::Table;
use crate::Exec;

const OP: &str = "add";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Add) -> Result<()> {
    t.with_out(OP, "x", op.x, |t, x| {
        let y = t.arg(OP, "y", op.y)?;
        let (x, y) = (&mut x.f32_mut()[..op.len], &y.f32()[..op.len]);
        match (ex.fast, ex.pool_for(op.len)) {
            (false, _) => reference(x, y),
            (true, Some(_)) => fast(ex, x, y),
            (true, None) => add_chunk(x, y),
        }
        Ok(())
    })
}

/// x, y: [len].
pub(crate) fn reference(x: &mut [f32], y: &[f32]) {
    for i in 0..x.len() {
        x[i] += y[i];
    }
}

pub(crate) fn fast(ex: Exec, x: &mut [f32], y: &[f32]) {
    let c = chunk_rows(x.len(), ex.threads(), 4096);
    ex.for_chunks(x, c, |ci, x| add_chunk(x, &y[ci * c..]));
}

fn add_chunk(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
