//! LoRA's shrink and expand (kernels/lora.cu): one launch each, a block per (rank entry, row)
//! for the shrink and per (256 outputs, row) for the expand.

use tandem_core::ops::{LoraExpand, LoraShrink};
use tandem_core::{BufId, DType, Error, Result};

use crate::kernels::KernelFile;
use crate::launch::{fits_u32, Arg, Recorder};

/// The shrink's block (the kernel's LORA_THREADS) and the expand's.
const SHRINK_THREADS: u32 = 128;
const EXPAND_THREADS: u32 = 256;

pub(crate) fn shrink(r: &mut Recorder, op: &LoraShrink) -> Result<()> {
    const OP: &str = "lora_shrink";
    let half = pool_flag(OP, op.dtype)?;
    let x = r.buf(OP, "x", op.x)?.ptr;
    let a = r.buf(OP, "a", op.a)?.ptr;
    let (rows, slots) = indices(r, OP, op.rows, op.slots, op.n, op.x_rows, op.n_slots)?;
    let t = r.buf(OP, "t", op.t)?.ptr;
    if op.n * op.rank == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(a),
        Arg::Ptr(rows),
        Arg::Ptr(slots),
        Arg::Ptr(t),
        Arg::U32(fits_u32(OP, "n", op.n)?),
        Arg::U32(fits_u32(OP, "k", op.k)?),
        Arg::U32(fits_u32(OP, "rank", op.rank)?),
        Arg::U32(half),
    ];
    let grid = (fits_u32(OP, "rank", op.rank)?, grid_y(OP, op.n)?, 1);
    r.launch(KernelFile::Lora, "lora_shrink", grid, SHRINK_THREADS, 0, &args)
}

pub(crate) fn expand(r: &mut Recorder, op: &LoraExpand) -> Result<()> {
    const OP: &str = "lora_expand";
    let half = pool_flag(OP, op.dtype)?;
    let t = r.buf(OP, "t", op.t)?.ptr;
    let b = r.buf(OP, "b", op.b)?.ptr;
    let (rows, slots) = indices(r, OP, op.rows, op.slots, op.n, op.out_rows, op.n_slots)?;
    let out = r.buf(OP, "out", op.out)?.ptr;
    if op.n * op.m == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(t),
        Arg::Ptr(b),
        Arg::Ptr(rows),
        Arg::Ptr(slots),
        Arg::Ptr(out),
        Arg::U32(fits_u32(OP, "n", op.n)?),
        Arg::U32(fits_u32(OP, "m", op.m)?),
        Arg::U32(fits_u32(OP, "rank", op.rank)?),
        Arg::U32(half),
    ];
    let blocks = fits_u32(OP, "m / 256", op.m.div_ceil(EXPAND_THREADS as usize))?;
    let grid = (blocks, grid_y(OP, op.n)?, 1);
    r.launch(KernelFile::Lora, "lora_expand", grid, EXPAND_THREADS, 0, &args)
}

fn pool_flag(op: &'static str, d: DType) -> Result<u32> {
    match d {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        d => Err(Error::ShapeMismatch {
            op,
            expected: "an adapter pool of f32 or f16".into(),
            got: d.to_string(),
        }),
    }
}

/// The rows' and slots' device pointers, their values checked on the host copies.
fn indices(
    r: &Recorder,
    op: &'static str,
    rows: BufId,
    slots: BufId,
    n: usize,
    row_limit: usize,
    n_slots: usize,
) -> Result<(u64, u64)> {
    let rows = r.buf(op, "rows", rows)?;
    rows.shadow.check_indices(op, "rows", n, row_limit, "the rows of x and out")?;
    let slots = r.buf(op, "slots", slots)?;
    slots.shadow.check_indices(op, "slots", n, n_slots, "n_slots")?;
    Ok((rows.ptr, slots.ptr))
}

/// The grid's y extent (CUDA's limit is 65535).
fn grid_y(op: &'static str, n: usize) -> Result<u32> {
    if n > 65535 {
        return Err(Error::ShapeMismatch {
            op,
            expected: "at most 65535 rows with an adapter in one op".into(),
            got: n.to_string(),
        });
    }
    Ok(n as u32)
}
