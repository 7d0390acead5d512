//! dst[dst_row + i] = src[src_row + i]: gathers rows of a batch (the rows that need logits).

use tandem_core::ops::CopyRows;
use tandem_core::Result;

use crate::table::Table;
use crate::Exec;

const OP: &str = "copy_rows";

pub(crate) fn run(t: &mut Table, _ex: Exec, op: &CopyRows) -> Result<()> {
    let src_len = op.src_row.saturating_add(op.n_rows) * op.width;
    let dst_len = op.dst_row.saturating_add(op.n_rows) * op.width;
    let (s0, d0) = (op.src_row * op.width, op.dst_row * op.width);
    t.with_out(OP, "dst", op.dst, |t, dst| {
        let src = t.arg(OP, "src", op.src)?.f32();
        // A plain copy is already memory-bound; both modes share it.
        reference(&src[s0..src_len], &mut dst.f32_mut()[d0..dst_len]);
        Ok(())
    })
}

/// src: [n_rows, width] starting at the first copied row; dst likewise.
pub(crate) fn reference(src: &[f32], dst: &mut [f32]) {
    dst.copy_from_slice(src);
}
