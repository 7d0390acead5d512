//! out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight: one workgroup per row.

use tandem_core::ops::RmsNorm;
use tandem_core::{Error, Result};

use super::{fits_u32, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "rms_norm";

pub(crate) fn record(r: &mut Recorder, op: &RmsNorm) -> Result<()> {
    let len = op.n * op.dim;
    let x = r.buf(OP, "x", op.x)?;
    let w = r.buf(OP, "weight", op.weight)?;
    let out = r.buf(OP, "out", op.out)?;
    if len == 0 {
        return Ok(());
    }
    fits_u32(OP, "n * dim", len)?;
    if op.n > 65535 {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: "n <= 65535 rows".into(),
            got: op.n.to_string(),
        });
    }
    r.push(
        PipeKey::new(Shader::RmsNorm, "main"),
        vec![x, w, out],
        vec![op.dim as u32, op.eps.to_bits()],
        [op.n as u32, 1, 1],
    );
    Ok(())
}
