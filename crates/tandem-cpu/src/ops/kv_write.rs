//! Writes the step's new keys and values into their paged cache rows.

use half::f16;
use half::slice::HalfFloatSliceExt;
use tandem_core::ops::{check_indices, KvWrite};
use tandem_core::quant::kv;
use tandem_core::{DType, Result};

use crate::table::{Buffer, Table};
use crate::Exec;

const OP: &str = "kv_write";

pub(crate) fn run(t: &mut Table, ex: Exec, op: &KvWrite) -> Result<()> {
    let row = op.kv_heads * op.head_dim;
    let len = op.n * row;
    // Both caches go out of the table at once; put them back whatever happens.
    let mut ck = t.take_out(OP, "cache_k", op.cache_k)?;
    let r = match t.take_out(OP, "cache_v", op.cache_v) {
        Ok(mut cv) => {
            let r = write_both(t, ex, op, row, len, &mut ck, &mut cv);
            t.put(op.cache_v, cv);
            r
        }
        Err(e) => Err(e),
    };
    t.put(op.cache_k, ck);
    r
}

fn write_both(
    t: &Table,
    _ex: Exec,
    op: &KvWrite,
    row: usize,
    len: usize,
    ck: &mut Buffer,
    cv: &mut Buffer,
) -> Result<()> {
    let k = &t.arg(OP, "k", op.k)?.f32()[..len];
    let v = &t.arg(OP, "v", op.v)?.f32()[..len];
    let slots = &t.arg(OP, "slots", op.slots)?.u32()[..op.n];
    let (kvh, hd) = (op.kv_heads, op.head_dim);
    let rows = kv::cache_rows(op.kv_dtypes.k, ck.numel, kvh, hd).min(kv::cache_rows(
        op.kv_dtypes.v,
        cv.numel,
        kvh,
        hd,
    ));
    check_indices(OP, "slots", slots, rows, "cache rows")?;
    // Scattering n rows is memory traffic only; both modes share the one loop.
    for (cache, src, dtype) in [(ck, k, op.kv_dtypes.k), (cv, v, op.kv_dtypes.v)] {
        match dtype {
            DType::F32 => reference_f32(cache.f32_mut(), src, slots, row),
            DType::F16 => reference_f16(cache.f16_mut(), src, slots, row),
            q => {
                let numel = cache.numel;
                kv::write_rows(cache.bytes_mut(), q, numel, src, slots, kvh, hd);
            }
        }
    }
    Ok(())
}

/// cache: [rows, kv_heads * head_dim]; src: [n, kv_heads * head_dim]; slots: [n].
pub(crate) fn reference_f32(cache: &mut [f32], src: &[f32], slots: &[u32], row: usize) {
    for (i, &s) in slots.iter().enumerate() {
        let s = s as usize;
        cache[s * row..(s + 1) * row].copy_from_slice(&src[i * row..(i + 1) * row]);
    }
}

/// As [`reference_f32`], rounding to nearest f16.
pub(crate) fn reference_f16(cache: &mut [f16], src: &[f32], slots: &[u32], row: usize) {
    for (i, &s) in slots.iter().enumerate() {
        let s = s as usize;
        cache[s * row..(s + 1) * row].convert_from_f32_slice(&src[i * row..(i + 1) * row]);
    }
}
