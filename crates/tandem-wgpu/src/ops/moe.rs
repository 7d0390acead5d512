//! The mixture-of-experts ops: routing (one invocation per token), the experts' matmuls (each
//! (token, slot) row through matmul.wgsl's decode arithmetic on its expert's rows of the
//! stacked weight, the kernel chosen as for a decode row of that matrix), the weighted sum.

use tandem_core::ops::{MoeMatmul, MoeRoute, MoeSum};
use tandem_core::{Error, Result};

use super::matmul::{decode_kernel, fold, RWG, TPR};
use super::{
    bad_dtype, dtype_code, fits_u32, groups_1d, quant_offsets, Dispatch, Recorder, WEIGHT_DTYPES,
};
use crate::pipelines::{PipeKey, Shader};

/// Most workgroups in one grid dimension (the rows' z).
const MAX_GROUPS: usize = 65535;

pub(crate) fn route(r: &mut Recorder, op: &MoeRoute) -> Result<()> {
    const OP: &str = "moe_route";
    let logits = r.buf(OP, "logits", op.logits)?;
    let ids = r.buf(OP, "ids", op.ids)?;
    let weights = r.buf(OP, "weights", op.weights)?;
    r.written_u32.push(op.ids);
    if op.n == 0 || op.k == 0 {
        return Ok(());
    }
    fits_u32(OP, "n * experts", op.n * op.experts)?;
    fits_u32(OP, "n * k", op.n * op.k)?;
    r.push(
        PipeKey::new(Shader::MoeRoute, "main"),
        vec![logits, ids, weights],
        vec![op.n as u32, op.experts as u32, op.k as u32, op.norm as u32],
        groups_1d(op.n, 64),
    );
    Ok(())
}

pub(crate) fn matmul(r: &mut Recorder, op: &MoeMatmul) -> Result<()> {
    const OP: &str = "moe_matmul";
    let code = dtype_code(op.wdtype).ok_or_else(|| bad_dtype(OP, "w", WEIGHT_DTYPES, op.wdtype))?;
    let (k, m) = (op.k, op.m);
    let rows = op.n * op.slots;
    let x_rows = if op.x_per_slot { rows } else { op.n };
    let x = r.buf(OP, "x", op.x)?;
    let w = r.table.entry(OP, "w", op.w)?;
    let ids = r.buf(OP, "ids", op.ids)?;
    let out = r.buf(OP, "out", op.out)?;
    let ids_shadow = &r.table.get(op.ids).expect("checked").shadow;
    ids_shadow.check_indices(OP, "ids", rows, op.experts, "experts")?;
    if w.parts.len() > 1 && w.shape.map(|s| s.1) != Some(k) {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!("a split weight of rows of {k} values"),
            got: format!("shape {:?}", w.shape),
        });
    }
    if rows * m == 0 {
        return Ok(());
    }
    fits_u32(OP, "x rows * k", x_rows * k)?;
    fits_u32(OP, "experts * m * k", op.experts * m * k)?;
    fits_u32(OP, "n * slots * m", rows * m)?;
    let pipe = match decode_kernel(r, op.wdtype, k) {
        true => PipeKey::new(Shader::MoeMatmul, "moe_matvec_rows").with("RWG", RWG as u32),
        false => PipeKey::new(Shader::MoeMatmul, "moe_matvec").with("TPR", TPR as u32),
    }
    .with("DTYPE", code);
    let per = if pipe.entry == "moe_matvec_rows" { RWG } else { 256 / TPR };
    for part in &w.parts {
        let (w_rows, numel) = match w.parts.len() {
            1 => (op.experts * m, w.numel),
            _ => (part.rows, part.rows * k),
        };
        let (d_off, m_off) = quant_offsets(op.wdtype, numel);
        // The bias binding is unused: x is read-only too.
        let bufs = vec![
            x.clone(),
            (part.gpu.uid, part.gpu.buffer.clone()),
            x.clone(),
            out.clone(),
            ids.clone(),
        ];
        for row0 in (0..rows).step_by(MAX_GROUPS) {
            let n = MAX_GROUPS.min(rows - row0);
            let params = vec![
                n as u32,
                k as u32,
                m as u32,
                m as u32,
                0,
                0,
                d_off,
                m_off,
                row0 as u32,
                op.slots as u32,
                op.x_per_slot as u32,
                op.experts as u32,
                part.row0 as u32,
                w_rows as u32,
            ];
            let groups = fold(m, per, n);
            r.out.push(Dispatch { pipe: pipe.clone(), bufs: bufs.clone(), params, groups });
        }
    }
    Ok(())
}

pub(crate) fn sum(r: &mut Recorder, op: &MoeSum) -> Result<()> {
    const OP: &str = "moe_sum";
    let y = r.buf(OP, "y", op.y)?;
    let weights = r.buf(OP, "weights", op.weights)?;
    let out = r.buf(OP, "out", op.out)?;
    let total = op.n * op.dim;
    if total == 0 {
        return Ok(());
    }
    fits_u32(OP, "n * slots * dim", op.n * op.slots * op.dim)?;
    r.push(
        PipeKey::new(Shader::MoeSum, "main"),
        vec![y, weights, out],
        vec![total as u32, op.slots as u32, op.dim as u32],
        groups_1d(total, 256),
    );
    Ok(())
}
