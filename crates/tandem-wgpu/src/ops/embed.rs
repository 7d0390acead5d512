//! Token embedding lookup: one dispatch per part of the table (a large table is split by rows;
//! each part writes the output rows of the ids it holds).

use tandem_core::ops::Embed;
use tandem_core::{Error, Result};

use super::{bad_dtype, dtype_code, fits_u32, groups_1d, quant_offsets, Recorder, WEIGHT_DTYPES};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "embed";

pub(crate) fn record(r: &mut Recorder, op: &Embed) -> Result<()> {
    let code =
        dtype_code(op.dtype).ok_or_else(|| bad_dtype(OP, "table", WEIGHT_DTYPES, op.dtype))?;
    let out_len = op.n * op.dim;
    let table = r.table.entry(OP, "table", op.table)?;
    let ids = r.buf(OP, "ids", op.ids)?;
    let out = r.buf(OP, "out", op.out)?;
    r.table
        .get(op.ids)
        .expect("checked")
        .shadow
        .check_indices(OP, "ids", op.n, op.vocab, "vocab")?;
    if table.parts.len() > 1 && table.shape.map(|s| s.1) != Some(op.dim) {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!("a split table of rows of {} values", op.dim),
            got: format!("shape {:?}", table.shape),
        });
    }
    if out_len == 0 {
        return Ok(());
    }
    fits_u32(OP, "n * dim", out_len)?;
    let pipe = PipeKey::new(Shader::Embed, "main").with("DTYPE", code);
    for part in &table.parts {
        // An unsplit table counts its rows in units of dim regardless of how it was allocated.
        let rows = if table.parts.len() == 1 { op.vocab } else { part.rows };
        let (d_off, m_off) = quant_offsets(
            op.dtype,
            if table.parts.len() == 1 { table.numel } else { rows * op.dim },
        );
        let params = vec![
            op.n as u32,
            op.dim as u32,
            part.row0 as u32,
            rows as u32,
            d_off,
            m_off,
            op.scale.to_bits(),
        ];
        let bufs = vec![(part.gpu.uid, part.gpu.buffer.clone()), ids.clone(), out.clone()];
        r.out.push(super::Dispatch {
            pipe: pipe.clone(),
            bufs,
            params,
            groups: groups_1d(out_len, 256),
        });
    }
    Ok(())
}
