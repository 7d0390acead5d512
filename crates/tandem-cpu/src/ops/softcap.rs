//! Soft-capping in place: x = cap * tanh(x / cap) (Gemma 2's final logits).

use tandem_core::ops::Softcap;
use tandem_core::Result;

use super::{chunk_rows, tanh};
use crate::table::Table;
use crate::Exec;

const OP: &str = "softcap";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Softcap) -> Result<()> {
    t.with_out(OP, "x", op.x, |_, x| {
        let x = &mut x.f32_mut()[..op.len];
        if ex.fast {
            // The vectorizable tanh (a few ulp from libm's, a call per element): a vocabulary's
            // logits are a few hundred thousand of them per token.
            let ex = ex.sized(op.len);
            let c = chunk_rows(x.len(), ex.threads(), 4096);
            ex.for_chunks(x, c, |_, xs| {
                for v in xs {
                    *v = op.cap * tanh(*v / op.cap);
                }
            });
        } else {
            reference(x, op.cap);
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
