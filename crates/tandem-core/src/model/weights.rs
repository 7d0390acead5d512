//! Uploading a Llama-family checkpoint to a backend, checking every tensor's shape first.

use crate::backend::{Backend, BufId};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::loader::{HostTensor, LoadAs, TensorStore};
use crate::{Error, Result};

/// A tensor living on the backend.
#[derive(Debug, Clone, Copy)]
pub struct Weight {
    pub buf: BufId,
    pub dtype: DType,
    /// [rows, cols]; a vector is [1, len].
    pub rows: usize,
    pub cols: usize,
}

pub struct LayerWeights {
    pub attn_norm: Weight,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub bq: Option<Weight>,
    pub bk: Option<Weight>,
    pub bv: Option<Weight>,
    pub wo: Weight,
    pub ffn_norm: Weight,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
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

/// Reads every tensor the model needs from `store`, converts matrices as `matrix_as` says
/// (vectors are always f32), and uploads them. `progress(done, total)` is called per tensor.
pub fn load_weights<B: Backend>(
    backend: &mut B,
    config: &ModelConfig,
    store: &dyn TensorStore,
    matrix_as: LoadAs,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Weights> {
    let c = config;
    let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let per_layer = 9 + if c.qkv_bias { 3 } else { 0 };
    let total = 2 + c.n_layers * per_layer + usize::from(!c.tie_embeddings);
    let mut loader = Uploader { backend, store, done: 0, total, bytes: 0, progress };

    let embed = loader.get("model.embed_tokens.weight", &[c.vocab_size, c.dim], matrix_as)?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = format!("model.layers.{l}");
        let bias = |loader: &mut Uploader<B>, name: &str, len: usize| -> Result<Option<Weight>> {
            if c.qkv_bias { loader.get(&format!("{p}.self_attn.{name}.bias"), &[len], LoadAs::F32).map(Some) } else { Ok(None) }
        };
        layers.push(LayerWeights {
            attn_norm: loader.get(&format!("{p}.input_layernorm.weight"), &[c.dim], LoadAs::F32)?,
            wq: loader.get(&format!("{p}.self_attn.q_proj.weight"), &[q_dim, c.dim], matrix_as)?,
            wk: loader.get(&format!("{p}.self_attn.k_proj.weight"), &[kv_dim, c.dim], matrix_as)?,
            wv: loader.get(&format!("{p}.self_attn.v_proj.weight"), &[kv_dim, c.dim], matrix_as)?,
            bq: bias(&mut loader, "q_proj", q_dim)?,
            bk: bias(&mut loader, "k_proj", kv_dim)?,
            bv: bias(&mut loader, "v_proj", kv_dim)?,
            wo: loader.get(&format!("{p}.self_attn.o_proj.weight"), &[c.dim, q_dim], matrix_as)?,
            ffn_norm: loader.get(&format!("{p}.post_attention_layernorm.weight"), &[c.dim], LoadAs::F32)?,
            w_gate: loader.get(&format!("{p}.mlp.gate_proj.weight"), &[c.ffn_dim, c.dim], matrix_as)?,
            w_up: loader.get(&format!("{p}.mlp.up_proj.weight"), &[c.ffn_dim, c.dim], matrix_as)?,
            w_down: loader.get(&format!("{p}.mlp.down_proj.weight"), &[c.dim, c.ffn_dim], matrix_as)?,
        });
    }
    let norm = loader.get("model.norm.weight", &[c.dim], LoadAs::F32)?;
    let lm_head = if c.tie_embeddings { embed } else { loader.get("lm_head.weight", &[c.vocab_size, c.dim], matrix_as)? };
    Ok(Weights { embed, layers, norm, lm_head, bytes: loader.bytes })
}

struct Uploader<'a, B: Backend> {
    backend: &'a mut B,
    store: &'a dyn TensorStore,
    done: usize,
    total: usize,
    bytes: usize,
    progress: &'a mut dyn FnMut(usize, usize),
}

impl<B: Backend> Uploader<'_, B> {
    fn get(&mut self, name: &str, shape: &[usize], as_: LoadAs) -> Result<Weight> {
        let t: HostTensor = self.store.load(name, as_)?;
        if t.shape != shape {
            return Err(Error::TensorShape { name: name.into(), expected: shape.to_vec(), got: t.shape });
        }
        let numel: usize = shape.iter().product();
        if t.bytes.len() != t.dtype.storage_bytes(numel) {
            return Err(Error::bad_file(name, format!("{} bytes for {numel} {} elements", t.bytes.len(), t.dtype)));
        }
        let (rows, cols) = if shape.len() == 2 { (shape[0], shape[1]) } else { (1, shape[0]) };
        let buf = self.backend.alloc_weight(t.dtype, rows, cols)?;
        self.backend.write(buf, &t.bytes)?;
        self.bytes += t.bytes.len();
        self.done += 1;
        (self.progress)(self.done, self.total);
        Ok(Weight { buf, dtype: t.dtype, rows, cols })
    }
}
