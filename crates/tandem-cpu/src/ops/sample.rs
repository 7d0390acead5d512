//! Sampling a token per row on the backend, each row with its own parameters, so only ids
//! come back. Both modes run the engine's definition, `tandem_core::sampling::sample_with`:
//! it runs once per decoded token per row, where a faster scan would not show.

use tandem_core::ops::{Sample, SampleRow};
use tandem_core::sampling::sample_with;
use tandem_core::Result;

use crate::table::Table;
use crate::Exec;

const OP: &str = "sample";

pub(crate) fn run(t: &mut Table, _ex: Exec, op: &Sample) -> Result<()> {
    let len = op.n * op.width;
    let words = op.n * SampleRow::WORDS;
    t.with_out(OP, "out", op.out, |t, out| {
        let rows = SampleRow::from_words(&t.arg(OP, "params", op.params)?.u32()[..words]);
        for r in &rows {
            r.check()?;
        }
        let x = &t.arg(OP, "x", op.x)?.f32()[..len];
        for (i, o) in out.u32_mut()[..op.n].iter_mut().enumerate() {
            *o = sample_with(&x[i * op.width..(i + 1) * op.width], &rows[i]);
        }
        Ok(())
    })
}
