//! What each op's operands are, said once for every backend: which buffer, of which dtype, of
//! how many elements at least, read or written; and the shape rules an op must follow whatever
//! runs it. [`crate::backend::check_op`] checks an op against them before a backend sees it,
//! so a backend only decides how to run an op (and whether it can: `supports`).

use super::*;
use crate::{Error, Result};

/// How an op uses one of its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// Read and written in place (Add's x, Rope's x, KvWrite's caches).
    ReadWrite,
}

/// One buffer an op reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operand {
    /// The op field's name ("x", "cache_k"), as errors name it.
    pub role: &'static str,
    pub buf: BufId,
    pub dtype: DType,
    /// Elements the op touches, at least (the engine sizes buffers for its largest step).
    pub numel: usize,
    pub access: Access,
}

impl Operand {
    /// Whether the op writes this buffer: then no other operand of the op may be it.
    pub fn written(&self) -> bool {
        self.access != Access::Read
    }
}

/// An op's operands, held inline: the engine lists them for every op of every step, so
/// listing allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Operands {
    list: [Operand; Operands::MAX],
    len: usize,
}

impl Operands {
    /// The most operands of any op (Attention's).
    pub const MAX: usize = 7;

    fn new() -> Self {
        let none =
            Operand { role: "", buf: BufId(0), dtype: DType::F32, numel: 0, access: Access::Read };
        Operands { list: [none; Self::MAX], len: 0 }
    }

    fn push(&mut self, role: &'static str, buf: BufId, dtype: DType, numel: usize, a: Access) {
        self.list[self.len] = Operand { role, buf, dtype, numel, access: a };
        self.len += 1;
    }
}

impl std::ops::Deref for Operands {
    type Target = [Operand];
    fn deref(&self) -> &[Operand] {
        &self.list[..self.len]
    }
}

/// Product of shape dimensions, as an error rather than an overflow.
fn numel(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| Error::ShapeMismatch {
        op,
        expected: "a shape whose element count fits in usize".into(),
        got: format!("{dims:?}"),
    })
}

fn bad(op: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Error {
    Error::ShapeMismatch { op, expected: expected.into(), got: got.into() }
}

fn is_weight(d: DType) -> bool {
    d.is_weight()
}

fn check_kv(op: &'static str, ds: KvDtypes, kv_heads: usize, head_dim: usize) -> Result<()> {
    use crate::quant::kv;
    if !kv::KV_DTYPES.contains(&ds.k) || !kv::KV_DTYPES.contains(&ds.v) {
        return Err(bad(op, "cache dtypes f32, f16, q8_0, q4_0 or fp8", ds.to_string()));
    }
    if !kv::KV_PAIRS.contains(&ds) {
        let pairs: Vec<String> = kv::KV_PAIRS.iter().map(|p| p.to_string()).collect();
        return Err(bad(op, format!("K/V dtypes one of {}", pairs.join(", ")), ds.to_string()));
    }
    for d in [ds.k, ds.v] {
        if d == DType::F8E4M3 && !head_dim.is_multiple_of(4) {
            // Each head's f32 scale follows its codes' region on a 4-byte boundary.
            return Err(bad(op, "fp8 cache heads of a multiple of 4 values", head_dim.to_string()));
        }
    }
    let d = if kv::row_fits(ds.k, kv_heads * head_dim) { ds.v } else { ds.k };
    if !kv::row_fits(d, kv_heads * head_dim) {
        let want = format!("{d} cache rows (kv_heads x head_dim) of whole 32-value blocks");
        let got = format!("{kv_heads} x {head_dim} = {} values", kv_heads * head_dim);
        return Err(bad(op, format!("{want}; f32, f16 and fp8 take any"), got));
    }
    Ok(())
}

impl Op {
    /// The name errors give: attention's rows of either class are one op.
    pub(crate) fn family(&self) -> &'static str {
        match self {
            Op::Attention(_) => "attention",
            op => op.name(),
        }
    }

    /// The rules of the op's own fields, whatever its buffers and backend: dtypes an op may
    /// name (a weight of a float or quantized type, a KV cache of f32, f16, q8_0, q4_0 or fp8,
    /// in rows of whole blocks for q8_0 and q4_0, heads of a multiple of 4 values for fp8), whole query groups per KV head, real blocks,
    /// decode rows among the rows, an even rotary head.
    pub fn check_shape(&self) -> Result<()> {
        let op = self.family();
        match self {
            Op::Embed(o) if !is_weight(o.dtype) => {
                Err(bad(op, "table of a float or quantized dtype", o.dtype.to_string()))
            }
            Op::Matmul(o) if !is_weight(o.wdtype) => {
                Err(bad(op, "w of a float or quantized dtype", o.wdtype.to_string()))
            }
            Op::Matmul(o) if o.decode_rows > o.n => Err(bad(
                op,
                format!("decode_rows <= n = {}", o.n),
                format!("decode_rows = {}", o.decode_rows),
            )),
            Op::Rope(o)
                if !o.rot_dim.is_multiple_of(2) || o.rot_dim == 0 || o.rot_dim > o.head_dim =>
            {
                Err(bad(
                    op,
                    format!("an even rot_dim in 2..={}", o.head_dim),
                    o.rot_dim.to_string(),
                ))
            }
            Op::Rope(o) if !o.scale.is_finite() => {
                Err(bad(op, "a finite scale", o.scale.to_string()))
            }
            Op::Embed(o) if !o.scale.is_finite() => {
                Err(bad(op, "a finite scale", o.scale.to_string()))
            }
            Op::LoraShrink(LoraShrink { dtype, .. }) | Op::LoraExpand(LoraExpand { dtype, .. })
                if !lora_dtype(*dtype) =>
            {
                Err(bad(op, "an adapter pool of f32 or f16", dtype.to_string()))
            }
            Op::LoraExpand(o) if o.n > o.out_rows => {
                Err(bad(op, format!("n <= out_rows = {}", o.out_rows), format!("n = {}", o.n)))
            }
            Op::MaskLogits(o) if o.n > o.x_rows => {
                Err(bad(op, format!("n <= x_rows = {}", o.x_rows), format!("n = {}", o.n)))
            }
            Op::Hadamard(o) if !o.size.is_power_of_two() || !o.len.is_multiple_of(o.size) => {
                Err(bad(
                    op,
                    "size a power of two dividing len",
                    format!("size {} len {}", o.size, o.len),
                ))
            }
            Op::Softcap(o) if !(o.cap > 0.0 && o.cap.is_finite()) => {
                Err(bad(op, "a finite cap > 0", o.cap.to_string()))
            }
            Op::MoeRoute(o) if o.k == 0 || o.k > o.experts => Err(bad(
                op,
                format!("k in 1..={} (the expert count)", o.experts),
                format!("k = {}", o.k),
            )),
            Op::MoeMatmul(o) if !is_weight(o.wdtype) => {
                Err(bad(op, "w of a float or quantized dtype", o.wdtype.to_string()))
            }
            Op::MoeMatmul(o) if !o.k.is_multiple_of(o.wdtype.block_elems()) => Err(bad(
                op,
                format!(
                    "k a multiple of {}'s {} elements a block",
                    o.wdtype,
                    o.wdtype.block_elems()
                ),
                format!("k = {}", o.k),
            )),
            Op::KvWrite(o) => check_kv(op, o.kv_dtypes, o.kv_heads, o.head_dim),
            Op::Attention(o) => {
                check_kv(op, o.kv_dtypes, o.kv_heads, o.head_dim)?;
                if o.kv_heads == 0 || !o.heads.is_multiple_of(o.kv_heads) {
                    return Err(bad(
                        op,
                        "heads a multiple of kv_heads > 0",
                        format!("heads {} kv_heads {}", o.heads, o.kv_heads),
                    ));
                }
                if o.block_size == 0 {
                    return Err(bad(op, "block_size > 0", "0"));
                }
                if o.decode_rows > o.n {
                    return Err(bad(
                        op,
                        format!("decode_rows <= n = {}", o.n),
                        format!("decode_rows = {}", o.decode_rows),
                    ));
                }
                if o.n > 0 && o.max_ctx == 0 {
                    return Err(bad(op, "max_ctx > 0 (every position is below it)", "0"));
                }
                if !(o.softcap >= 0.0 && o.softcap.is_finite()) {
                    return Err(bad(op, "softcap 0 (none) or finite > 0", o.softcap.to_string()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The op's buffers with the dtype and least element count each must have. KV caches
    /// count 0: any number of blocks will do (the indices into them are checked on the data).
    /// Fails only when a shape's element count overflows.
    pub fn operands(&self) -> Result<Operands> {
        use Access::{Read, ReadWrite, Write};
        let op = self.family();
        let mut v = Operands::new();
        match self {
            Op::Embed(o) => {
                v.push("table", o.table, o.dtype, numel(op, &[o.vocab, o.dim])?, Read);
                v.push("ids", o.ids, DType::U32, o.n, Read);
                v.push("out", o.out, DType::F32, numel(op, &[o.n, o.dim])?, Write);
            }
            Op::RmsNorm(o) => {
                let len = numel(op, &[o.n, o.dim])?;
                v.push("x", o.x, DType::F32, len, Read);
                v.push("weight", o.weight, DType::F32, o.dim, Read);
                v.push("out", o.out, DType::F32, len, Write);
            }
            Op::Matmul(o) => {
                v.push("x", o.x, DType::F32, numel(op, &[o.n, o.k])?, Read);
                v.push("w", o.w, o.wdtype, numel(op, &[o.m, o.k])?, Read);
                if let Some(b) = o.bias {
                    v.push("bias", b, DType::F32, o.m, Read);
                }
                v.push("out", o.out, DType::F32, numel(op, &[o.n, o.m])?, Write);
            }
            Op::Rope(o) => {
                v.push("x", o.x, DType::F32, numel(op, &[o.n, o.heads, o.head_dim])?, ReadWrite);
                v.push("positions", o.positions, DType::U32, o.n, Read);
                v.push("inv_freq", o.inv_freq, DType::F32, o.rot_dim / 2, Read);
            }
            Op::KvWrite(o) => {
                let len = numel(op, &[o.n, o.kv_heads, o.head_dim])?;
                v.push("k", o.k, DType::F32, len, Read);
                v.push("v", o.v, DType::F32, len, Read);
                v.push("cache_k", o.cache_k, o.kv_dtypes.k, 0, ReadWrite);
                v.push("cache_v", o.cache_v, o.kv_dtypes.v, 0, ReadWrite);
                v.push("slots", o.slots, DType::U32, o.n, Read);
            }
            Op::Attention(o) => {
                let len = numel(op, &[o.n, o.heads, o.head_dim])?;
                // The cache's rows must be addressable too (checked against the block count
                // by backends, which know it).
                numel(op, &[o.block_size, o.kv_heads, o.head_dim])?;
                v.push("q", o.q, DType::F32, len, Read);
                v.push("cache_k", o.cache_k, o.kv_dtypes.k, 0, Read);
                v.push("cache_v", o.cache_v, o.kv_dtypes.v, 0, Read);
                v.push("positions", o.positions, DType::U32, o.n, Read);
                v.push("table_starts", o.table_starts, DType::U32, o.n, Read);
                v.push("tables", o.tables, DType::U32, o.tables_len, Read);
                v.push("out", o.out, DType::F32, len, Write);
            }
            Op::Swiglu(o) => {
                v.push("gate", o.gate, DType::F32, o.len, Read);
                v.push("up", o.up, DType::F32, o.len, Read);
                v.push("out", o.out, DType::F32, o.len, Write);
            }
            Op::Geglu(o) => {
                v.push("gate", o.gate, DType::F32, o.len, Read);
                v.push("up", o.up, DType::F32, o.len, Read);
                v.push("out", o.out, DType::F32, o.len, Write);
            }
            Op::Softcap(o) => v.push("x", o.x, DType::F32, o.len, ReadWrite),
            Op::Hadamard(o) => v.push("x", o.x, DType::F32, o.len, ReadWrite),
            Op::MaskLogits(o) => {
                v.push("x", o.x, DType::F32, numel(op, &[o.x_rows, o.width])?, ReadWrite);
                v.push("rows", o.rows, DType::U32, o.n, Read);
                v.push("mask", o.mask, DType::U32, numel(op, &[o.n, o.words()])?, Read);
            }
            Op::LoraShrink(o) => {
                v.push("x", o.x, DType::F32, numel(op, &[o.x_rows, o.k])?, Read);
                v.push("a", o.a, o.dtype, numel(op, &[o.n_slots, o.rank, o.k])?, Read);
                v.push("rows", o.rows, DType::U32, o.n, Read);
                v.push("slots", o.slots, DType::U32, o.n, Read);
                v.push("t", o.t, DType::F32, numel(op, &[o.n, o.rank])?, Write);
            }
            Op::LoraExpand(o) => {
                v.push("t", o.t, DType::F32, numel(op, &[o.n, o.rank])?, Read);
                v.push("b", o.b, o.dtype, numel(op, &[o.n_slots, o.rank, o.m])?, Read);
                v.push("rows", o.rows, DType::U32, o.n, Read);
                v.push("slots", o.slots, DType::U32, o.n, Read);
                v.push("out", o.out, DType::F32, numel(op, &[o.out_rows, o.m])?, ReadWrite);
            }
            Op::MoeRoute(o) => {
                v.push("logits", o.logits, DType::F32, numel(op, &[o.n, o.experts])?, Read);
                v.push("ids", o.ids, DType::U32, numel(op, &[o.n, o.k])?, Write);
                v.push("weights", o.weights, DType::F32, numel(op, &[o.n, o.k])?, Write);
            }
            Op::MoeMatmul(o) => {
                let rows = if o.x_per_slot { numel(op, &[o.n, o.slots])? } else { o.n };
                v.push("x", o.x, DType::F32, numel(op, &[rows, o.k])?, Read);
                v.push("w", o.w, o.wdtype, numel(op, &[o.experts, o.m, o.k])?, Read);
                v.push("ids", o.ids, DType::U32, numel(op, &[o.n, o.slots])?, Read);
                v.push("out", o.out, DType::F32, numel(op, &[o.n, o.slots, o.m])?, Write);
            }
            Op::MoeSum(o) => {
                v.push("y", o.y, DType::F32, numel(op, &[o.n, o.slots, o.dim])?, Read);
                v.push("weights", o.weights, DType::F32, numel(op, &[o.n, o.slots])?, Read);
                v.push("out", o.out, DType::F32, numel(op, &[o.n, o.dim])?, Write);
            }
            Op::Add(o) => {
                v.push("x", o.x, DType::F32, o.len, ReadWrite);
                v.push("y", o.y, DType::F32, o.len, Read);
            }
            Op::Argmax(o) => {
                v.push("x", o.x, DType::F32, numel(op, &[o.n, o.width])?, Read);
                v.push("out", o.out, DType::U32, o.n, Write);
            }
            Op::Sample(o) => {
                v.push("x", o.x, DType::F32, numel(op, &[o.n, o.width])?, Read);
                v.push("params", o.params, DType::U32, numel(op, &[o.n, SampleRow::WORDS])?, Read);
                v.push("out", o.out, DType::U32, o.n, Write);
            }
            Op::CopyRows(o) => {
                let end = |row: usize| numel(op, &[row.saturating_add(o.n_rows), o.width]);
                numel(op, &[o.n_rows, o.width])?;
                v.push("src", o.src, DType::F32, end(o.src_row)?, Read);
                v.push("dst", o.dst, DType::F32, end(o.dst_row)?, Write);
            }
        }
        Ok(v)
    }
}
