//! Sampling a token per row on the backend, so only its id comes back. Both modes run the
//! engine's definition, `tandem_core::sampling::sample_row`: it runs once per decoded token on
//! one row, where a faster scan would not show.

use tandem_core::ops::Sample;
use tandem_core::sampling::sample_row;
use tandem_core::{DType, Result};

use crate::table::{numel, Table};
use crate::Exec;

const OP: &str = "sample";

pub(crate) fn run(t: &mut Table, _ex: Exec, op: &Sample) -> Result<()> {
    op.check_params()?;
    let len = numel(OP, &[op.n, op.width])?;
    t.with_output(OP, "out", op.out, DType::U32, op.n, |t, out| {
        let x = &t.input(OP, "x", op.x, DType::F32, len)?.f32()[..len];
        for (i, o) in out.u32_mut()[..op.n].iter_mut().enumerate() {
            let row = &x[i * op.width..(i + 1) * op.width];
            *o = sample_row(
                row,
                op.temperature,
                op.top_k,
                op.top_p,
                op.min_p,
                op.uniform,
            );
        }
        Ok(())
    })
}
