//! Causal grouped-query attention over the block table: the tiled online-softmax kernel for
//! prefill (kernels/attention_prefill.cu) and split-K flash decoding for n = 1
//! (kernels/attention_decode.cu: partitions, then a merge).
//!
//! ctx_len grows every decode step, so the kernels read it from a dyn slot, and the launch
//! shapes depend only on what a captured graph can keep: the decode grid covers every
//! partition the block table's capacity allows, and partitions past ctx_len exit at once.

use tandem_core::ops::Attention;
use tandem_core::{DType, Error, Result};

use crate::kernels::KernelFile;
use crate::launch::{fits_u32, numel, Arg, Recorder};

const OP: &str = "attention";
/// Largest head_dim of the prefill kernel (AP_HDMAX); decode takes up to 256.
pub(crate) const PREFILL_HD_MAX: usize = 128;
pub(crate) const DECODE_HD_MAX: usize = 256;
/// Queries per prefill block (AP_Q), positions per K/V tile (AP_T), warps (AP_WARPS).
const AP_Q: usize = 16;
const AP_T: usize = 32;
const AP_WARPS: usize = 4;
/// Decode partitions: at least this many positions each, and about this many at most.
const PART_MIN: usize = 32;
const PARTS_TARGET: usize = 256;
/// Scores of one partition live in shared memory: at most 32 KiB of them.
const PART_MAX: usize = 8192;

/// Positions per decode partition and the partition count, from the block table's capacity
/// (not ctx_len, so that the shape survives in a captured graph).
fn partitions(op: &Attention, table_numel: usize) -> (usize, usize) {
    let cap = table_numel.saturating_mul(op.block_size).max(op.ctx_len).max(1);
    let mut part = PART_MIN;
    while cap.div_ceil(part) > PARTS_TARGET && part < PART_MAX {
        part *= 2;
    }
    (part, cap.div_ceil(part))
}

/// f32s of decode scratch an op needs (0 for prefill), given its block table's length.
pub(crate) fn decode_scratch_floats(op: &Attention, table_numel: usize) -> usize {
    if op.n != 1 {
        return 0;
    }
    let (_, parts) = partitions(op, table_numel);
    op.heads.saturating_mul(parts).saturating_mul(op.head_dim + 2)
}

pub(crate) fn record(r: &mut Recorder, op: &Attention) -> Result<()> {
    op.check_shape()?;
    let hd_max = if op.n == 1 { DECODE_HD_MAX } else { PREFILL_HD_MAX };
    if op.head_dim > hd_max {
        return Err(Error::ShapeMismatch { op: OP, expected: format!("head_dim <= {hd_max}"), got: op.head_dim.to_string() });
    }
    let len = numel(OP, &[op.n, op.heads, op.head_dim])?;
    let block_elems = numel(OP, &[op.block_size, op.kv_heads, op.head_dim])?;
    let table_len = op.ctx_len.div_ceil(op.block_size);
    let q = r.buf(OP, "q", op.q, DType::F32, len)?.ptr;
    let ck = r.buf(OP, "cache_k", op.cache_k, op.kv_dtype, 0)?;
    let cv = r.buf(OP, "cache_v", op.cache_v, op.kv_dtype, 0)?;
    let bt = r.buf(OP, "block_table", op.block_table, DType::U32, table_len)?;
    let out = r.buf(OP, "out", op.out, DType::F32, len)?.ptr;
    let num_blocks = ck.numel.min(cv.numel) / block_elems.max(1);
    bt.shadow.check_indices(OP, "block_table", table_len, num_blocks, "cache blocks")?;
    let (ck, cv, bt_ptr, bt_numel) = (ck.ptr, cv.ptr, bt.ptr, bt.numel);
    let f16 = op.kv_dtype == DType::F16;
    let ctx = r.dyn_slot(fits_u32(OP, "ctx_len", op.ctx_len)?);
    if len == 0 {
        return Ok(());
    }
    let heads = fits_u32(OP, "heads", op.heads)?;
    let kv_heads = Arg::U32(op.kv_heads as u32);
    let hd = Arg::U32(op.head_dim as u32);
    let bs = Arg::U32(fits_u32(OP, "block_size", op.block_size)?);
    let nb = Arg::U32(u32::try_from(num_blocks).unwrap_or(u32::MAX));
    let scale = Arg::F32(op.scale);
    let (q, ck, cv, bt, ctx) = (Arg::Ptr(q), Arg::Ptr(ck), Arg::Ptr(cv), Arg::Ptr(bt_ptr), Arg::Ptr(ctx));
    if op.n == 1 {
        let (part, parts) = partitions(op, bt_numel);
        let acc = Arg::Ptr(r.scratch);
        let ml = Arg::Ptr(r.scratch + 4 * (op.heads * parts * op.head_dim) as u64);
        let (part_a, parts_a) = (Arg::U32(part as u32), Arg::U32(parts as u32));
        let args = [q, ck, cv, bt, acc, ml, ctx, Arg::U32(heads), kv_heads, hd, bs, nb, scale, part_a, parts_a];
        let entry = if f16 { "attention_decode_partial_f16" } else { "attention_decode_partial_f32" };
        let smem = 4 * (part + op.head_dim) as u32;
        let grid = (heads, fits_u32(OP, "partitions", parts)?, 1);
        r.launch(KernelFile::AttentionDecode, entry, grid, 128, smem, &args)?;
        let merge = [acc, ml, Arg::Ptr(out), ctx, hd, part_a, parts_a];
        r.launch(KernelFile::AttentionDecode, "attention_decode_merge", (heads, 1, 1), 128, 0, &merge)
    } else {
        let n = Arg::U32(fits_u32(OP, "n", op.n)?);
        let args = [q, ck, cv, bt, Arg::Ptr(out), ctx, n, Arg::U32(heads), kv_heads, hd, bs, nb, scale];
        let entry = if f16 { "attention_prefill_f16" } else { "attention_prefill_f32" };
        let d = op.head_dim;
        let smem = 4 * (AP_T * (d + 1) + AP_T * d + AP_Q * d + AP_WARPS * AP_T) as u32;
        let grid = (fits_u32(OP, "n / 16", op.n.div_ceil(AP_Q))?, heads, 1);
        r.launch(KernelFile::AttentionPrefill, entry, grid, 32 * AP_WARPS as u32, smem, &args)
    }
}
