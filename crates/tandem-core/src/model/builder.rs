//! Building a [`Model`] tensor by tensor: the one path every weight takes to the backend.
//!
//! The config says which tensors the model needs and their shapes. Tensors arrive in any
//! order, pulled from a [`TensorStore`] ([`Model::load`]) or pushed by a stream as a file
//! arrives (`loader::stream`); each is checked and uploaded at once and its host copy dropped,
//! so loading holds one tensor on the host, not the model.

use super::{Activations, LayerWeights, Mlp, Model, ModelOptions, ModelStats, Weight, Weights};
use crate::backend::{Backend, BufId};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::kv::{KvBlocks, KvCache};
use crate::loader::names::Part;
use crate::loader::stream::TensorSink;
use crate::loader::{HostTensor, LoadAs, TensorStore};
use crate::{Error, Result};
use std::collections::HashMap;

struct Slot {
    name: String,
    shape: Vec<usize>,
    as_: LoadAs,
    weight: Option<Weight>,
    /// A stack of experts from one tensor per expert: the experts that arrived, kept on the
    /// host until all have (empty otherwise).
    experts: Vec<Option<HostTensor>>,
}

pub struct ModelBuilder<B: Backend> {
    backend: B,
    config: ModelConfig,
    opts: ModelOptions,
    /// In upload order ([`crate::loader::names::model_tensors`]); `finish` takes them by name.
    slots: Vec<Slot>,
    /// File tensor name -> the slots it fills, and how.
    uses: HashMap<String, Vec<(usize, Part)>>,
    /// The file tensor names in the order `load_from` pulls them.
    order: Vec<String>,
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

/// Whether a tensor of `got` shape holds a slot of `want` shape: the same, or a stack
/// [experts, rows, cols] for [experts * rows, cols].
fn shape_fits(want: &[usize], got: &[usize]) -> bool {
    want == got || (got.len() == 3 && want == [got[0] * got[1], got[2]])
}

impl<B: Backend> ModelBuilder<B> {
    /// A builder for `config` on `backend`; checks `opts` before any upload.
    pub fn new(backend: B, config: ModelConfig, opts: &ModelOptions) -> Result<Self> {
        if opts.max_step_tokens == 0 {
            return Err(Error::InvalidParameter("max_step_tokens must be at least 1".into()));
        }
        // Matrices as the options say; vectors (norms, biases) always f32.
        let want = opts.weight_dtype;
        let specs = crate::loader::names::model_tensors(&config);
        let mut uses: HashMap<String, Vec<(usize, Part)>> = HashMap::new();
        let mut order = vec![];
        let mut slots = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let experts = spec
                .sources
                .iter()
                .filter_map(|(_, p)| match p {
                    Part::Expert(e) => Some(e + 1),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            for (name, part) in spec.sources {
                let entry = uses.entry(name.clone()).or_default();
                if entry.is_empty() {
                    order.push(name);
                }
                entry.push((i, part));
            }
            slots.push(Slot {
                as_: if spec.shape.len() == 2 { matrix_as(want, &spec.shape) } else { LoadAs::F32 },
                name: spec.name,
                shape: spec.shape,
                weight: None,
                experts: (0..experts).map(|_| None).collect(),
            });
        }
        Ok(ModelBuilder {
            backend,
            config,
            opts: opts.clone(),
            slots,
            uses,
            order,
            done: 0,
            bytes: 0,
        })
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
                (c.arch, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim),
                (c.vocab_size, c.tie_embeddings, c.qkv_bias, c.features.moe.clone()),
                (c.features.qk_norm, c.features.post_norms, c.features.fused_projections),
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

    /// Every file tensor the model may use, in upload order, with how to load it (a model
    /// tensor may have several possible sources: a file holds one of them).
    pub fn wanted(&self) -> Vec<(String, LoadAs)> {
        self.order.iter().map(|n| (n.clone(), self.slots[self.uses[n][0].0].as_)).collect()
    }

    /// How to load file tensor `name`, if the model uses it (also once it has arrived, so
    /// that a second copy reaches [`ModelBuilder::put`] and is refused there).
    pub fn wants(&self, name: &str) -> Option<LoadAs> {
        self.uses.get(name).map(|u| self.slots[u[0].0].as_)
    }

    /// Checks file tensor `t` against what the model expects and uploads what it holds; the
    /// host copy is dropped (an expert is kept until its stack is whole). Tensors the model
    /// does not use are ignored.
    pub fn put(&mut self, name: &str, t: HostTensor) -> Result<()> {
        let Some(uses) = self.uses.get(name).cloned() else { return Ok(()) };
        let t = self.fold_norm(name, t);
        for (i, part) in uses {
            let slot = &self.slots[i];
            if slot.weight.is_some() {
                return Err(Error::bad_file(name, "the tensor was given twice (in two files?)"));
            }
            let want = slot.shape.clone();
            let cols = want[want.len() - 1];
            let wrong = |expected: Vec<usize>| Error::TensorShape {
                name: name.into(),
                expected,
                got: t.shape.clone(),
            };
            let numel: usize = t.shape.iter().product();
            if t.bytes.len() != t.dtype.storage_bytes(numel) {
                return Err(Error::bad_file(
                    name,
                    format!("{} bytes for {numel} {} elements", t.bytes.len(), t.dtype),
                ));
            }
            match part {
                Part::Whole => {
                    if !shape_fits(&want, &t.shape) {
                        return Err(wrong(want));
                    }
                    self.upload(i, t.dtype, &t.bytes)?;
                }
                Part::Rows { start, rows, of } => {
                    if t.shape != [of, cols] {
                        return Err(wrong(vec![of, cols]));
                    }
                    let bytes =
                        crate::quant::slice_rows(t.dtype, &t.bytes, numel, cols, start, rows)
                            .ok_or_else(|| {
                                Error::bad_file(
                                    name,
                                    format!("rows of {} cannot be cut out of {}", cols, t.dtype),
                                )
                            })?;
                    self.upload(i, t.dtype, &bytes)?;
                }
                Part::Expert(e) => {
                    let n = self.slots[i].experts.len();
                    let per = [want[0] / n.max(1), cols];
                    if t.shape != per {
                        return Err(wrong(per.to_vec()));
                    }
                    if self.slots[i].experts[e].replace(t.clone()).is_some() {
                        return Err(Error::bad_file(name, "the tensor was given twice"));
                    }
                    self.stack_if_whole(i, name)?;
                }
            }
        }
        Ok(())
    }

    /// Gemma's norms scale by (1 + weight): the 1 is added as the weight loads (HF files;
    /// llama.cpp's converter has added it already).
    fn fold_norm(&self, name: &str, mut t: HostTensor) -> HostTensor {
        let norm = name.ends_with("norm.weight");
        if self.config.features.norm_plus_one && norm && t.dtype == DType::F32 {
            let mut v: Vec<f32> = bytemuck::pod_collect_to_vec(&t.bytes);
            v.iter_mut().for_each(|w| *w += 1.0);
            t.bytes = bytemuck::cast_slice(&v).to_vec();
        }
        t
    }

    /// Uploads slot `i`'s stack of experts once every expert has arrived.
    fn stack_if_whole(&mut self, i: usize, name: &str) -> Result<()> {
        let slot = &self.slots[i];
        if slot.experts.iter().any(Option::is_none) {
            return Ok(());
        }
        let parts: Vec<&HostTensor> = slot.experts.iter().flatten().collect();
        let dtype = parts[0].dtype;
        if parts.iter().any(|p| p.dtype != dtype) {
            return Err(Error::bad_file(name, "the experts of one matrix have different types"));
        }
        let cols = slot.shape[1];
        let pieces: Vec<(&[u8], usize, usize, usize)> = parts
            .iter()
            .map(|p| {
                let n: usize = p.shape.iter().product();
                (p.bytes.as_slice(), n, 0, n)
            })
            .collect();
        let bytes = crate::quant::stack_rows(dtype, &pieces, cols).ok_or_else(|| {
            Error::bad_file(name, format!("experts of {dtype} rows of {cols} cannot be stacked"))
        })?;
        self.slots[i].experts.clear();
        self.upload(i, dtype, &bytes)
    }

    fn upload(&mut self, i: usize, dtype: DType, bytes: &[u8]) -> Result<()> {
        let shape = &self.slots[i].shape;
        let (rows, cols) = if shape.len() == 2 { (shape[0], shape[1]) } else { (1, shape[0]) };
        let buf = self.backend.alloc_weight(dtype, rows, cols)?;
        if let Err(e) = self.backend.write(buf, bytes) {
            self.backend.free(buf);
            return Err(e);
        }
        self.bytes += bytes.len();
        self.done += 1;
        self.slots[i].weight = Some(Weight { buf, dtype, rows, cols });
        Ok(())
    }

    /// Pulls every tensor the model uses from `store`, calling `progress(done, total)` after
    /// each upload.
    pub fn load_from(
        &mut self,
        store: &dyn TensorStore,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        let have: std::collections::HashSet<&str> =
            store.infos().iter().map(|t| t.name.as_str()).collect();
        for (name, as_) in self.wanted() {
            if !have.contains(name.as_str()) {
                continue;
            }
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
        // What arrived with the tensors (a GGUF's rope factors) is checked with the rest.
        self.config.validate()?;
        let ModelBuilder { mut backend, config, opts, slots, bytes, .. } = self;
        let mut by_name: HashMap<String, Weight> =
            slots.into_iter().map(|s| (s.name, s.weight.expect("checked above"))).collect();
        let mut take = |name: &str| by_name.remove(name);
        let need = |w: Option<Weight>| w.expect("model_tensors lists every weight the layer reads");
        let embed = need(take("model.embed_tokens.weight"));
        let mut layers = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            let mut t = |n: &str| take(&format!("model.layers.{l}.{n}"));
            let post_attn = t("post_attention_layernorm.weight");
            let pre_ffn = t("pre_feedforward_layernorm.weight");
            // Llama's post_attention_layernorm is its pre-MLP norm; Gemma has both.
            let (attn_post_norm, ffn_norm) = match pre_ffn {
                Some(pre) => (post_attn, pre),
                None => (None, need(post_attn)),
            };
            let mlp = match t("mlp.gate.weight") {
                Some(router) => Mlp::Experts {
                    router,
                    gate: need(t("mlp.experts.gate_proj.weight")),
                    up: need(t("mlp.experts.up_proj.weight")),
                    down: need(t("mlp.experts.down_proj.weight")),
                },
                None => Mlp::Dense {
                    gate: need(t("mlp.gate_proj.weight")),
                    up: need(t("mlp.up_proj.weight")),
                    down: need(t("mlp.down_proj.weight")),
                },
            };
            layers.push(LayerWeights {
                attn_norm: need(t("input_layernorm.weight")),
                wq: need(t("self_attn.q_proj.weight")),
                wk: need(t("self_attn.k_proj.weight")),
                wv: need(t("self_attn.v_proj.weight")),
                bq: t("self_attn.q_proj.bias"),
                bk: t("self_attn.k_proj.bias"),
                bv: t("self_attn.v_proj.bias"),
                q_norm: t("self_attn.q_norm.weight"),
                k_norm: t("self_attn.k_norm.weight"),
                wo: need(t("self_attn.o_proj.weight")),
                attn_post_norm,
                ffn_norm,
                ffn_post_norm: t("post_feedforward_layernorm.weight"),
                mlp,
            });
        }
        let norm = need(take("model.norm.weight"));
        let lm_head = if config.tie_embeddings { embed } else { need(take("lm_head.weight")) };
        let weights = Weights { embed, layers, norm, lm_head, bytes };

        let context = opts.context.min(config.max_position).max(1);
        let blocks = opts.kv_blocks.unwrap_or(context.div_ceil(opts.block_size.max(1)));
        let kv = KvCache::new(&mut backend, &config, opts.kv_dtypes, opts.block_size, blocks)?;
        let half = config.rot_dim() / 2;
        let mut rope = |local: bool| -> Result<BufId> {
            let buf = backend.alloc(DType::F32, half)?;
            backend.write(buf, bytemuck::cast_slice(&config.rope_inv_freq_for(local, context)))?;
            Ok(buf)
        };
        let inv_freq = rope(false)?;
        let inv_freq_local =
            if config.features.local_rope_theta.is_some() { Some(rope(true)?) } else { None };
        let act =
            Activations::alloc(&mut backend, &config, opts.max_step_tokens.min(context).max(1))?;
        let window = config.kv_window();
        Ok(Model {
            config,
            stats: ModelStats::default(),
            backend,
            weights,
            blocks: Some(KvBlocks::new(kv.block_size, kv.num_blocks, window)),
            kv,
            inv_freq,
            inv_freq_local,
            act,
            context,
            lora: None,
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
