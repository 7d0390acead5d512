//! A checkpoint's weights on the backend ([`super::ModelBuilder`] uploads them).

use crate::backend::BufId;
use crate::dtype::DType;

/// A tensor living on the backend.
#[derive(Debug, Clone, Copy)]
pub struct Weight {
    pub buf: BufId,
    pub dtype: DType,
    /// [rows, cols]; a vector is [1, len].
    pub rows: usize,
    pub cols: usize,
}

/// A layer's MLP: one gated MLP, or a router and its experts' stacked matrices ([experts *
/// rows, cols], expert e's rows e * rows..).
pub enum Mlp {
    Dense { gate: Weight, up: Weight, down: Weight },
    Experts { router: Weight, gate: Weight, up: Weight, down: Weight },
}

pub struct LayerWeights {
    pub attn_norm: Weight,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub bq: Option<Weight>,
    pub bk: Option<Weight>,
    pub bv: Option<Weight>,
    /// Per-head norms of q and k ([head_dim]), when the family has them.
    pub q_norm: Option<Weight>,
    pub k_norm: Option<Weight>,
    pub wo: Weight,
    /// The norm of the attention's output before the residual add (Gemma).
    pub attn_post_norm: Option<Weight>,
    pub ffn_norm: Weight,
    /// The norm of the MLP's output before the residual add (Gemma).
    pub ffn_post_norm: Option<Weight>,
    pub mlp: Mlp,
}

pub struct Weights {
    pub embed: Weight,
    pub layers: Vec<LayerWeights>,
    pub norm: Weight,
    /// The output head; the embedding table itself when tied.
    pub lm_head: Weight,
    /// Bytes of weights on the backend.
    pub bytes: usize,
}

impl Weights {
    /// Weight bytes one decoded token reads: everything but the embedding table, of which it
    /// reads one row, unless the table is also the output head (tied), which reads it whole.
    pub fn bytes_per_token(&self) -> usize {
        let e = &self.embed;
        if e.buf == self.lm_head.buf {
            self.bytes
        } else {
            self.bytes - e.dtype.storage_bytes(e.rows * e.cols) + e.dtype.storage_bytes(e.cols)
        }
    }
}
