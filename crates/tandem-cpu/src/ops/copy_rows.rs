//! dst[i] = src[src_row + i]: picks rows out of a batch (e.g. the last token's hidden state).

use tandem_core::ops::CopyRows;
use tandem_core::{DType, Result};

use crate::table::{numel, Table};
use crate::Exec;

const OP: &str = "copy_rows";

pub(crate) fn run(t: &mut Table, _ex: Exec, op: &CopyRows) -> Result<()> {
    let src_len = numel(OP, &[op.src_row.saturating_add(op.n_rows), op.width])?;
    let dst_len = numel(OP, &[op.n_rows, op.width])?;
    t.with_output(OP, "dst", op.dst, DType::F32, dst_len, |t, dst| {
        let src = t.input(OP, "src", op.src, DType::F32, src_len)?.f32();
        // A plain copy is already memory-bound; both modes share it.
        reference(
            &src[op.src_row * op.width..src_len],
            &mut dst.f32_mut()[..dst_len],
        );
        Ok(())
    })
}

/// src: [n_rows, width] starting at the first copied row; dst: [n_rows, width].
pub(crate) fn reference(src: &[f32], dst: &mut [f32]) {
    dst.copy_from_slice(src);
}
