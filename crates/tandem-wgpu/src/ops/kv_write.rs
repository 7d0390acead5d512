//! Scatters the step's keys and values into their paged cache rows (both caches, one dispatch).

use tandem_core::dtype::QBLOCK;
use tandem_core::ops::KvWrite;
use tandem_core::{DType, Result};

use super::{bad_dtype, fits_u32, groups_1d, quant_offsets, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "kv_write";

pub(crate) fn record(r: &mut Recorder, op: &KvWrite) -> Result<()> {
    // The entry point and the elements each invocation writes.
    let (entry, per) = match op.kv_dtype {
        DType::F32 => ("main_f32", 1),
        DType::F16 => ("main_f16", 2),
        DType::Q8_0 => ("main_q8_0", QBLOCK),
        DType::Q4_0 => ("main_q4_0", QBLOCK),
        d => return Err(bad_dtype(OP, "cache", "f32/f16/q8_0/q4_0", d)),
    };
    let row = op.kv_heads * op.head_dim;
    let len = op.n * row;
    let k = r.buf(OP, "k", op.k)?;
    let v = r.buf(OP, "v", op.v)?;
    let ck = r.buf(OP, "cache_k", op.cache_k)?;
    let cv = r.buf(OP, "cache_v", op.cache_v)?;
    let slots = r.buf(OP, "slots", op.slots)?;
    let (a, b) =
        (r.table.get(op.cache_k).expect("checked"), r.table.get(op.cache_v).expect("checked"));
    let rows = a.numel.min(b.numel).checked_div(row).unwrap_or(0);
    // Where each cache's scales start (a quantized cache's layout follows from its own size).
    let scales = [a, b].map(|c| quant_offsets(op.kv_dtype, c.numel).0);
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
    let total = len / per;
    let params = vec![total as u32, row as u32, scales[0], scales[1]];
    let pipe = PipeKey::new(Shader::KvWrite, entry);
    r.push(pipe, vec![k, v, ck, cv, slots], params, groups_1d(total, 256));
    Ok(())
}
