//! Sampling a token per row on the GPU (shaders/sample.wgsl), each row with its own parameters,
//! so only its id comes back. It reproduces `tandem_core::sampling::sample_with` token for token.

use tandem_core::ops::{Sample, SampleRow};
use tandem_core::{Error, Result};

use super::{fits_u32, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "sample";

pub(crate) fn record(r: &mut Recorder, op: &Sample) -> Result<()> {
    let len = op.n * op.width;
    let words = op.n * SampleRow::WORDS;
    let x = r.buf(OP, "x", op.x)?;
    let params = r.buf(OP, "params", op.params)?;
    let out = r.buf(OP, "out", op.out)?;
    // The rows' parameters, checked on the host copy of their upload (parameters a kernel
    // wrote have none; the kernel's loops are bounded whatever they hold).
    if let Some(v) = r.table.get(op.params).expect("checked").shadow.values(words) {
        for w in v.chunks_exact(SampleRow::WORDS) {
            bytemuck::pod_read_unaligned::<SampleRow>(bytemuck::cast_slice(w)).check()?;
        }
    }
    r.written_u32.push(op.out);
    if op.n == 0 {
        return Ok(());
    }
    fits_u32(OP, "n * width", len)?;
    fits_u32(OP, "n * 5 parameter words", words)?;
    // The kernel splits a row into 256 contiguous chunks; keep their bounds in range.
    fits_u32(OP, "width + 256", op.width.saturating_add(256))?;
    if op.n > 65535 {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: "n <= 65535 rows".into(),
            got: op.n.to_string(),
        });
    }
    r.push(
        PipeKey::new(Shader::Sample, "main"),
        vec![x, params, out],
        vec![op.width as u32],
        [op.n as u32, 1, 1],
    );
    Ok(())
}
