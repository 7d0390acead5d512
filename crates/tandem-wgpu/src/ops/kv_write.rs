//! Scatters the step's keys and values into their paged cache rows (both caches, one dispatch).

use tandem_core::ops::KvWrite;
use tandem_core::{DType, Result};

use super::{bad_dtype, fits_u32, groups_1d, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "kv_write";

pub(crate) fn record(r: &mut Recorder, op: &KvWrite) -> Result<()> {
    let f16 = match op.kv_dtype {
        DType::F32 => false,
        DType::F16 => true,
        d => return Err(bad_dtype(OP, "cache", "f32/f16", d)),
    };
    let row = op.kv_heads * op.head_dim;
    let len = op.n * row;
    let k = r.buf(OP, "k", op.k)?;
    let v = r.buf(OP, "v", op.v)?;
    let ck = r.buf(OP, "cache_k", op.cache_k)?;
    let cv = r.buf(OP, "cache_v", op.cache_v)?;
    let slots = r.buf(OP, "slots", op.slots)?;
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
