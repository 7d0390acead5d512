//! out = silu(gate) * up, elementwise.

use rayon::prelude::*;
use tandem_core::ops::Swiglu;
use tandem_core::{DType, Result};

use super::chunk_rows;
use crate::table::Table;
use crate::Exec;

const OP: &str = "swiglu";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Swiglu) -> Result<()> {
    t.with_output(OP, "out", op.out, DType::F32, op.len, |t, out| {
        let gate = &t.input(OP, "gate", op.gate, DType::F32, op.len)?.f32()[..op.len];
        let up = &t.input(OP, "up", op.up, DType::F32, op.len)?.f32()[..op.len];
        let out = &mut out.f32_mut()[..op.len];
        match ex.pool {
            None => reference(gate, up, out),
            Some(_) => match ex.pool_for(op.len) {
                Some(pool) => pool.install(|| fast(gate, up, out, ex.threads())),
                None => reference(gate, up, out),
            },
        }
        Ok(())
    })
}

#[inline(always)]
fn silu_mul(g: f32, u: f32) -> f32 {
    g / (1.0 + (-g).exp()) * u
}

/// gate, up, out: [len].
pub(crate) fn reference(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for i in 0..out.len() {
        out[i] = silu_mul(gate[i], up[i]);
    }
}

pub(crate) fn fast(gate: &[f32], up: &[f32], out: &mut [f32], threads: usize) {
    let c = chunk_rows(out.len(), threads, 2048);
    out.par_chunks_mut(c)
        .zip(gate.par_chunks(c))
        .zip(up.par_chunks(c))
        .for_each(|((o, g), u)| {
            for i in 0..o.len() {
                o[i] = silu_mul(g[i], u[i]);
            }
        });
}
