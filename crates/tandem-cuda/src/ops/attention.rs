//! Causal grouped-query attention for a ragged batch over block tables: split-K flash decoding
//! for the decode rows (kernels/attention_decode.cu: partitions, then a merge per row) and the
//! tiled online-softmax kernel for the prompt rows (kernels/attention_prefill.cu). A row's
//! kernel follows from its class, and its partitioning and tiling from its own position, so it
//! is computed alike whatever shares the step (batch invariance).
//!
//! Positions and block tables grow every decode step, so the kernels read them from device
//! memory, and the launch shapes depend only on what a captured graph can keep: the decode grid
//! covers every partition of the longest span (a row's context, or its last `window`
//! positions) in the power-of-two bucket of max_ctx (or of the window, if smaller), and
//! partitions past a row's span exit at once.
//!
//! Sliding windows and soft-capped scores are op fields the kernels take as arguments: a row's
//! span starts at its window's first position (partitions and tiles never read a block wholly
//! before it), and a capped score is softcap * tanh(s / softcap).

use tandem_core::ops::Attention;
use tandem_core::quant::kv::cache_rows;
use tandem_core::{DType, KvDtypes, Result};

use crate::kernels::KernelFile;
use crate::launch::{bad_dtype, fits_u32, Arg, Recorder};
use crate::ops::kv_scales;

const OP: &str = "attention";
/// Largest head_dim of the prefill kernel (AP_HDMAX); decode takes up to 256.
pub(crate) const PREFILL_HD_MAX: usize = 128;
pub(crate) const DECODE_HD_MAX: usize = 256;
/// Queries per prefill block (AP_Q), positions per K/V tile (AP_T), warps (AP_WARPS).
const AP_Q: usize = 16;
const AP_T: usize = 32;
const AP_WARPS: usize = 4;
/// Decode partitions (AD_PART_MIN, AD_PARTS_TARGET, AD_PART_MAX): at least this many positions
/// each, about this many partitions at most, and at most this many scores in shared memory.
const PART_MIN: usize = 32;
const PARTS_TARGET: usize = 256;
const PART_MAX: usize = 8192;

/// Positions per partition of a decode row whose context is `ctx` positions (part_len_for in
/// the kernel): the smallest power of two from PART_MIN up that cuts it into at most
/// PARTS_TARGET partitions (PART_MAX at most).
pub(crate) fn part_len(ctx: usize) -> usize {
    let mut p = PART_MIN;
    while ctx.div_ceil(p) > PARTS_TARGET && p < PART_MAX {
        p *= 2;
    }
    p
}

/// The decode grid for contexts up to `max_ctx`: (the longest partition, the most partitions
/// any such row has). Sized from max_ctx rounded up to a power of two, so that the launch, and
/// a graph captured from it, stays the same while the contexts grow within the bucket.
pub(crate) fn decode_grid(max_ctx: usize) -> (usize, usize) {
    let cap = max_ctx.max(1).checked_next_power_of_two().unwrap_or(max_ctx);
    // part_len grows with the context, and the partition count with it until PARTS_TARGET,
    // beyond which it stays there until PART_MAX caps the partitions' length.
    let parts = cap.div_ceil(PART_MIN).min(PARTS_TARGET).max(cap.div_ceil(PART_MAX));
    (part_len(cap), parts)
}

/// Query heads per block of the decode partial kernel at most (AD_GMAX).
const GROUP_MAX: usize = 8;
/// Dynamic shared memory a launch may take without opting in.
const SMEM_DEFAULT: usize = 48 * 1024;

/// Query heads per block of the decode partial kernel: the whole group sharing a KV head, so
/// each K/V value is loaded once for all of them, where it is at most GROUP_MAX and their
/// scores fit in shared memory; else 1. `TANDEM_CUDA_DECODE_GROUP=0` keeps 1 (a head per
/// block, the layout before grouping), for measuring one against the other.
fn heads_per_block(op: &Attention, part_max: usize) -> usize {
    static PER_HEAD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let per_head =
        *PER_HEAD.get_or_init(|| std::env::var("TANDEM_CUDA_DECODE_GROUP").is_ok_and(|v| v == "0"));
    let group = op.heads / op.kv_heads.max(1);
    let fits = 4 * group * (part_max + op.head_dim) <= SMEM_DEFAULT;
    if per_head || group > GROUP_MAX || !fits || op.heads % op.kv_heads.max(1) != 0 {
        1
    } else {
        group
    }
}

/// The longest span a decode row of `op` can have: max_ctx, or the window if smaller.
fn longest_span(op: &Attention) -> usize {
    match op.window {
        0 => op.max_ctx,
        w => w.min(op.max_ctx),
    }
}

/// f32s of decode scratch `op` needs: [decode rows, heads, partitions, head_dim + 2].
/// Saturating: the op's shapes are checked only when it records.
pub(crate) fn decode_scratch_floats(op: &Attention) -> usize {
    if op.decode_rows == 0 {
        return 0;
    }
    let (_, parts) = decode_grid(longest_span(op));
    [op.heads, parts, op.head_dim.saturating_add(2)]
        .iter()
        .fold(op.decode_rows, |a, &d| a.saturating_mul(d))
}

pub(crate) fn record(r: &mut Recorder, op: &Attention) -> Result<()> {
    let (n, dr) = (op.n, op.decode_rows);
    let len = n * op.heads * op.head_dim;
    let (kvh, hd) = (op.kv_heads, op.head_dim);
    let q = r.buf(OP, "q", op.q)?.ptr;
    let ck = r.buf(OP, "cache_k", op.cache_k)?;
    let cv = r.buf(OP, "cache_v", op.cache_v)?;
    let pos = r.buf(OP, "positions", op.positions)?;
    let starts = r.buf(OP, "table_starts", op.table_starts)?;
    let tables = r.buf(OP, "tables", op.tables)?;
    let out = r.buf(OP, "out", op.out)?.ptr;
    let ds = op.kv_dtypes;
    // Rows, not numel / row: an fp8 buffer's elements are its bytes, scales included.
    let rows = cache_rows(ds.k, ck.numel, kvh, hd).min(cache_rows(ds.v, cv.numel, kvh, hd));
    let num_blocks = rows / op.block_size.max(1);
    // Where a quantized cache's scales start (0 for f32/f16).
    let doffs = (
        Arg::U64(kv_scales(ds.k, ck.numel, kvh, hd)),
        Arg::U64(kv_scales(ds.v, cv.numel, kvh, hd)),
    );
    if let (Some(p), Some(s), Some(t)) =
        (pos.shadow.values(n), starts.shadow.values(n), tables.shadow.values(op.tables_len))
    {
        op.check_rows(p, s, t, num_blocks)?;
    }
    let (ck, cv, pos, starts, tables) = (ck.ptr, cv.ptr, pos.ptr, starts.ptr, tables.ptr);
    if len == 0 {
        return Ok(());
    }
    fits_u32(OP, "max_ctx", op.max_ctx)?;
    let heads = fits_u32(OP, "heads", op.heads)?;
    let kv_heads = Arg::U32(op.kv_heads as u32);
    let hd = Arg::U32(op.head_dim as u32);
    let bs = Arg::U32(fits_u32(OP, "block_size", op.block_size)?);
    let nb = Arg::U32(u32::try_from(num_blocks).unwrap_or(u32::MAX));
    let scale = Arg::F32(op.scale);
    let window = Arg::U32(u32::try_from(op.window).unwrap_or(u32::MAX));
    let softcap = Arg::F32(op.softcap);
    let (ck, cv, tables) = (Arg::Ptr(ck), Arg::Ptr(cv), Arg::Ptr(tables));
    // One instantiation of each kernel per K/V pair (KV_PAIRS), all with the same arguments.
    let Some((decode_entry, prefill_entry)) = entries(ds) else {
        return Err(bad_dtype(OP, "cache", "f32/f16/q8_0/q4_0/fp8 (K/V pairs of KV_PAIRS)", ds.v));
    };
    if dr > 0 {
        let (part_max, parts) = decode_grid(longest_span(op));
        let g = heads_per_block(op, part_max);
        let acc = Arg::Ptr(r.scratch);
        let ml = Arg::Ptr(r.scratch + 4 * (dr * op.heads * parts * op.head_dim) as u64);
        let (q, pos, parts_a) =
            (Arg::Ptr(q), Arg::Ptr(pos), Arg::U32(fits_u32(OP, "partitions", parts)?));
        let args = [
            q,
            ck,
            cv,
            doffs.0,
            doffs.1,
            pos,
            Arg::Ptr(starts),
            tables,
            acc,
            ml,
            Arg::U32(heads),
            kv_heads,
            hd,
            bs,
            nb,
            scale,
            parts_a,
            window,
            softcap,
            Arg::U32(g as u32),
        ];
        let smem = 4 * (g * (part_max + op.head_dim)) as u32;
        let grid = (heads / g as u32, parts as u32, fits_u32(OP, "decode rows", dr)?);
        r.launch(KernelFile::AttentionDecode, decode_entry, grid, 128, smem, &args)?;
        let merge = [acc, ml, Arg::Ptr(out), pos, Arg::U32(heads), hd, parts_a, window];
        r.launch(
            KernelFile::AttentionDecode,
            "attention_decode_merge",
            (heads, dr as u32, 1),
            128,
            0,
            &merge,
        )?;
    }
    if n > dr {
        // The prompt rows, from their first: pointer offsets into q, out and the row indices.
        let row = (dr * op.heads * op.head_dim * 4) as u64;
        let (q, out) = (Arg::Ptr(q + row), Arg::Ptr(out + row));
        let (pos, starts) = (Arg::Ptr(pos + 4 * dr as u64), Arg::Ptr(starts + 4 * dr as u64));
        let rows = n - dr;
        let args = [
            q,
            ck,
            cv,
            doffs.0,
            doffs.1,
            pos,
            starts,
            tables,
            out,
            Arg::U32(fits_u32(OP, "n", rows)?),
            Arg::U32(heads),
            kv_heads,
            hd,
            bs,
            nb,
            scale,
            window,
            softcap,
        ];
        let d = op.head_dim;
        let smem = 4 * (AP_T * (d + 1) + AP_T * d + AP_Q * d + AP_WARPS * AP_T) as u32;
        let grid = (fits_u32(OP, "n / 16", rows.div_ceil(AP_Q))?, heads, 1);
        let block = 32 * AP_WARPS as u32;
        r.launch(KernelFile::AttentionPrefill, prefill_entry, grid, block, smem, &args)?;
    }
    Ok(())
}

/// The decode and prefill kernels of a K/V pair: named by k's dtype, then v's where it
/// differs (kernels/attention_decode.cu, attention_prefill.cu); `None` outside KV_PAIRS.
pub(crate) fn entries(ds: KvDtypes) -> Option<(&'static str, &'static str)> {
    use DType::*;
    Some(match (ds.k, ds.v) {
        (F32, F32) => ("attention_decode_partial_f32", "attention_prefill_f32"),
        (F16, F16) => ("attention_decode_partial_f16", "attention_prefill_f16"),
        (Q8_0, Q8_0) => ("attention_decode_partial_q8_0", "attention_prefill_q8_0"),
        (Q4_0, Q4_0) => ("attention_decode_partial_q4_0", "attention_prefill_q4_0"),
        (F8E4M3, F8E4M3) => ("attention_decode_partial_fp8", "attention_prefill_fp8"),
        (F16, Q8_0) => ("attention_decode_partial_f16_q8_0", "attention_prefill_f16_q8_0"),
        (F16, Q4_0) => ("attention_decode_partial_f16_q4_0", "attention_prefill_f16_q4_0"),
        (Q8_0, Q4_0) => ("attention_decode_partial_q8_0_q4_0", "attention_prefill_q8_0_q4_0"),
        _ => return None,
    })
}
