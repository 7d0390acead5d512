//! Writes the step's new keys and values into their paged cache rows (kernels/kv_write.cu):
//! an element per thread for the float caches, a warp per block of 32 for q8_0 and q4_0
//! (codes and f16 scales in the split layout of `DType::quant_layout`), a warp per head vector
//! for fp8 (codes, then an f32 scale per head: `tandem_core::quant::kv`).

use tandem_core::ops::KvWrite;
use tandem_core::quant::kv::cache_rows;
use tandem_core::{DType, Result};

use crate::kernels::KernelFile;
use crate::launch::{bad_dtype, fits_u32, grid_1d, Arg, Recorder};
use crate::ops::kv_scales;

const OP: &str = "kv_write";

pub(crate) fn record(r: &mut Recorder, op: &KvWrite) -> Result<()> {
    let entry = |d| match d {
        DType::F32 => Ok("kv_write_f32"),
        DType::F16 => Ok("kv_write_f16"),
        DType::Q8_0 => Ok("kv_write_q8_0"),
        DType::Q4_0 => Ok("kv_write_q4_0"),
        DType::F8E4M3 => Ok("kv_write_fp8"),
        d => Err(bad_dtype(OP, "cache", "f32/f16/q8_0/q4_0/fp8", d)),
    };
    let ds = op.kv_dtypes;
    // One launch for both caches (sides 3 in kv_write.cu), or one per cache and dtype.
    let launches = if ds.k == ds.v {
        vec![(entry(ds.k)?, 3)]
    } else {
        vec![(entry(ds.k)?, 1), (entry(ds.v)?, 2)]
    };
    let (kvh, hd) = (op.kv_heads, op.head_dim);
    let row = kvh * hd;
    let len = op.n * row;
    let k = r.buf(OP, "k", op.k)?.ptr;
    let v = r.buf(OP, "v", op.v)?.ptr;
    let ck = r.buf(OP, "cache_k", op.cache_k)?;
    let cv = r.buf(OP, "cache_v", op.cache_v)?;
    let slots = r.buf(OP, "slots", op.slots)?;
    // An fp8 buffer's elements are its bytes, scales included: its rows are fewer than
    // numel / row.
    let rows = cache_rows(ds.k, ck.numel, kvh, hd).min(cache_rows(ds.v, cv.numel, kvh, hd));
    slots.shadow.check_indices(OP, "slots", op.n, rows, "cache rows")?;
    let doffs = [kv_scales(ds.k, ck.numel, kvh, hd), kv_scales(ds.v, cv.numel, kvh, hd)];
    let (ck, cv, slots) = (ck.ptr, cv.ptr, slots.ptr);
    let args = |sides: u32| {
        [
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(ck),
            Arg::Ptr(cv),
            Arg::Ptr(slots),
            Arg::U32(op.n as u32),
            Arg::U32(row as u32),
            Arg::U32(hd as u32),
            Arg::U32(u32::try_from(rows).unwrap_or(u32::MAX)),
            Arg::U64(doffs[0]),
            Arg::U64(doffs[1]),
            Arg::U32(sides),
        ]
    };
    fits_u32(OP, "n", op.n)?;
    fits_u32(OP, "kv_heads * head_dim", row)?;
    for (entry, sides) in launches {
        // A thread per element, so a warp per block of 32 for q8_0 and q4_0; a warp per head
        // for fp8, however short the heads.
        let threads = if entry == "kv_write_fp8" { op.n * kvh * 32 } else { len };
        r.launch(KernelFile::KvWrite, entry, grid_1d(threads as u64, 256), 256, 0, &args(sides))?;
    }
    Ok(())
}
