//! Sampling a token per row on the GPU (kernels/sample.cu), so only its id comes back. Each
//! row's parameters, its uniform draw included, come in a buffer the step uploads, so a
//! captured decode graph replays with fresh draws.

use tandem_core::ops::{Sample, SampleRow};
use tandem_core::Result;

use crate::kernels::KernelFile;
use crate::launch::{fits_u32, Arg, Recorder};

const OP: &str = "sample";
const THREADS: u32 = 256; // SAMPLE_THREADS

pub(crate) fn record(r: &mut Recorder, op: &Sample) -> Result<()> {
    let words = op.n * SampleRow::WORDS;
    let x = r.buf(OP, "x", op.x)?.ptr;
    let params = r.buf(OP, "params", op.params)?;
    if let Some(v) = params.shadow.values(words) {
        for w in v.chunks_exact(SampleRow::WORDS) {
            bytemuck::pod_read_unaligned::<SampleRow>(bytemuck::cast_slice(w)).check()?;
        }
    }
    let params = params.ptr;
    let out = r.buf(OP, "out", op.out)?.ptr;
    r.written_u32.push(op.out);
    // The kernel splits a row into SAMPLE_THREADS contiguous chunks; keep their bounds in range.
    fits_u32(OP, "width + 256", op.width.saturating_add(THREADS as usize))?;
    let args = [Arg::Ptr(x), Arg::Ptr(params), Arg::Ptr(out), Arg::U32(op.width as u32)];
    r.launch(KernelFile::Sample, "sample", (fits_u32(OP, "n", op.n)?, 1, 1), THREADS, 0, &args)
}
