//! Causal grouped-query attention for a ragged batch over block tables: split-K flash decoding
//! (partitions of 64 positions, then a merge) for the decode rows, the tiled online-softmax
//! kernel for the prompt rows. A row's kernel follows from its class, and its arithmetic from
//! its own position, so it is computed alike whatever shares the step (batch invariance).
//! Sliding windows and soft-capped scores are parameters of both kernels.

use tandem_core::ops::Attention;
use tandem_core::quant::kv::cache_rows;
use tandem_core::{DType, Error, Result};

use super::{bad_dtype, fits_u32, kv_scales, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "attention";
/// Positions per decode partition (PART in attention_decode.wgsl).
pub(crate) const PART: usize = 64;
/// Rows per prefill workgroup (BQ in attention_prefill.wgsl).
const BQ: usize = 16;
/// Largest head_dim of the prefill kernel (HDMAX in attention_prefill.wgsl); decode takes 256.
const PREFILL_HD_MAX: usize = 128;
const DECODE_HD_MAX: usize = 256;
const MAX_GROUPS: usize = 65535;

/// Largest head_dim the kernels `op`'s rows need take.
pub(crate) fn hd_max(op: &Attention) -> usize {
    if op.decode_rows < op.n {
        PREFILL_HD_MAX
    } else {
        DECODE_HD_MAX
    }
}

/// Decode partitions of the longest context: the decode grid's x and the scratch stride.
fn max_parts(op: &Attention) -> usize {
    op.max_ctx.div_ceil(PART)
}

/// f32s of decode scratch `op` needs: [decode rows, heads, max_parts, head_dim + 2] (0 when
/// every row fits one partition). Saturates: the allocation then fails with a message.
pub(crate) fn scratch_floats(op: &Attention) -> usize {
    let parts = max_parts(op);
    if op.decode_rows == 0 || parts <= 1 {
        0
    } else {
        [op.heads, parts, op.head_dim + 2].iter().fold(op.decode_rows, |a, &d| a.saturating_mul(d))
    }
}

pub(crate) fn record(r: &mut Recorder, op: &Attention) -> Result<()> {
    let bad = |expected: String, got: String| Error::ShapeMismatch { op: OP, expected, got };
    // K_DTYPE and V_DTYPE in shaders/attention_kv.wgsl: the caches' dtypes' kernel codes.
    let code = |d: DType| match d {
        DType::F32 | DType::F16 | DType::Q8_0 | DType::Q4_0 | DType::F8E4M3 => {
            Ok(d.kernel_code().expect("a kernel dtype"))
        }
        d => Err(bad_dtype(OP, "cache", "f32/f16/q8_0/q4_0/fp8", d)),
    };
    let (kd, vd) = (code(op.kv_dtypes.k)?, code(op.kv_dtypes.v)?);
    let dtypes = move |key: PipeKey| key.with("K_DTYPE", kd).with("V_DTYPE", vd);
    let len = op.n * op.heads * op.head_dim;
    let block_elems = op.block_size * op.kv_heads * op.head_dim;
    let q = r.buf(OP, "q", op.q)?;
    let ck = r.buf(OP, "cache_k", op.cache_k)?;
    let cv = r.buf(OP, "cache_v", op.cache_v)?;
    let pos = r.buf(OP, "positions", op.positions)?;
    let starts = r.buf(OP, "table_starts", op.table_starts)?;
    let tables = r.buf(OP, "tables", op.tables)?;
    let out = r.buf(OP, "out", op.out)?;
    let table = r.table;
    let entry = move |id| &table.get(id).expect("checked").shadow;
    let (a, b) = (table.get(op.cache_k).expect("checked"), table.get(op.cache_v).expect("checked"));
    let (ds, kvh, hd) = (op.kv_dtypes, op.kv_heads, op.head_dim);
    // Cache rows, not elements: an fp8 cache's numel counts its scales' bytes too.
    let rows = cache_rows(ds.k, a.numel, kvh, hd).min(cache_rows(ds.v, b.numel, kvh, hd));
    let num_blocks = rows.checked_div(op.block_size).unwrap_or(0);
    // Where each cache's scales start (a quantized cache's layout follows from its own size).
    let scales = [kv_scales(ds.k, a.numel, kvh, hd), kv_scales(ds.v, b.numel, kvh, hd)];
    // The indices the kernels follow, checked on the host copies of the uploads (a buffer a
    // kernel wrote, or too large to copy, has none: WebGPU's bounds checks remain).
    if let (Some(p), Some(s), Some(t)) = (
        entry(op.positions).values(op.n),
        entry(op.table_starts).values(op.n),
        entry(op.tables).values(op.tables_len),
    ) {
        op.check_rows(p, s, t, num_blocks)?;
    }
    if len == 0 {
        return Ok(());
    }
    fits_u32(OP, "cache elements", num_blocks * block_elems)?;
    fits_u32(OP, "max_ctx", op.max_ctx)?;
    fits_u32(OP, "window", op.window)?;
    let (decodes, prompts) = (op.decode_rows, op.n - op.decode_rows);
    if op.heads > MAX_GROUPS
        || decodes > MAX_GROUPS
        || max_parts(op) > MAX_GROUPS
        || prompts.div_ceil(BQ) > MAX_GROUPS
    {
        return Err(bad(
            format!("heads, decode rows, max_ctx / {PART} and prompt rows / {BQ} <= {MAX_GROUPS}"),
            format!(
                "heads {}, decode rows {decodes}, max_ctx {}, prompt rows {prompts}",
                op.heads, op.max_ctx
            ),
        ));
    }
    let heads = op.heads as u32;
    let shape =
        [heads, op.kv_heads as u32, op.head_dim as u32, op.block_size as u32, op.scale.to_bits()];
    if decodes > 0 {
        let parts = max_parts(op);
        let tail = [parts as u32, op.window as u32, op.softcap.to_bits()];
        let params = [&shape[..], &tail[..], &scales[..]].concat();
        let scratch = (r.scratch.uid, r.scratch.buffer.clone());
        let bufs = vec![
            q.clone(),
            ck.clone(),
            cv.clone(),
            pos.clone(),
            starts.clone(),
            tables.clone(),
            out.clone(),
            scratch,
        ];
        let partial = dtypes(PipeKey::new(Shader::AttentionDecode, "partial"));
        r.push(partial, bufs.clone(), params.clone(), [parts as u32, heads, decodes as u32]);
        if parts > 1 {
            let merge = dtypes(PipeKey::new(Shader::AttentionDecode, "merge"));
            r.push(merge, bufs, params, [heads, decodes as u32, 1]);
        }
    }
    if prompts > 0 {
        let tail = [op.max_ctx as u32, op.window as u32, op.softcap.to_bits()];
        let params = [&[decodes as u32, prompts as u32], &shape[..], &tail[..], &scales].concat();
        let pipe = dtypes(PipeKey::new(Shader::AttentionPrefill, "main"));
        r.push(
            pipe,
            vec![q, ck, cv, pos, starts, tables, out],
            params,
            [prompts.div_ceil(BQ) as u32, heads, 1],
        );
    }
    Ok(())
}
