//! The mixture-of-experts ops: routing (kernels/moe_route.cu), the experts' matmuls (the
//! decode kernels of kernels/matmul_decode.cu, each row reading its expert's slice of the
//! stacked weight; see `matmul::record_moe`) and the weighted sum (kernels/moe_sum.cu).

use tandem_core::ops::{MoeMatmul, MoeRoute, MoeSum};
use tandem_core::Result;

use super::{matmul, quant_offsets, weight_entries, weight_index, WEIGHT_DTYPES};
use crate::kernels::KernelFile;
use crate::launch::{bad_dtype, fits_u32, grid_1d, Arg, Recorder};

/// Most experts the routing kernel takes (MOE_MAX_EXPERTS: a warp of lanes holding 32 each).
pub(crate) const MAX_EXPERTS: usize = 1024;

pub(crate) fn route(r: &mut Recorder, op: &MoeRoute) -> Result<()> {
    const OP: &str = "moe_route";
    if op.experts > MAX_EXPERTS {
        // `supports` refuses it first; the kernel keeps a lane's chosen experts in one word.
        return Err(tandem_core::Error::ShapeMismatch {
            op: OP,
            expected: format!("experts <= {MAX_EXPERTS}"),
            got: op.experts.to_string(),
        });
    }
    let logits = r.buf(OP, "logits", op.logits)?.ptr;
    let ids = r.buf(OP, "ids", op.ids)?.ptr;
    let weights = r.buf(OP, "weights", op.weights)?.ptr;
    r.written_u32.push(op.ids);
    let args = [
        Arg::Ptr(logits),
        Arg::Ptr(ids),
        Arg::Ptr(weights),
        Arg::U32(fits_u32(OP, "experts", op.experts)?),
        Arg::U32(fits_u32(OP, "k", op.k)?),
        Arg::U32(op.norm as u32),
    ];
    // A warp per token.
    let grid = (fits_u32(OP, "n", op.n)?, 1, 1);
    r.launch(KernelFile::MoeRoute, "moe_route", grid, 32, 0, &args)
}

pub(crate) fn sum(r: &mut Recorder, op: &MoeSum) -> Result<()> {
    const OP: &str = "moe_sum";
    let y = r.buf(OP, "y", op.y)?.ptr;
    let weights = r.buf(OP, "weights", op.weights)?.ptr;
    let out = r.buf(OP, "out", op.out)?.ptr;
    let args = [
        Arg::Ptr(y),
        Arg::Ptr(weights),
        Arg::Ptr(out),
        Arg::U32(fits_u32(OP, "n", op.n)?),
        Arg::U32(fits_u32(OP, "slots", op.slots)?),
        Arg::U32(fits_u32(OP, "dim", op.dim)?),
    ];
    let total = (op.n * op.dim) as u64;
    r.launch(KernelFile::MoeSum, "moe_sum", grid_1d(total, 256), 256, 0, &args)
}

/// Every row (token, slot) of the op in one launch, blockIdx.y striding over the rows, each
/// row computed by the kernel function and with the arithmetic of a one-row decode product
/// of its expert (see [`matmul::moe_path`]), reading the expert's rows of the stacked weight.
/// Each row reads its expert's weights itself (from L2 when rows share an expert).
pub(crate) fn matmul(r: &mut Recorder, op: &MoeMatmul) -> Result<()> {
    const OP: &str = "moe_matmul";
    let wi = weight_index(op.wdtype).ok_or_else(|| bad_dtype(OP, "w", WEIGHT_DTYPES, op.wdtype))?;
    let rows = op.n * op.slots;
    let x = r.buf(OP, "x", op.x)?.ptr;
    let w = r.buf(OP, "w", op.w)?;
    let ids = r.buf(OP, "ids", op.ids)?;
    let out = r.buf(OP, "out", op.out)?.ptr;
    ids.shadow.check_indices(OP, "ids", rows, op.experts, "experts")?;
    let (d_off, m_off) = quant_offsets(op.wdtype, w.numel);
    let (w, ids) = (w.ptr, ids.ptr);
    if rows == 0 || op.m == 0 {
        return Ok(());
    }
    let p = matmul::moe_path(r, op.k, op.m, op.wdtype, rows);
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(w),
        Arg::U64(d_off),
        Arg::U64(m_off),
        Arg::Ptr(ids),
        Arg::Ptr(out),
        Arg::U32(fits_u32(OP, "n * slots", rows)?),
        Arg::U32(fits_u32(OP, "slots", op.slots)?),
        Arg::U32(op.x_per_slot as u32),
        Arg::U32(fits_u32(OP, "k", op.k)?),
        Arg::U32(fits_u32(OP, "m", op.m)?),
        Arg::U32(fits_u32(OP, "experts", op.experts)?),
        Arg::U32(p.path),
    ];
    // Rows past the grid's height are strided over it.
    let grid = (fits_u32(OP, "m", p.grid_x)?, rows.min(65535) as u32, 1);
    let entry = weight_entries!("matmul_decode_moe")[wi];
    r.launch(KernelFile::MatmulDecode, entry, grid, p.threads, 0, &args)
}
