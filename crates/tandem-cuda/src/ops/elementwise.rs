//! The small ops: rope, swiglu, geglu, softcap, add, copy_rows, argmax and mask_logits, a kernel
//! file each.

use tandem_core::ops::{Add, Argmax, CopyRows, Geglu, MaskLogits, Rope, Softcap, Swiglu};
use tandem_core::Result;

use crate::kernels::KernelFile;
use crate::launch::{fits_u32, grid_1d, Arg, Recorder};

pub(crate) fn rope(r: &mut Recorder, op: &Rope) -> Result<()> {
    const OP: &str = "rope";
    let pairs = op.n * op.heads * (op.rot_dim / 2);
    let x = r.buf(OP, "x", op.x)?.ptr;
    let pos = r.buf(OP, "positions", op.positions)?.ptr;
    let inv = r.buf(OP, "inv_freq", op.inv_freq)?.ptr;
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(pos),
        Arg::Ptr(inv),
        Arg::U32(fits_u32(OP, "n", op.n)?),
        Arg::U32(fits_u32(OP, "heads", op.heads)?),
        Arg::U32(fits_u32(OP, "head_dim", op.head_dim)?),
        Arg::U32(op.rot_dim as u32), // <= head_dim (checked by the engine)
        Arg::F32(op.scale),
    ];
    r.launch(KernelFile::Rope, "rope", grid_1d(pairs as u64, 256), 256, 0, &args)
}

pub(crate) fn swiglu(r: &mut Recorder, op: &Swiglu) -> Result<()> {
    const OP: &str = "swiglu";
    let gate = r.buf(OP, "gate", op.gate)?.ptr;
    let up = r.buf(OP, "up", op.up)?.ptr;
    let out = r.buf(OP, "out", op.out)?.ptr;
    let args = [Arg::Ptr(gate), Arg::Ptr(up), Arg::Ptr(out), Arg::U64(op.len as u64)];
    r.launch(KernelFile::Swiglu, "swiglu", grid_1d(op.len as u64, 256), 256, 0, &args)
}

pub(crate) fn geglu(r: &mut Recorder, op: &Geglu) -> Result<()> {
    const OP: &str = "geglu";
    let gate = r.buf(OP, "gate", op.gate)?.ptr;
    let up = r.buf(OP, "up", op.up)?.ptr;
    let out = r.buf(OP, "out", op.out)?.ptr;
    let args = [Arg::Ptr(gate), Arg::Ptr(up), Arg::Ptr(out), Arg::U64(op.len as u64)];
    r.launch(KernelFile::Geglu, "geglu", grid_1d(op.len as u64, 256), 256, 0, &args)
}

pub(crate) fn softcap(r: &mut Recorder, op: &Softcap) -> Result<()> {
    const OP: &str = "softcap";
    let x = r.buf(OP, "x", op.x)?.ptr;
    let args = [Arg::Ptr(x), Arg::U64(op.len as u64), Arg::F32(op.cap)];
    r.launch(KernelFile::Softcap, "softcap", grid_1d(op.len as u64, 256), 256, 0, &args)
}

pub(crate) fn mask_logits(r: &mut Recorder, op: &MaskLogits) -> Result<()> {
    const OP: &str = "mask_logits";
    let x = r.buf(OP, "x", op.x)?.ptr;
    let rows = r.buf(OP, "rows", op.rows)?;
    rows.shadow.check_indices(OP, "rows", op.n, op.x_rows, "x_rows")?;
    let rows = rows.ptr;
    let mask = r.buf(OP, "mask", op.mask)?.ptr;
    if op.n == 0 || op.width == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(rows),
        Arg::Ptr(mask),
        Arg::U32(fits_u32(OP, "n", op.n)?),
        Arg::U32(fits_u32(OP, "width", op.width)?),
        Arg::U32(fits_u32(OP, "words", op.words())?),
    ];
    let grid = (fits_u32(OP, "width / 256", op.width.div_ceil(256))?, fits_u32(OP, "n", op.n)?, 1);
    r.launch(KernelFile::MaskLogits, "mask_logits", grid, 256, 0, &args)
}

pub(crate) fn add(r: &mut Recorder, op: &Add) -> Result<()> {
    const OP: &str = "add";
    let x = r.buf(OP, "x", op.x)?.ptr;
    let y = r.buf(OP, "y", op.y)?.ptr;
    let args = [Arg::Ptr(x), Arg::Ptr(y), Arg::U64(op.len as u64)];
    r.launch(KernelFile::Add, "add", grid_1d(op.len as u64, 256), 256, 0, &args)
}

pub(crate) fn copy_rows(r: &mut Recorder, op: &CopyRows) -> Result<()> {
    const OP: &str = "copy_rows";
    let len = op.n_rows * op.width;
    let src = r.buf(OP, "src", op.src)?.ptr;
    let dst = r.buf(OP, "dst", op.dst)?.ptr;
    // The first rows by pointer offsets (in bounds: the engine checked that the buffers hold the rows).
    let (src, dst) =
        (src + 4 * (op.src_row * op.width) as u64, dst + 4 * (op.dst_row * op.width) as u64);
    let args = [Arg::Ptr(src), Arg::Ptr(dst), Arg::U64(len as u64)];
    r.launch(KernelFile::CopyRows, "copy_rows", grid_1d(len as u64, 256), 256, 0, &args)
}

pub(crate) fn argmax(r: &mut Recorder, op: &Argmax) -> Result<()> {
    const OP: &str = "argmax";
    let x = r.buf(OP, "x", op.x)?.ptr;
    let out = r.buf(OP, "out", op.out)?.ptr;
    r.written_u32.push(op.out);
    let args = [Arg::Ptr(x), Arg::Ptr(out), Arg::U32(fits_u32(OP, "width", op.width)?)];
    // ARGMAX_THREADS threads per row.
    r.launch(KernelFile::Argmax, "argmax", (fits_u32(OP, "n", op.n)?, 1, 1), 1024, 0, &args)
}
