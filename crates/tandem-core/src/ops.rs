//! The typed operations a backend executes. Each op names the buffers it reads and writes and
//! carries its shapes; the engine records a whole step of them and hands it over at once.
//!
//! Activations are f32 row-major. Weights may be any [`DType`]; KV caches are f32 or f16.
//! Ops never alias an input with their output, except where the doc says "in place".

use crate::backend::BufId;
use crate::dtype::DType;
use crate::quant::kv::KvDtypes;

mod lora;
mod moe;
mod operands;
pub use lora::{lora_dtype, LoraExpand, LoraShrink};
pub use moe::{MoeMatmul, MoeRoute, MoeSum};
pub use operands::{Access, Operand, Operands};

/// Token embedding lookup: out[i] = table[ids[i]] * scale (each element's f32 product; with
/// scale 1 the row itself).
/// table: [vocab, dim] in `dtype`; ids: [n] u32; out: [n, dim] f32.
/// An id >= vocab is a caller bug; backends report it as an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    pub table: BufId,
    pub dtype: DType,
    pub ids: BufId,
    pub out: BufId,
    pub n: usize,
    pub vocab: usize,
    pub dim: usize,
    /// 1, or Gemma's sqrt(hidden size) (the table stays unscaled: a tied head reads it too).
    pub scale: f32,
}

/// out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight.
/// x: [n, dim] f32; weight: [dim] f32; out: [n, dim] f32.
#[derive(Debug, Clone, PartialEq)]
pub struct RmsNorm {
    pub x: BufId,
    pub weight: BufId,
    pub out: BufId,
    pub n: usize,
    pub dim: usize,
    pub eps: f32,
}

/// out = x @ w^T (+ bias), dequantizing `w` inside the kernel.
/// x: [n, k] f32; w: [m, k] in `wdtype`; bias: [m] f32; out: [n, m] f32.
///
/// Batch invariance: rows 0..decode_rows are decode rows, each computed exactly (bit for bit)
/// as a one-row product computes it, however many share the op; rows decode_rows..n are
/// prompt rows, each computed exactly as in any other prompt product of any n. So a backend
/// picks its kernel (and split-K, tiling of k, precision class) from the row's class and
/// k, m, dtype, never from n: a request's tokens do not depend on what is batched with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Matmul {
    pub x: BufId,
    pub w: BufId,
    pub wdtype: DType,
    pub bias: Option<BufId>,
    pub out: BufId,
    pub n: usize,
    pub k: usize,
    pub m: usize,
    /// <= n.
    pub decode_rows: usize,
}

/// Rotary position embedding, in place, in the rotate-half (GPT-NeoX / HF) layout: within each
/// head, the first `rot_dim` elements rotate, element i pairing with element i + rot_dim/2, by
/// angle a = position * inv_freq[i] (an f32 product):
///   x[i] = x[i] * (cos a * scale) - x[i + rot_dim/2] * (sin a * scale), and
///   x[i + rot_dim/2] = x[i] * (sin a * scale) + x[i + rot_dim/2] * (cos a * scale).
/// Elements rot_dim..head_dim pass through (partial rotary, as Phi-3 and Phi-4-mini use).
/// x: [n, heads, head_dim] f32; positions: [n] u32; inv_freq: [rot_dim/2] f32 (rope_theta and
/// any rope_scaling are folded into it by the engine).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub x: BufId,
    pub positions: BufId,
    pub inv_freq: BufId,
    pub n: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Even, 2..=head_dim; head_dim for full rotary.
    pub rot_dim: usize,
    /// 1, or LongRoPE's attention factor (cos and sin are multiplied by it).
    pub scale: f32,
}

/// Writes new keys and values into paged cache blocks.
/// k, v: [n, kv_heads, head_dim] f32; cache_k, cache_v: [num_blocks, block_size, kv_heads,
/// head_dim] in `kv_dtypes` (k's, v's); slots: [n] u32, token i goes to row slots[i] = block * block_size +
/// offset of the flattened [num_blocks * block_size] rows.
#[derive(Debug, Clone, PartialEq)]
pub struct KvWrite {
    pub k: BufId,
    pub v: BufId,
    pub cache_k: BufId,
    pub cache_v: BufId,
    pub kv_dtypes: KvDtypes,
    pub slots: BufId,
    pub n: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal grouped-query attention for a ragged batch of queries, each over its own sequence's
/// paged KV cache: decodes of many sequences and prompt chunks in one op.
///
/// q: [n, heads, head_dim] f32; out: [n, heads, head_dim] f32 = softmax(q k^T * scale) v.
/// positions: [n] u32, query i's position in its sequence: it attends to positions
/// 0..=positions[i]. table_starts: [n] u32, where query i's block table starts in `tables`:
/// position t lives in cache row tables[table_starts[i] + t / block_size] * block_size +
/// t % block_size. tables: [tables_len] u32, the step's block tables one after another.
/// cache_k, cache_v: [num_blocks, block_size, kv_heads, head_dim] in `kv_dtypes`; query head h
/// reads kv head h / (heads / kv_heads), never a materialized copy.
///
/// Rows 0..decode_rows are decodes: each computed exactly as the same query alone (n = 1)
/// would be. Rows decode_rows..n are prompt queries; those of one sequence are consecutive,
/// in increasing positions, so a backend may tile them to share K/V loads, but each row's
/// arithmetic depends on its own position only (batch invariance, see [`Matmul`]).
/// Every positions[i] < max_ctx (sizes grids and scratch). Rows of the cache outside a query's
/// context may hold anything, NaN included, and must not leak.
///
/// A sliding window (`window` > 0) narrows query i's context to the positions p with
/// positions[i] - p < window: p in positions[i] + 1 - window ..= positions[i] (from 0). Blocks
/// wholly before a query's window are never read: their table entries may name any block
/// (the engine may have given them back), but they are inside the pool. With `softcap` > 0
/// each score s = (q . k) * scale becomes softcap * tanh(s / softcap) before the softmax
/// (Gemma 2).
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    pub q: BufId,
    pub cache_k: BufId,
    pub cache_v: BufId,
    pub kv_dtypes: KvDtypes,
    pub positions: BufId,
    pub table_starts: BufId,
    pub tables: BufId,
    pub tables_len: usize,
    pub out: BufId,
    pub n: usize,
    pub decode_rows: usize,
    pub max_ctx: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
    /// 0: every position up to the query's; else the last `window` positions.
    pub window: usize,
    /// 0: none; else the cap of the scores (finite, > 0).
    pub softcap: f32,
}

impl Attention {
    /// The first position query at `pos` attends to.
    pub fn first_position(&self, pos: usize) -> usize {
        if self.window == 0 {
            0
        } else {
            (pos + 1).saturating_sub(self.window)
        }
    }

    /// The index checks every backend makes before following a query's position and block
    /// table (on the data itself, or on host copies of the uploads): each position below
    /// max_ctx, each table inside `tables`, each block inside the pool. Allocates nothing
    /// unless it fails.
    pub fn check_rows(
        &self,
        positions: &[u32],
        table_starts: &[u32],
        tables: &[u32],
        num_blocks: usize,
    ) -> crate::Result<()> {
        check_indices("attention", "positions", positions, self.max_ctx, "max_ctx")?;
        for (i, (&pos, &start)) in positions.iter().zip(table_starts).enumerate() {
            let (start, len) = (start as usize, (pos as usize + 1).div_ceil(self.block_size));
            if start + len > tables.len() {
                return Err(crate::Error::ShapeMismatch {
                    op: "attention",
                    expected: format!("query {i}'s table within tables_len {}", tables.len()),
                    got: format!("table_starts[{i}] = {start}, {len} blocks for position {pos}"),
                });
            }
            check_indices(
                "attention",
                "tables",
                &tables[start..start + len],
                num_blocks,
                "cache blocks",
            )?;
        }
        Ok(())
    }
}

/// The index check every backend makes before following indices into memory (token ids into
/// the embedding, KV slots into the cache, block-table entries into the block pool): each of
/// `values` must be below `limit`; `what` says what the limit counts ("vocab", "cache rows").
/// Allocates nothing unless it fails: GPU backends call it every step.
pub fn check_indices(
    op: &'static str,
    name: &str,
    values: &[u32],
    limit: usize,
    what: &str,
) -> crate::Result<()> {
    match values.iter().position(|&v| v as usize >= limit) {
        None => Ok(()),
        Some(i) => Err(crate::Error::ShapeMismatch {
            op,
            expected: format!("{name} < {limit} ({what})"),
            got: format!("{name}[{i}] = {}", values[i]),
        }),
    }
}

/// out = silu(gate) * up, elementwise. gate, up, out: [len] f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Swiglu {
    pub gate: BufId,
    pub up: BufId,
    pub out: BufId,
    pub len: usize,
}

/// out = gelu_tanh(gate) * up, elementwise, where gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi)
/// (g + 0.044715 g^3))): the gated MLP of Gemma (`gelu_pytorch_tanh`). gate, up, out: [len] f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Geglu {
    pub gate: BufId,
    pub up: BufId,
    pub out: BufId,
    pub len: usize,
}

/// Soft-capping in place: x = cap * tanh(x / cap) (Gemma 2's final logits). x: [len] f32;
/// cap finite and > 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Softcap {
    pub x: BufId,
    pub len: usize,
    pub cap: f32,
}

/// An orthonormal Walsh-Hadamard rotation, in place, of every run of `size` values of x: [len]
/// f32 (len a multiple of size, size a power of two): y = H x / sqrt(size), H[i][j] =
/// (-1)^popcount(i & j). H / sqrt(size) is symmetric and its own inverse, and leaves dot
/// products as they are; a quantized KV cache stores K and V rotated so (a head's outlier
/// channels spread over all of its values before they share a block's scale), the queries are
/// rotated the same way and the attention output back (see `quant::kv`).
///
/// The reference computes the butterflies of the fast transform, stage by stage (pairs i and
/// i + h for h = 1, 2, 4, ...: a + b, a - b), then scales by 1 / sqrt(size) in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Hadamard {
    pub x: BufId,
    pub len: usize,
    pub size: usize,
}

/// Residual add, in place: x += y. x, y: [len] f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Add {
    pub x: BufId,
    pub y: BufId,
    pub len: usize,
}

/// Index of the largest value of each row; the lowest index wins ties; NaN never wins.
/// x: [n, width] f32; out: [n] u32.
#[derive(Debug, Clone, PartialEq)]
pub struct Argmax {
    pub x: BufId,
    pub out: BufId,
    pub n: usize,
    pub width: usize,
}

/// One row's sampling parameters, as the Sample op reads them: five 32-bit words.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SampleRow {
    /// >= 0; 0 is greedy: the row's argmax (lowest index wins ties, NaN never wins).
    pub temperature: f32,
    /// 0 keeps all.
    pub top_k: u32,
    /// In (0, 1]; 1 keeps all.
    pub top_p: f32,
    /// In [0, 1]; 0 keeps all.
    pub min_p: f32,
    /// In [0, 1): the row's own random draw (from its request's generator, so a seeded
    /// request draws the same tokens whatever it is batched with).
    pub uniform: f32,
}

impl SampleRow {
    /// u32 words per row in the params buffer.
    pub const WORDS: usize = 5;

    pub fn greedy() -> Self {
        SampleRow { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.0 }
    }

    /// The checks every backend makes before using a row (NaN fails every one).
    pub fn check(&self) -> crate::Result<()> {
        let ok = self.temperature >= 0.0
            && self.temperature.is_finite()
            && self.top_p > 0.0
            && self.top_p <= 1.0
            && (0.0..=1.0).contains(&self.min_p)
            && (0.0..1.0).contains(&self.uniform);
        if ok {
            Ok(())
        } else {
            Err(crate::Error::InvalidParameter(format!(
                "sample: parameters out of range: {self:?}"
            )))
        }
    }

    /// Rows from the words of a params buffer (as uploaded, little-endian u32).
    pub fn from_words(words: &[u32]) -> Vec<SampleRow> {
        words
            .chunks_exact(Self::WORDS)
            .map(|w| bytemuck::pod_read_unaligned(bytemuck::cast_slice(w)))
            .collect()
    }

    /// The params buffer's words for `rows`.
    pub fn to_words(rows: &[SampleRow]) -> Vec<u32> {
        bytemuck::cast_slice(rows).to_vec()
    }
}

/// Draws one token per row from the logits, each row with its own parameters, so that
/// sampling, like greedy decoding, reads back a token id rather than a vocabulary of logits.
/// Semantics: [`crate::sampling::sample_row`] (temperature 0: argmax).
/// x: [n, width] f32; params: [n * SampleRow::WORDS] u32 (the rows' [`SampleRow`]s);
/// out: [n] u32.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub x: BufId,
    pub params: BufId,
    pub out: BufId,
    pub n: usize,
    pub width: usize,
}

/// Forbids the tokens a row's constraint rejects (structured output) before sampling: for each
/// listed row, x[rows[i], j] = -inf where bit j % 32 of mask[i * words + j / 32] is clear
/// (words = width.div_ceil(32)); set bits and unlisted rows are left exactly as they were, so a
/// row without a constraint keeps its bits whatever else is masked.
/// x: [x_rows, width] f32; rows: [n] u32, each < x_rows; mask: [n * words] u32.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskLogits {
    pub x: BufId,
    pub rows: BufId,
    pub mask: BufId,
    pub n: usize,
    pub x_rows: usize,
    pub width: usize,
}

impl MaskLogits {
    /// u32 words of one row's mask.
    pub fn words(&self) -> usize {
        self.width.div_ceil(32)
    }
}

/// dst[dst_row + i] = src[src_row + i] for i in 0..n_rows. src, dst: [.., width] f32.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyRows {
    pub src: BufId,
    pub dst: BufId,
    pub src_row: usize,
    pub dst_row: usize,
    pub n_rows: usize,
    pub width: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Embed(Embed),
    RmsNorm(RmsNorm),
    Matmul(Matmul),
    Rope(Rope),
    KvWrite(KvWrite),
    Attention(Attention),
    Swiglu(Swiglu),
    Geglu(Geglu),
    Softcap(Softcap),
    Hadamard(Hadamard),
    MoeRoute(MoeRoute),
    MoeMatmul(MoeMatmul),
    MoeSum(MoeSum),
    Add(Add),
    Argmax(Argmax),
    Sample(Sample),
    MaskLogits(MaskLogits),
    CopyRows(CopyRows),
    LoraShrink(LoraShrink),
    LoraExpand(LoraExpand),
}

impl Op {
    /// The op's name, shared by its WGSL file, CUDA file, CPU function and test case.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Embed(_) => "embed",
            Op::RmsNorm(_) => "rms_norm",
            Op::Matmul(_) => "matmul",
            Op::Rope(_) => "rope",
            Op::KvWrite(_) => "kv_write",
            Op::Attention(a) if a.n > 0 && a.decode_rows == a.n => "attention_decode",
            Op::Attention(_) => "attention_prefill",
            Op::Swiglu(_) => "swiglu",
            Op::Geglu(_) => "geglu",
            Op::Softcap(_) => "softcap",
            Op::Hadamard(_) => "hadamard",
            Op::MoeRoute(_) => "moe_route",
            Op::MoeMatmul(_) => "moe_matmul",
            Op::MoeSum(_) => "moe_sum",
            Op::Add(_) => "add",
            Op::Argmax(_) => "argmax",
            Op::Sample(_) => "sample",
            Op::MaskLogits(_) => "mask_logits",
            Op::CopyRows(_) => "copy_rows",
            Op::LoraShrink(_) => "lora_shrink",
            Op::LoraExpand(_) => "lora_expand",
        }
    }
}

/// The precision class of a backend's arithmetic for an op: what its conformance tolerance is
/// set from (per op, dtype and class, never per backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 products and sums (the reference's class, reordered and fused).
    F32,
    /// Products of bf16-rounded operands summed in f32, as tensor cores compute them: the
    /// activations (and dequantized weights) are rounded to bf16 first.
    Bf16Products,
    /// Integer products of a block's weights with the activation rounded to 16 bits per block
    /// of 32 (x ~ s * q, q in -32767..=32767, s = max |x| / 32767): each element within 2^-16
    /// of its block's largest. The browser's CPU fallback computes Q8_0/Q4 decode rows so.
    I16Activations,
}
