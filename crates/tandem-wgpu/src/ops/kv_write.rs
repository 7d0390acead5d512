//! Scatters the step's keys and values into their paged cache rows (both caches, one dispatch).

use tandem_core::dtype::QBLOCK;
use tandem_core::ops::KvWrite;
use tandem_core::quant::kv::cache_rows;
use tandem_core::{DType, Result};

use super::{bad_dtype, fits_u32, groups_1d, kv_scales, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "kv_write";

pub(crate) fn record(r: &mut Recorder, op: &KvWrite) -> Result<()> {
    // The entry point and the elements each invocation writes.
    let entry = |d| match d {
        DType::F32 => Ok(("main_f32", 1)),
        DType::F16 => Ok(("main_f16", 2)),
        DType::Q8_0 => Ok(("main_q8_0", QBLOCK)),
        DType::Q4_0 => Ok(("main_q4_0", QBLOCK)),
        DType::F8E4M3 => Ok(("main_fp8", op.head_dim)),
        d => Err(bad_dtype(OP, "cache", "f32/f16/q8_0/q4_0/fp8", d)),
    };
    let ds = op.kv_dtypes;
    // One dispatch for both caches (SIDES 3 in kv_write.wgsl), or one per cache and dtype.
    let dispatches = if ds.k == ds.v {
        vec![(entry(ds.k)?, 3)]
    } else {
        vec![(entry(ds.k)?, 1), (entry(ds.v)?, 2)]
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
    let (kvh, hd) = (op.kv_heads, op.head_dim);
    let rows = cache_rows(ds.k, a.numel, kvh, hd).min(cache_rows(ds.v, b.numel, kvh, hd));
    // Where each cache's scales start (a quantized cache's layout follows from its own size).
    let scales = [kv_scales(ds.k, a.numel, kvh, hd), kv_scales(ds.v, b.numel, kvh, hd)];
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
    for ((entry, per), sides) in dispatches {
        let total = len / per;
        let params = vec![total as u32, row as u32, scales[0], scales[1], hd as u32];
        let pipe = PipeKey::new(Shader::KvWrite, entry).with("SIDES", sides);
        let bufs = vec![k.clone(), v.clone(), ck.clone(), cv.clone(), slots.clone()];
        r.push(pipe, bufs, params, groups_1d(total, 256));
    }
    Ok(())
}
