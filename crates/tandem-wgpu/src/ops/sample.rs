//! Sampling a token per row on the GPU (shaders/sample.wgsl), so only its id comes back. It
//! reproduces `tandem_core::sampling::sample_row` token for token.

use tandem_core::ops::Sample;
use tandem_core::{DType, Error, Result};

use super::{fits_u32, numel, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "sample";

pub(crate) fn record(r: &mut Recorder, op: &Sample) -> Result<()> {
    op.check_params()?;
    let len = numel(OP, &[op.n, op.width])?;
    let x = r.buf(OP, "x", op.x, DType::F32, len)?;
    let out = r.buf(OP, "out", op.out, DType::U32, op.n)?;
    r.written_u32.push(op.out);
    if op.n == 0 {
        return Ok(());
    }
    fits_u32(OP, "n * width", len)?;
    // The kernel splits a row into 256 contiguous chunks; keep their bounds in range.
    fits_u32(OP, "width + 256", op.width.saturating_add(256))?;
    if op.n > 65535 {
        return Err(Error::ShapeMismatch { op: OP, expected: "n <= 65535 rows".into(), got: op.n.to_string() });
    }
    // top_k >= the number of finite logits keeps all, so a huge one can saturate.
    let top_k = u32::try_from(op.top_k).unwrap_or(u32::MAX);
    let params = vec![
        op.width as u32,
        top_k,
        op.temperature.to_bits(),
        op.top_p.to_bits(),
        op.min_p.to_bits(),
        op.uniform.to_bits(),
    ];
    r.push(PipeKey::new(Shader::Sample, "main"), vec![x, out], params, [op.n as u32, 1, 1]);
    Ok(())
}
