//! Residual add, in place: x += y.

use rayon::prelude::*;
use tandem_core::ops::Add;
use tandem_core::{DType, Result};

use super::chunk_rows;
use crate::table::Table;
use crate::Exec;

const OP: &str = "add";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &Add) -> Result<()> {
    t.with_output(OP, "x", op.x, DType::F32, op.len, |t, x| {
        let y = t.input(OP, "y", op.y, DType::F32, op.len)?;
        let (x, y) = (&mut x.f32_mut()[..op.len], &y.f32()[..op.len]);
        match ex.pool {
            None => reference(x, y),
            Some(_) => match ex.pool_for(op.len) {
                Some(pool) => pool.install(|| fast(x, y, ex.threads())),
                None => add_chunk(x, y),
            },
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

pub(crate) fn fast(x: &mut [f32], y: &[f32], threads: usize) {
    let c = chunk_rows(x.len(), threads, 4096);
    x.par_chunks_mut(c)
        .zip(y.par_chunks(c))
        .for_each(|(x, y)| add_chunk(x, y));
}

fn add_chunk(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
