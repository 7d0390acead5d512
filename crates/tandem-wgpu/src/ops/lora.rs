//! LoRA's shrink and expand (shaders/lora.wgsl): one dispatch each, one workgroup per (rank
//! entry, row) for the shrink and per (64 outputs, row) for the expand.

use tandem_core::ops::{LoraExpand, LoraShrink};
use tandem_core::{BufId, DType, Error, Result};

use super::{bad_dtype, fits_u32, Recorder};
use crate::pipelines::{PipeKey, Shader};

/// Outputs of one expand workgroup (the shader's WG).
const WG: usize = 64;

pub(crate) fn shrink(r: &mut Recorder, op: &LoraShrink) -> Result<()> {
    const OP: &str = "lora_shrink";
    let f16 = pool_code(OP, "a", op.dtype)?;
    check_rows(r, OP, op.rows, op.slots, op.n, op.x_rows, op.n_slots)?;
    let bufs = vec![
        r.buf(OP, "x", op.x)?,
        r.buf(OP, "a", op.a)?,
        r.buf(OP, "rows", op.rows)?,
        r.buf(OP, "slots", op.slots)?,
        r.buf(OP, "t", op.t)?,
    ];
    if op.n * op.rank == 0 {
        return Ok(());
    }
    fits_u32(OP, "x_rows * k", op.x_rows * op.k)?;
    fits_u32(OP, "n_slots * rank * k", op.n_slots * op.rank * op.k)?;
    grid_limit(OP, op.rank, op.n)?;
    r.push(
        PipeKey::new(Shader::Lora, "shrink").with("F16", f16),
        bufs,
        vec![op.n as u32, op.k as u32, op.rank as u32, 0],
        [op.rank as u32, op.n as u32, 1],
    );
    Ok(())
}

pub(crate) fn expand(r: &mut Recorder, op: &LoraExpand) -> Result<()> {
    const OP: &str = "lora_expand";
    let f16 = pool_code(OP, "b", op.dtype)?;
    check_rows(r, OP, op.rows, op.slots, op.n, op.out_rows, op.n_slots)?;
    let bufs = vec![
        r.buf(OP, "t", op.t)?,
        r.buf(OP, "b", op.b)?,
        r.buf(OP, "rows", op.rows)?,
        r.buf(OP, "slots", op.slots)?,
        r.buf(OP, "out", op.out)?,
    ];
    if op.n * op.m == 0 {
        return Ok(());
    }
    fits_u32(OP, "out_rows * m", op.out_rows * op.m)?;
    fits_u32(OP, "n_slots * rank * m", op.n_slots * op.rank * op.m)?;
    grid_limit(OP, op.m.div_ceil(WG), op.n)?;
    r.push(
        PipeKey::new(Shader::Lora, "expand").with("F16", f16),
        bufs,
        vec![op.n as u32, 0, op.rank as u32, op.m as u32],
        [op.m.div_ceil(WG) as u32, op.n as u32, 1],
    );
    Ok(())
}

fn pool_code(op: &'static str, role: &str, d: DType) -> Result<u32> {
    match d {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        d => Err(bad_dtype(op, role, "f32/f16", d)),
    }
}

/// The rows and slots the step wrote, checked on their host copies.
fn check_rows(
    r: &Recorder,
    op: &'static str,
    rows: BufId,
    slots: BufId,
    n: usize,
    row_limit: usize,
    n_slots: usize,
) -> Result<()> {
    let shadow = |id: BufId| &r.table.get(id).expect("checked").shadow;
    shadow(rows).check_indices(op, "rows", n, row_limit, "the rows of x and out")?;
    shadow(slots).check_indices(op, "slots", n, n_slots, "n_slots")
}

fn grid_limit(op: &'static str, x: usize, y: usize) -> Result<()> {
    if x > 65535 || y > 65535 {
        return Err(Error::ShapeMismatch {
            op,
            expected: "at most 65535 workgroups in x and in y".into(),
            got: format!("({x}, {y})"),
        });
    }
    Ok(())
}
