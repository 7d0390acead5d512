//! Token embedding lookup (kernels/embed.cu).

use tandem_core::ops::Embed;
use tandem_core::Result;

use super::{quant_offsets, weight_entries, weight_index, WEIGHT_DTYPES};
use crate::kernels::KernelFile;
use crate::launch::{bad_dtype, fits_u32, grid_1d, Arg, Recorder};

const OP: &str = "embed";

pub(crate) fn record(r: &mut Recorder, op: &Embed) -> Result<()> {
    let wi =
        weight_index(op.dtype).ok_or_else(|| bad_dtype(OP, "table", WEIGHT_DTYPES, op.dtype))?;
    let out_len = op.n * op.dim;
    let table = r.buf(OP, "table", op.table)?;
    let ids = r.buf(OP, "ids", op.ids)?;
    let out = r.buf(OP, "out", op.out)?;
    ids.shadow.check_indices(OP, "ids", op.n, op.vocab, "vocab")?;
    let (d_off, m_off) = quant_offsets(op.dtype, table.numel);
    let args = [
        Arg::Ptr(table.ptr),
        Arg::U64(d_off),
        Arg::U64(m_off),
        Arg::Ptr(ids.ptr),
        Arg::Ptr(out.ptr),
        Arg::U32(fits_u32(OP, "n", op.n)?),
        Arg::U32(fits_u32(OP, "dim", op.dim)?),
        Arg::U32(fits_u32(OP, "vocab", op.vocab)?),
        Arg::F32(op.scale),
    ];
    let entry = weight_entries!("embed")[wi];
    r.launch(KernelFile::Embed, entry, grid_1d(out_len as u64, 256), 256, 0, &args)
}
