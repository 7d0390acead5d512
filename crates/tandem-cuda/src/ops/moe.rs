//! The mixture-of-experts ops: routing (kernels/moe_route.cu), the experts' matmuls (the
//! decode kernels of kernels/matmul_decode.cu, each row reading its expert's slice of the
//! stacked weight; see `matmul::record_moe`) and the weighted sum (kernels/moe_sum.cu).

use tandem_core::ops::{MoeRoute, MoeSum};
use tandem_core::Result;

use crate::kernels::KernelFile;
use crate::launch::{fits_u32, grid_1d, Arg, Recorder};

/// Most experts the routing kernel takes (MOE_MAX_EXPERTS: a warp of lanes holding 32 each).
pub(crate) const MAX_EXPERTS: usize = 1024;

pub(crate) fn route(r: &mut Recorder, op: &MoeRoute) -> Result<()> {
    const OP: &str = "moe_route";
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
