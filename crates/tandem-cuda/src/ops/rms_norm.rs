//! out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight (kernels/rms_norm.cu): a block per row.

use tandem_core::ops::RmsNorm;
use tandem_core::Result;

use crate::kernels::KernelFile;
use crate::launch::{fits_u32, Arg, Recorder};

const OP: &str = "rms_norm";
const THREADS: u32 = 256; // RMS_THREADS

pub(crate) fn record(r: &mut Recorder, op: &RmsNorm) -> Result<()> {
    let x = r.buf(OP, "x", op.x)?.ptr;
    let w = r.buf(OP, "weight", op.weight)?.ptr;
    let out = r.buf(OP, "out", op.out)?.ptr;
    if op.dim == 0 {
        return Ok(());
    }
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(w),
        Arg::Ptr(out),
        Arg::U32(fits_u32(OP, "dim", op.dim)?),
        Arg::F32(op.eps),
    ];
    r.launch(KernelFile::RmsNorm, "rms_norm", (fits_u32(OP, "n", op.n)?, 1, 1), THREADS, 0, &args)
}
