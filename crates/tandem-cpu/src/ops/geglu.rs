//! out = gelu_tanh(gate) * up, elementwise (Gemma's gated MLP).

use tandem_core::ops::Geglu;
use tandem_core::Result;

use super::{chunk_rows, tanh};
use crate::table::Table;
use crate::Exec;

const OP: &str = "geglu";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Geglu) -> Result<()> {
    t.with_out(OP, "out", op.out, |t, out| {
        let gate = &t.arg(OP, "gate", op.gate)?.f32()[..op.len];
        let up = &t.arg(OP, "up", op.up)?.f32()[..op.len];
        let out = &mut out.f32_mut()[..op.len];
        match ex.fast {
            false => reference(gate, up, out),
            // A decode step's few thousand elements run inline on the caller.
            true => fast(ex.sized(op.len), gate, up, out),
        }
        Ok(())
    })
}

/// 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) * u, in f32 as PyTorch's
/// `gelu(approximate="tanh")` computes it, with the given tanh: libm's for the reference, the
/// vectorizable `ops::tanh` (a few ulp from it) for the fast mode.
#[inline(always)]
fn gelu_mul(g: f32, u: f32, tanh: impl Fn(f32) -> f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let inner = SQRT_2_OVER_PI * (g + 0.044715 * g * g * g);
    0.5 * g * (1.0 + tanh(inner)) * u
}

/// gate, up, out: [len].
pub(crate) fn reference(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for i in 0..out.len() {
        out[i] = gelu_mul(gate[i], up[i], f32::tanh);
    }
}

pub(crate) fn fast(ex: Exec, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let c = chunk_rows(out.len(), ex.threads(), 2048);
    ex.for_chunks(out, c, |ci, o| {
        for ((o, &g), &u) in o.iter_mut().zip(&gate[ci * c..]).zip(&up[ci * c..]) {
            *o = gelu_mul(g, u, tanh);
        }
    });
}
