//! Forbidding the tokens a row's constraint rejects: their logits become -inf before sampling.

use tandem_core::ops::{check_indices, MaskLogits};
use tandem_core::Result;

use crate::table::Table;
use crate::Exec;

const OP: &str = "mask_logits";

pub(crate) fn run(t: &mut Table, _ex: Exec, op: &MaskLogits) -> Result<()> {
    t.with_out(OP, "x", op.x, |t, x| {
        let rows = &t.arg(OP, "rows", op.rows)?.u32()[..op.n];
        let mask = &t.arg(OP, "mask", op.mask)?.u32()[..op.n * op.words()];
        check_indices(OP, "rows", rows, op.x_rows, "x_rows")?;
        // A vocabulary a row, a few rows a step: memory traffic only, one loop for both modes.
        reference(&mut x.f32_mut()[..op.x_rows * op.width], rows, mask, op.width);
        Ok(())
    })
}

/// x: [.., width]; rows: [n]; mask: [n * width.div_ceil(32)].
pub(crate) fn reference(x: &mut [f32], rows: &[u32], mask: &[u32], width: usize) {
    let words = width.div_ceil(32);
    for (i, &r) in rows.iter().enumerate() {
        let row = &mut x[r as usize * width..(r as usize + 1) * width];
        let bits = &mask[i * words..(i + 1) * words];
        for (j, v) in row.iter_mut().enumerate() {
            if bits[j / 32] >> (j % 32) & 1 == 0 {
                *v = f32::NEG_INFINITY;
            }
        }
    }
}
