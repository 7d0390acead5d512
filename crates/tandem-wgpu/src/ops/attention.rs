//! Causal grouped-query attention over the block table: the tiled online-softmax kernel for
//! prefill, split-K flash decoding (partitions of 64 positions, then a merge) for n = 1.

use tandem_core::ops::Attention;
use tandem_core::{DType, Error, Result};

use super::{fits_u32, numel, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "attention";
/// Positions per decode partition (PART in attention_decode.wgsl).
pub(crate) const PART: usize = 64;
/// Largest head_dim of the prefill kernel (HDMAX in attention_prefill.wgsl); decode takes 256.
pub(crate) const PREFILL_HD_MAX: usize = 128;
pub(crate) const DECODE_HD_MAX: usize = 256;

/// f32s of decode scratch `op` needs (0 for prefill or a single partition).
pub(crate) fn scratch_floats(op: &Attention) -> usize {
    let parts = op.ctx_len.div_ceil(PART);
    if op.n != 1 || parts <= 1 {
        0
    } else {
        op.heads * parts * (op.head_dim + 2)
    }
}

pub(crate) fn record(r: &mut Recorder, op: &Attention) -> Result<()> {
    op.check_shape()?;
    let f16 = op.kv_dtype == DType::F16;
    let hd_max = if op.n == 1 {
        DECODE_HD_MAX
    } else {
        PREFILL_HD_MAX
    };
    if op.head_dim > hd_max {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!("head_dim <= {hd_max}"),
            got: op.head_dim.to_string(),
        });
    }
    let len = numel(OP, &[op.n, op.heads, op.head_dim])?;
    let block_elems = numel(OP, &[op.block_size, op.kv_heads, op.head_dim])?;
    let table_len = op.ctx_len.div_ceil(op.block_size);
    let q = r.buf(OP, "q", op.q, DType::F32, len)?;
    let ck = r.buf(OP, "cache_k", op.cache_k, op.kv_dtype, 0)?;
    let cv = r.buf(OP, "cache_v", op.cache_v, op.kv_dtype, 0)?;
    let bt = r.buf(OP, "block_table", op.block_table, DType::U32, table_len)?;
    let out = r.buf(OP, "out", op.out, DType::F32, len)?;
    let num_blocks = {
        let (a, b) = (
            r.table.get(op.cache_k).expect("checked"),
            r.table.get(op.cache_v).expect("checked"),
        );
        a.numel.min(b.numel) / block_elems.max(1)
    };
    r.table.get(op.block_table).expect("checked").shadow.check_indices(OP, "block_table", table_len, num_blocks, "cache blocks")?;
    if len == 0 {
        return Ok(());
    }
    fits_u32(OP, "cache elements", num_blocks * block_elems)?;
    if op.heads > 65535 {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: "heads <= 65535".into(),
            got: op.heads.to_string(),
        });
    }
    let kv = f16 as u32;
    let heads = op.heads as u32;
    if op.n == 1 {
        let parts = op.ctx_len.div_ceil(PART);
        let params = vec![
            op.ctx_len as u32,
            heads,
            op.kv_heads as u32,
            op.head_dim as u32,
            op.block_size as u32,
            op.scale.to_bits(),
            parts as u32,
        ];
        let scratch = (r.scratch.uid, r.scratch.buffer.clone());
        let bufs = vec![q, ck, cv, bt, out, scratch];
        let partial = PipeKey::new(Shader::AttentionDecode, "partial").with("KV_F16", kv);
        r.push(
            partial,
            bufs.clone(),
            params.clone(),
            [parts as u32, heads, 1],
        );
        if parts > 1 {
            let merge = PipeKey::new(Shader::AttentionDecode, "merge").with("KV_F16", kv);
            r.push(merge, bufs, params, [heads, 1, 1]);
        }
    } else {
        let params = vec![
            op.n as u32,
            op.ctx_len as u32,
            heads,
            op.kv_heads as u32,
            op.head_dim as u32,
            op.block_size as u32,
            op.scale.to_bits(),
        ];
        let pipe = PipeKey::new(Shader::AttentionPrefill, "main").with("KV_F16", kv);
        r.push(
            pipe,
            vec![q, ck, cv, bt, out],
            params,
            [op.n.div_ceil(16) as u32, heads, 1],
        );
    }
    Ok(())
}
