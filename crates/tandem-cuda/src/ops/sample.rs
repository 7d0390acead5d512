//! Sampling a token per row on the GPU (kernels/sample.cu), so only its id comes back. The
//! uniform draw changes every token, so the kernel reads it from a dyn slot.

use tandem_core::ops::Sample;
use tandem_core::{DType, Result};

use crate::kernels::KernelFile;
use crate::launch::{fits_u32, numel, Arg, Recorder};

const OP: &str = "sample";
const THREADS: u32 = 256; // SAMPLE_THREADS

pub(crate) fn record(r: &mut Recorder, op: &Sample) -> Result<()> {
    op.check_params()?;
    let len = numel(OP, &[op.n, op.width])?;
    let x = r.buf(OP, "x", op.x, DType::F32, len)?.ptr;
    let out = r.buf(OP, "out", op.out, DType::U32, op.n)?.ptr;
    r.written_u32.push(op.out);
    // The kernel splits a row into SAMPLE_THREADS contiguous chunks; keep their bounds in range.
    fits_u32(OP, "width + 256", op.width.saturating_add(THREADS as usize))?;
    // top_k >= the number of finite logits keeps all, so a huge one can saturate.
    let top_k = u32::try_from(op.top_k).unwrap_or(u32::MAX);
    let uniform = r.dyn_slot(op.uniform.to_bits());
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(out),
        Arg::Ptr(uniform),
        Arg::U32(op.width as u32),
        Arg::U32(top_k),
        Arg::F32(op.temperature),
        Arg::F32(op.top_p),
        Arg::F32(op.min_p),
    ];
    r.launch(KernelFile::Sample, "sample", (fits_u32(OP, "n", op.n)?, 1, 1), THREADS, 0, &args)
}
