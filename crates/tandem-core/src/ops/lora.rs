//! LoRA adapters applied unmerged, per row: for the rows of a step that carry an adapter, out
//! += B·(A·x), with each row's own adapter, as two ops over all such rows at once (the shrink
//! to the adapter's rank, then the expand back, added in place). The adapters live in pools
//! of `n_slots` slots ([slots, rank, k] for A, and B transposed, [slots, rank, m], the scale
//! folded into it, so the expand reads whole rows: an output is a sum down a column); an
//! adapter of a smaller rank fills its slot's first rows of both and leaves zeros after them,
//! which add nothing.
//!
//! Batch invariance: every row is computed exactly (bit for bit) as that row alone would be,
//! whatever the other rows and their adapters are: a backend may share an adapter's weight
//! loads among the rows that use it, never the arithmetic. Rows without an adapter are not
//! listed, so they are untouched.

use crate::backend::BufId;
use crate::dtype::DType;

/// t[i, j] = dot(x[rows[i]], a[slots[i], j]) for j in 0..rank, each in f32.
/// x: [x_rows, k] f32; a: [n_slots, rank, k] f32 or f16; rows, slots: [n] u32, each row <
/// x_rows and slot < n_slots (a backend reports any other as an error); t: [n, rank] f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraShrink {
    pub x: BufId,
    pub a: BufId,
    pub dtype: DType,
    pub rows: BufId,
    pub slots: BufId,
    pub t: BufId,
    pub n: usize,
    pub x_rows: usize,
    pub n_slots: usize,
    pub rank: usize,
    pub k: usize,
}

/// In place: out[rows[i]] += y with y[o] = sum over j ascending of t[i, j] * b[slots[i], j, o]
/// (the sum formed in f32 first, in that order, then added to out once).
/// t: [n, rank] f32; b: [n_slots, rank, m] (B transposed) f32 or f16; rows, slots: as
/// [`LoraShrink`], rows distinct; out: [out_rows, m] f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraExpand {
    pub t: BufId,
    pub b: BufId,
    pub dtype: DType,
    pub rows: BufId,
    pub slots: BufId,
    pub out: BufId,
    pub n: usize,
    pub out_rows: usize,
    pub n_slots: usize,
    pub rank: usize,
    pub m: usize,
}

/// The dtypes an adapter pool may hold.
pub fn lora_dtype(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16)
}
