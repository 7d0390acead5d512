//! The small ops: rope, swiglu, add, copy_rows and argmax, a kernel file each.

use tandem_core::ops::{Add, Argmax, CopyRows, Rope, Swiglu};
use tandem_core::{DType, Error, Result};

use crate::kernels::KernelFile;
use crate::launch::{fits_u32, grid_1d, numel, Arg, Recorder};

pub(crate) fn rope(r: &mut Recorder, op: &Rope) -> Result<()> {
    const OP: &str = "rope";
    if op.head_dim % 2 != 0 {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: "an even head_dim".into(),
            got: op.head_dim.to_string(),
        });
    }
    let len = numel(OP, &[op.n, op.heads, op.head_dim])?;
    let x = r.buf(OP, "x", op.x, DType::F32, len)?.ptr;
    let pos = r.buf(OP, "positions", op.positions, DType::U32, op.n)?.ptr;
    let inv = r.buf(OP, "inv_freq", op.inv_freq, DType::F32, op.head_dim / 2)?.ptr;
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(pos),
        Arg::Ptr(inv),
        Arg::U32(fits_u32(OP, "n", op.n)?),
        Arg::U32(fits_u32(OP, "heads", op.heads)?),
        Arg::U32(fits_u32(OP, "head_dim", op.head_dim)?),
    ];
    r.launch(KernelFile::Rope, "rope", grid_1d((len / 2) as u64, 256), 256, 0, &args)
}

pub(crate) fn swiglu(r: &mut Recorder, op: &Swiglu) -> Result<()> {
    const OP: &str = "swiglu";
    let gate = r.buf(OP, "gate", op.gate, DType::F32, op.len)?.ptr;
    let up = r.buf(OP, "up", op.up, DType::F32, op.len)?.ptr;
    let out = r.buf(OP, "out", op.out, DType::F32, op.len)?.ptr;
    let args = [Arg::Ptr(gate), Arg::Ptr(up), Arg::Ptr(out), Arg::U64(op.len as u64)];
    r.launch(KernelFile::Swiglu, "swiglu", grid_1d(op.len as u64, 256), 256, 0, &args)
}

pub(crate) fn add(r: &mut Recorder, op: &Add) -> Result<()> {
    const OP: &str = "add";
    let x = r.buf(OP, "x", op.x, DType::F32, op.len)?.ptr;
    let y = r.buf(OP, "y", op.y, DType::F32, op.len)?.ptr;
    let args = [Arg::Ptr(x), Arg::Ptr(y), Arg::U64(op.len as u64)];
    r.launch(KernelFile::Add, "add", grid_1d(op.len as u64, 256), 256, 0, &args)
}

pub(crate) fn copy_rows(r: &mut Recorder, op: &CopyRows) -> Result<()> {
    const OP: &str = "copy_rows";
    let src_len = numel(OP, &[op.src_row.saturating_add(op.n_rows), op.width])?;
    let dst_len = numel(OP, &[op.dst_row.saturating_add(op.n_rows), op.width])?;
    let len = numel(OP, &[op.n_rows, op.width])?;
    let src = r.buf(OP, "src", op.src, DType::F32, src_len)?.ptr;
    let dst = r.buf(OP, "dst", op.dst, DType::F32, dst_len)?.ptr;
    // The first rows by pointer offsets (in bounds: the buffers hold the rows checked above).
    let (src, dst) =
        (src + 4 * (op.src_row * op.width) as u64, dst + 4 * (op.dst_row * op.width) as u64);
    let args = [Arg::Ptr(src), Arg::Ptr(dst), Arg::U64(len as u64)];
    r.launch(KernelFile::CopyRows, "copy_rows", grid_1d(len as u64, 256), 256, 0, &args)
}

pub(crate) fn argmax(r: &mut Recorder, op: &Argmax) -> Result<()> {
    const OP: &str = "argmax";
    let len = numel(OP, &[op.n, op.width])?;
    let x = r.buf(OP, "x", op.x, DType::F32, len)?.ptr;
    let out = r.buf(OP, "out", op.out, DType::U32, op.n)?.ptr;
    r.written_u32.push(op.out);
    let args = [Arg::Ptr(x), Arg::Ptr(out), Arg::U32(fits_u32(OP, "width", op.width)?)];
    // ARGMAX_THREADS threads per row.
    r.launch(KernelFile::Argmax, "argmax", (fits_u32(OP, "n", op.n)?, 1, 1), 1024, 0, &args)
}
