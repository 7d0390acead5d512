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
    /// reads one row, unless the table is also the output head (tied), which reads it whole;
    /// and of each stack of experts, the `top_k` of `experts` the token is routed to.
    pub fn bytes_per_token(&self, top_k: usize) -> usize {
        let size = |w: &Weight| w.dtype.storage_bytes(w.rows * w.cols);
        let e = &self.embed;
        let mut bytes = self.bytes;
        if e.buf != self.lm_head.buf {
            bytes = bytes - size(e) + e.dtype.storage_bytes(e.cols);
        }
        for l in &self.layers {
            if let Mlp::Experts { router, gate, up, down } = &l.mlp {
                let experts = router.rows.max(1);
                for w in [gate, up, down] {
                    bytes = bytes - size(w) + size(w) / experts * top_k.min(experts);
                }
            }
        }
        bytes
    }
}
