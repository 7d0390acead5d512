//! Soft-capping in place: x = cap * tanh(x / cap) (Gemma 2's final logits).

use tandem_core::ops::Softcap;
use tandem_core::Result;

use super::chunk_rows;
use crate::table::Table;
use crate::Exec;

const OP: &str = "softcap";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Softcap) -> Result<()> {
    t.with_out(OP, "x", op.x, |_, x| {
        let x = &mut x.f32_mut()[..op.len];
        match ex.pool_for(op.len) {
            Some(_) if ex.fast => {
                let c = chunk_rows(x.len(), ex.threads(), 4096);
                ex.for_chunks(x, c, |_, xs| reference(xs, op.cap));
            }
            _ => reference(x, op.cap),
        }
        Ok(())
    })
}

/// x: [len]; cap > 0.
pub(crate) fn reference(x: &mut [f32], cap: f32) {
    for v in x {
        *v = cap * (*v / cap).tanh();
    }
}
