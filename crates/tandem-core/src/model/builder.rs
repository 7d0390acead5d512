//! Building a [`Model`] tensor by tensor: the one path every weight takes to the backend.
//!
//! The config says which tensors the model needs and their shapes. Tensors arrive in any
//! order, pulled from a [`TensorStore`] ([`Model::load`]) or pushed by a stream as a file
//! arrives (`loader::stream`); each is checked and uploaded at once and its host copy dropped,
//! so loading holds one tensor on the host, not the model.

use super::{Activations, LayerWeights, Model, ModelOptions, ModelStats, Weight, Weights};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::kv::{KvBlocks, KvCache};
use crate::loader::stream::TensorSink;
use crate::loader::{HostTensor, LoadAs, TensorStore};
use crate::{Error, Result};
use std::collections::HashMap;

struct Slot {
    name: String,
    shape: Vec<usize>,
    as_: LoadAs,
    weight: Option<Weight>,
}

pub struct ModelBuilder<B: Backend> {
    backend: B,
    config: ModelConfig,
    opts: ModelOptions,
    /// In upload order ([`crate::loader::names::model_tensors`]); `finish` takes them in it.
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    done: usize,
    bytes: usize,
}

/// How a weight matrix of `shape` loads when the options ask for `want`: the file's type, or
/// `want` resolved for the row length (K-quants fall back where rows are not whole blocks,
/// see [`crate::quant::matrix_dtype`]).
fn matrix_as(want: Option<DType>, shape: &[usize]) -> LoadAs {
    want.map_or(LoadAs::Native, |d| {
        LoadAs::Exactly(crate::quant::matrix_dtype(d, shape[shape.len() - 1]))
    })
}

impl<B: Backend> ModelBuilder<B> {
    /// A builder for `config` on `backend`; checks `opts` before any upload.
    pub fn new(backend: B, config: ModelConfig, opts: &ModelOptions) -> Result<Self> {
        if opts.max_step_tokens == 0 {
            return Err(Error::InvalidParameter("max_step_tokens must be at least 1".into()));
        }
        // Matrices as the options say; vectors (norms, biases) always f32.
        let want = opts.weight_dtype;
        let slots: Vec<Slot> = crate::loader::names::model_tensors(&config)
            .into_iter()
            .map(|(name, shape)| Slot {
                as_: if shape.len() == 2 { matrix_as(want, &shape) } else { LoadAs::F32 },
                name,
                shape,
                weight: None,
            })
            .collect();
        let index = slots.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        Ok(ModelBuilder { backend, config, opts: opts.clone(), slots, index, done: 0, bytes: 0 })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Changes config fields that no weight depends on (rope scaling, end-of-sequence ids), as
    /// files that arrive after the weights began may ask. Changing a shape is an error.
    pub fn update_config(&mut self, f: impl FnOnce(&mut ModelConfig) -> Result<()>) -> Result<()> {
        let mut c = self.config.clone();
        f(&mut c)?;
        let shape = |c: &ModelConfig| {
            (
                c.arch,
                c.dim,
                c.n_layers,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.ffn_dim,
                c.vocab_size,
                c.tie_embeddings,
                c.qkv_bias,
            )
        };
        if shape(&c) != shape(&self.config) {
            return Err(Error::BadConfig(
                "a later file changes the model's shape after its weights began loading".into(),
            ));
        }
        self.config = c;
        Ok(())
    }

    /// Every tensor the model needs, in upload order, with how to load it.
    pub fn wanted(&self) -> Vec<(String, LoadAs)> {
        self.slots.iter().map(|s| (s.name.clone(), s.as_)).collect()
    }

    /// How to load `name`, if the model needs it (also once it has arrived, so that a second
    /// copy reaches [`ModelBuilder::put`] and is refused there).
    pub fn wants(&self, name: &str) -> Option<LoadAs> {
        self.index.get(name).map(|&i| self.slots[i].as_)
    }

    /// Checks `t` against what the model expects and uploads it; the host copy is dropped.
    /// Tensors the model does not use are ignored.
    pub fn put(&mut self, name: &str, t: HostTensor) -> Result<()> {
        let Some(&i) = self.index.get(name) else { return Ok(()) };
        let slot = &self.slots[i];
        if slot.weight.is_some() {
            return Err(Error::bad_file(name, "the tensor was given twice (in two files?)"));
        }
        if t.shape != slot.shape {
            return Err(Error::TensorShape {
                name: name.into(),
                expected: slot.shape.clone(),
                got: t.shape,
            });
        }
        let numel: usize = slot.shape.iter().product();
        if t.bytes.len() != t.dtype.storage_bytes(numel) {
            return Err(Error::bad_file(
                name,
                format!("{} bytes for {numel} {} elements", t.bytes.len(), t.dtype),
            ));
        }
        let (rows, cols) =
            if slot.shape.len() == 2 { (slot.shape[0], slot.shape[1]) } else { (1, slot.shape[0]) };
        let buf = self.backend.alloc_weight(t.dtype, rows, cols)?;
        if let Err(e) = self.backend.write(buf, &t.bytes) {
            self.backend.free(buf);
            return Err(e);
        }
        self.bytes += t.bytes.len();
        self.done += 1;
        self.slots[i].weight = Some(Weight { buf, dtype: t.dtype, rows, cols });
        Ok(())
    }

    /// Pulls every tensor from `store`, calling `progress(done, total)` after each.
    pub fn load_from(
        &mut self,
        store: &dyn TensorStore,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        for (name, as_) in self.wanted() {
            let t = store.load(&name, as_)?;
            self.put(&name, t)?;
            progress(self.done, self.slots.len());
        }
        Ok(())
    }

    /// (tensors uploaded, tensors the model needs).
    pub fn progress(&self) -> (usize, usize) {
        (self.done, self.slots.len())
    }

    /// Bytes of weights uploaded so far.
    pub fn uploaded_bytes(&self) -> usize {
        self.bytes
    }

    /// The names of the tensors still missing.
    pub fn missing(&self) -> Vec<&str> {
        self.slots.iter().filter(|s| s.weight.is_none()).map(|s| s.name.as_str()).collect()
    }

    /// The model, once every tensor is in: KV pool and activations allocated as
    /// [`Model::load`] always has. Errors name every missing tensor.
    pub fn finish(self) -> Result<Model<B>> {
        let missing = self.missing();
        if !missing.is_empty() {
            let list = missing.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
            let what = if missing.len() == 1 { "tensor is" } else { "tensors are" };
            return Err(Error::bad_file(
                "model",
                format!("{} {what} missing from the model files: {list}", missing.len()),
            ));
        }
        let ModelBuilder { mut backend, config, opts, slots, bytes, .. } = self;
        let mut weights = slots.into_iter().map(|s| s.weight.expect("checked above"));
        let mut next = || weights.next().expect("one slot per weight, in this order");
        let embed = next();
        let mut layers = Vec::with_capacity(config.n_layers);
        for _ in 0..config.n_layers {
            let (attn_norm, wq, wk, wv) = (next(), next(), next(), next());
            let (bq, bk, bv) = if config.qkv_bias {
                (Some(next()), Some(next()), Some(next()))
            } else {
                (None, None, None)
            };
            let (wo, ffn_norm, w_gate, w_up, w_down) = (next(), next(), next(), next(), next());
            layers.push(LayerWeights {
                attn_norm,
                wq,
                wk,
                wv,
                bq,
                bk,
                bv,
                wo,
                ffn_norm,
                w_gate,
                w_up,
                w_down,
            });
        }
        let norm = next();
        let lm_head = if config.tie_embeddings { embed } else { next() };
        let weights = Weights { embed, layers, norm, lm_head, bytes };

        let context = opts.context.min(config.max_position).max(1);
        let blocks = opts.kv_blocks.unwrap_or(context.div_ceil(opts.block_size.max(1)));
        let kv = KvCache::new(&mut backend, &config, opts.kv_dtype, opts.block_size, blocks)?;
        let inv_freq = backend.alloc(DType::F32, config.head_dim / 2)?;
        backend.write(inv_freq, bytemuck::cast_slice(&config.rope_inv_freq()))?;
        let act =
            Activations::alloc(&mut backend, &config, opts.max_step_tokens.min(context).max(1))?;
        Ok(Model {
            config,
            stats: ModelStats::default(),
            backend,
            weights,
            blocks: Some(KvBlocks::new(kv.block_size, kv.num_blocks)),
            kv,
            inv_freq,
            act,
            context,
        })
    }
}

impl<B: Backend> TensorSink for ModelBuilder<B> {
    fn wants(&self, name: &str) -> Option<LoadAs> {
        ModelBuilder::wants(self, name)
    }
    fn put(&mut self, name: &str, tensor: HostTensor) -> Result<()> {
        ModelBuilder::put(self, name, tensor)
    }
}
