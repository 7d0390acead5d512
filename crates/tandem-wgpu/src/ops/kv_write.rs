//! Scatters the step's keys and values into their paged cache rows (both caches, one dispatch).

use tandem_core::ops::KvWrite;
use tandem_core::{DType, Error, Result};

use super::{bad_dtype, fits_u32, groups_1d, numel, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "kv_write";

pub(crate) fn record(r: &mut Recorder, op: &KvWrite) -> Result<()> {
    let f16 = match op.kv_dtype {
        DType::F32 => false,
        DType::F16 => true,
        d => return Err(bad_dtype(OP, "cache", "f32/f16", d)),
    };
    let row = numel(OP, &[op.kv_heads, op.head_dim])?;
    let len = numel(OP, &[op.n, row])?;
    if f16 && row % 2 != 0 {
        // Two f16 share a word; an odd row would need two invocations writing one word.
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: "an even kv_heads * head_dim for an f16 cache".into(),
            got: row.to_string(),
        });
    }
    let k = r.buf(OP, "k", op.k, DType::F32, len)?;
    let v = r.buf(OP, "v", op.v, DType::F32, len)?;
    let ck = r.buf(OP, "cache_k", op.cache_k, op.kv_dtype, 0)?;
    let cv = r.buf(OP, "cache_v", op.cache_v, op.kv_dtype, 0)?;
    let slots = r.buf(OP, "slots", op.slots, DType::U32, op.n)?;
    if ck.0 == cv.0 {
        return Err(Error::InvalidParameter(format!(
            "{OP}: cache_k and cache_v are the same buffer"
        )));
    }
    let rows = {
        let (a, b) =
            (r.table.get(op.cache_k).expect("checked"), r.table.get(op.cache_v).expect("checked"));
        a.numel.min(b.numel).checked_div(row).unwrap_or(0)
    };
    r.table.get(op.slots).expect("checked").shadow.check_indices(
        OP,
        "slots",
        op.n,
        rows,
        "cache rows",
    )?;
    if len == 0 {
        return Ok(());
    }
    fits_u32(OP, "cache elements", rows * row)?;
    let per = if f16 { 2 } else { 1 };
    let total = len / per;
    let pipe = PipeKey::new(Shader::KvWrite, if f16 { "main_f16" } else { "main_f32" });
    r.push(pipe, vec![k, v, ck, cv, slots], vec![total as u32, row as u32], groups_1d(total, 256));
    Ok(())
}
