//! The mixture-of-experts layer as three ops: route each token to its experts, run the
//! experts' matmuls over the tokens each was given, mix their outputs. A token's experts and
//! its bits never depend on the other tokens of the step: routing is per token, and every row
//! of an expert matmul is computed as that row alone would be (see [`MoeMatmul`]).

use crate::backend::BufId;
use crate::dtype::DType;

/// Routing: for each token, the `k` experts of highest router logit, and their weights.
///
/// The chosen experts are the k largest logits of the token in descending order (the lower
/// index first among equal logits), written to ids[t, 0..k]: the order of the softmax's
/// probabilities, decided on the logits themselves so no exp rounding can reorder them.
/// weights[t, j] = p[ids[t, j]] with p = softmax(logits[t]) in f32 (the maximum subtracted
/// first), divided by the sum of the k chosen (summed in slot order) when `norm` (Mixtral, and
/// Qwen3-MoE's `norm_topk_prob`). Logits are finite (a NaN row has no meaningful experts;
/// a backend still writes ids < experts for it).
/// logits: [n, experts] f32; ids: [n, k] u32; weights: [n, k] f32.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeRoute {
    pub logits: BufId,
    pub ids: BufId,
    pub weights: BufId,
    pub n: usize,
    pub experts: usize,
    /// 1..=experts.
    pub k: usize,
    pub norm: bool,
}

/// The experts' matmuls: out[t, j] = x_row(t, j) @ w[ids[t, j]]^T, where x_row(t, j) is x[t]
/// (`x_per_slot` false: the gate and up projections read the token's input) or x[t, j] (true:
/// the down projection reads slot j's hidden row).
/// x: [n, k] or [n, slots, k] f32; w: [experts, m, k] in `wdtype`, one weight of experts * m
/// rows (expert e's row r is row e * m + r; k a whole number of the dtype's blocks, so every
/// expert starts on a block); ids: [n, slots] u32, each < experts (a backend reports one that
/// is not as an error); out: [n, slots, m] f32.
///
/// Batch invariance: every row is computed exactly (bit for bit) as a one-row [`super::Matmul`]
/// decode row of the same expert matrix would compute it, whatever the other rows are; a
/// backend may share an expert's weight loads among the rows routed to it.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeMatmul {
    pub x: BufId,
    pub w: BufId,
    pub wdtype: DType,
    pub ids: BufId,
    pub out: BufId,
    pub n: usize,
    pub slots: usize,
    pub k: usize,
    pub m: usize,
    pub experts: usize,
    pub x_per_slot: bool,
}

impl MoeMatmul {
    /// The one-row product each row of the op is computed as (expert 0's matrix; the others
    /// have the same shape and dtype): what a backend picks its kernel and precision by.
    pub fn row_matmul(&self) -> super::Matmul {
        super::Matmul {
            x: self.x,
            w: self.w,
            wdtype: self.wdtype,
            bias: None,
            out: self.out,
            n: 1,
            k: self.k,
            m: self.m,
            decode_rows: 1,
        }
    }
}

/// The experts' outputs mixed: out[t] = sum over j in 0..slots, in that order from 0, of
/// weights[t, j] * y[t, j], in f32 (a backend may fuse each multiply with its add).
/// y: [n, slots, dim] f32; weights: [n, slots] f32; out: [n, dim] f32.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeSum {
    pub y: BufId,
    pub weights: BufId,
    pub out: BufId,
    pub n: usize,
    pub slots: usize,
    pub dim: usize,
}
