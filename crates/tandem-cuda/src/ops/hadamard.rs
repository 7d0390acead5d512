//! The Walsh-Hadamard rotation of every run of `size` values, in place (kernels/hadamard.cu):
//! the rotation a quantized KV cache stores K and V under, one launch per op.

use tandem_core::ops::Hadamard;
use tandem_core::{Error, Result};

use crate::kernels::KernelFile;
use crate::launch::{fits_u32, grid_1d, Arg, Recorder};

const OP: &str = "hadamard";
/// Threads per block (HADAMARD_THREADS).
const THREADS: u32 = 256;
/// Largest run the kernel rotates: a block holds whole runs in shared memory, within the 48 KiB
/// a launch gets without opting in. A head's rotation (at most head_dim) is far below it.
pub(crate) const MAX_SIZE: usize = 8192;

pub(crate) fn record(r: &mut Recorder, op: &Hadamard) -> Result<()> {
    if op.size > MAX_SIZE {
        // `supports` refuses it first.
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!("size <= {MAX_SIZE}"),
            got: op.size.to_string(),
        });
    }
    let x = r.buf(OP, "x", op.x)?.ptr;
    // Whole runs per block, and at least a pair per thread per stage for short runs.
    let chunk = op.size.max(2 * THREADS as usize) as u32;
    let args = [
        Arg::Ptr(x),
        Arg::U64(op.len as u64),
        Arg::U32(fits_u32(OP, "size", op.size)?),
        Arg::U32(chunk),
    ];
    r.launch(
        KernelFile::Hadamard,
        "hadamard",
        grid_1d(op.len as u64, chunk),
        THREADS,
        4 * chunk,
        &args,
    )
}
