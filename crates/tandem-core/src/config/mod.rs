//! Model hyper-parameters, read from HF `config.json` ([`hf`]) or GGUF metadata ([`gguf`]).
//!
//! A model is Llama's decoder loop plus a small description of how its family departs from
//! it ([`Features`]): the norm's placement and offset, the MLP's activation, q/k norms,
//! soft-caps, each layer's attention window and RoPE, partial rotary, experts. The forward
//! pass reads that description; there is no forward pass per family.

mod gguf;
mod hf;
mod rope;

pub use rope::RopeScaling;

use crate::{Error, Result};

/// The model families tandem runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Mixtral,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Gemma2,
    Gemma3,
    Phi3,
}

impl Arch {
    /// From an HF `architectures` entry, `model_type`, or GGUF `general.architecture`.
    pub fn from_name(name: &str) -> Result<Arch> {
        Ok(match name {
            "LlamaForCausalLM" | "llama" => Arch::Llama,
            "MistralForCausalLM" | "mistral" => Arch::Mistral,
            "MixtralForCausalLM" | "mixtral" => Arch::Mixtral,
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            "Qwen3ForCausalLM" | "qwen3" => Arch::Qwen3,
            "Qwen3MoeForCausalLM" | "qwen3_moe" | "qwen3moe" => Arch::Qwen3Moe,
            "Gemma2ForCausalLM" | "gemma2" => Arch::Gemma2,
            "Gemma3ForCausalLM" | "gemma3_text" | "gemma3" => Arch::Gemma3,
            "Phi3ForCausalLM" | "phi3" => Arch::Phi3,
            other => return Err(Error::UnknownArchitecture(other.to_string())),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Mixtral => "mixtral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3_moe",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }

    fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }
}

/// The gated MLP's activation: out = act(gate) * up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh` (Gemma).
    GeluTanh,
}

/// A mixture-of-experts MLP: each token's `top_k` of `experts` experts, each a gated MLP of
/// width `ffn_dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct Moe {
    pub experts: usize,
    pub top_k: usize,
    /// The chosen experts' weights renormalized to sum to 1 (Mixtral; Qwen3-MoE's
    /// `norm_topk_prob`).
    pub norm_topk: bool,
    pub ffn_dim: usize,
    /// Layers that keep a dense MLP of the model's `ffn_dim` (Qwen3-MoE's `mlp_only_layers`
    /// and `decoder_sparse_step`).
    pub dense_layers: Vec<usize>,
}

/// How a family's decoder layer departs from Llama's. `Features::default()` is Llama.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub act: Activation,
    /// RMSNorm scales by (1 + weight) (Gemma): folded into the weights as they load.
    pub norm_plus_one: bool,
    /// RMSNorm of the attention and MLP outputs before each residual add (Gemma 2, 3).
    pub post_norms: bool,
    /// RMSNorm of each q and k head (weight [head_dim]) before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Embeddings times this (Gemma: sqrt(dim)); 1 otherwise.
    pub embed_scale: f32,
    /// The attention scale is 1/sqrt(this) (Gemma's `query_pre_attn_scalar`); `None`: head_dim.
    pub query_pre_attn_scalar: Option<f32>,
    /// Attention scores' and final logits' soft-caps (Gemma 2); 0 = none.
    pub attn_softcap: f32,
    pub final_softcap: f32,
    /// The sliding layers' window; 0 = no layer slides.
    pub sliding_window: usize,
    /// Which layers slide (empty: none).
    pub sliding_layers: Vec<bool>,
    /// The sliding layers' RoPE base, without scaling (Gemma 3); `None`: the model's.
    pub local_rope_theta: Option<f32>,
    /// The rotated fraction of each head (Phi-3 / Phi-4-mini's `partial_rotary_factor`).
    pub partial_rotary: f32,
    /// q, k and v as one `qkv_proj`, gate and up as one `gate_up_proj` in HF files (Phi-3);
    /// split as they load.
    pub fused_projections: bool,
    pub moe: Option<Moe>,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            act: Activation::Silu,
            norm_plus_one: false,
            post_norms: false,
            qk_norm: false,
            embed_scale: 1.0,
            query_pre_attn_scalar: None,
            attn_softcap: 0.0,
            final_softcap: 0.0,
            sliding_window: 0,
            sliding_layers: vec![],
            local_rope_theta: None,
            partial_rotary: 1.0,
            fused_projections: false,
            moe: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Residual stream width.
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Gated MLP inner width (of the dense layers).
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_position: usize,
    /// RoPE of the global layers (all layers but a Gemma 3's sliding ones).
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rms_norm_eps: f32,
    /// The output head reuses the token embedding table.
    pub tie_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub features: Features,
}

/// One layer's attention: its window (0: the whole context) and RoPE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerAttention {
    pub window: usize,
    /// Uses the local RoPE ([`Features::local_rope_theta`]) rather than the global one.
    pub local_rope: bool,
}

impl ModelConfig {
    /// Bytes of KV cache per token in `dtype`: 2 (K and V) x layers x one cache row of
    /// kv_heads x head_dim values (with their block scales for q8_0 and q4_0, head scales for
    /// fp8).
    pub fn kv_bytes_per_token(&self, dtypes: impl Into<crate::KvDtypes>) -> usize {
        self.n_layers * dtypes.into().row_bytes(self.n_kv_heads, self.head_dim)
    }

    /// Rotated elements of each head (even; head_dim unless rotary is partial).
    pub fn rot_dim(&self) -> usize {
        let r = (self.head_dim as f64 * self.features.partial_rotary as f64) as usize;
        r - r % 2
    }

    /// The attention scores' scale.
    pub fn attn_scale(&self) -> f32 {
        let d = self.features.query_pre_attn_scalar.unwrap_or(self.head_dim as f32);
        (d as f64).powf(-0.5) as f32
    }

    /// Layer `l`'s attention window and RoPE.
    pub fn layer_attention(&self, l: usize) -> LayerAttention {
        let f = &self.features;
        let slides = f.sliding_window > 0 && f.sliding_layers.get(l).copied().unwrap_or(false);
        LayerAttention {
            window: if slides { f.sliding_window } else { 0 },
            local_rope: slides && f.local_rope_theta.is_some(),
        }
    }

    /// The window every layer slides over, when all do (Mistral): then no query reads a KV
    /// block behind it, and the pool takes such blocks back. 0 when any layer reads the whole
    /// context (Gemma 2/3's global layers) or none slides.
    pub fn kv_window(&self) -> usize {
        let w = self.features.sliding_window;
        let all =
            self.n_layers > 0 && (0..self.n_layers).all(|l| self.layer_attention(l).window > 0);
        if all {
            w
        } else {
            0
        }
    }

    /// Whether layer `l` has experts (else a dense MLP).
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.features.moe.as_ref().is_some_and(|m| !m.dense_layers.contains(&l))
    }

    /// The family and the features it uses, for `tandem inspect` and logs.
    pub fn describe(&self) -> String {
        let f = &self.features;
        let mut parts = vec![self.arch.name().to_string()];
        if f.act == Activation::GeluTanh {
            parts.push("GELU-tanh MLP".into());
        }
        if f.qk_norm {
            parts.push("q/k norms".into());
        }
        if f.post_norms {
            parts.push("post-norms".into());
        }
        if f.attn_softcap > 0.0 || f.final_softcap > 0.0 {
            parts.push(format!("soft-caps {}/{}", f.attn_softcap, f.final_softcap));
        }
        if f.sliding_window > 0 {
            let n = (0..self.n_layers).filter(|&l| self.layer_attention(l).window > 0).count();
            parts.push(format!("window {} on {n}/{} layers", f.sliding_window, self.n_layers));
        }
        if let Some(t) = f.local_rope_theta {
            parts.push(format!("local RoPE base {t}"));
        }
        if self.rot_dim() != self.head_dim {
            parts.push(format!("partial rotary {}/{}", self.rot_dim(), self.head_dim));
        }
        if let Some(m) = &f.moe {
            parts.push(format!("{} experts, top {}", m.experts, m.top_k));
        }
        parts.join(", ")
    }
}

// Upper bounds well above any Llama-family model (405B: dim 16384, ffn 53248, 126 layers);
// anything larger is a corrupt or hostile file, not a model.
const MAX_DIM: usize = 1 << 16;
const MAX_FFN: usize = 1 << 18;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_DIM: usize = 1024;
const MAX_EXPERTS: usize = 1 << 12;
pub(crate) const MAX_VOCAB: usize = 1 << 22;
const MAX_POSITION: usize = 1 << 25;

/// The layer count, refused before anything is sized by it (per-layer lists are built while
/// parsing, ahead of [`ModelConfig::validate`]).
fn check_layers(n: usize) -> Result<usize> {
    if n == 0 || n > MAX_LAYERS {
        return Err(Error::BadConfig(format!(
            "n_layers (num_hidden_layers) = {n} is out of range (1..={MAX_LAYERS})"
        )));
    }
    Ok(n)
}

impl ModelConfig {
    /// Rejects configs no real model has, naming the field: zero or absurd sizes, heads that
    /// do not divide, odd head_dim (RoPE rotates pairs), bad floats, token ids outside the
    /// vocab, features that contradict each other.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadConfig(m));
        for (name, v, max) in [
            ("dim (hidden_size)", self.dim, MAX_DIM),
            ("n_layers (num_hidden_layers)", self.n_layers, MAX_LAYERS),
            ("n_heads (num_attention_heads)", self.n_heads, MAX_HEADS),
            ("n_kv_heads (num_key_value_heads)", self.n_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("ffn_dim (intermediate_size)", self.ffn_dim, MAX_FFN),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("max_position (max_position_embeddings)", self.max_position, MAX_POSITION),
        ] {
            if v == 0 || v > max {
                return bad(format!("{name} = {v} is out of range (1..={max})"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "n_kv_heads = {} does not divide n_heads = {}",
                self.n_kv_heads, self.n_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim = {} must be even (RoPE rotates pairs)", self.head_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta = {} must be positive", self.rope_theta));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return bad(format!("rms_norm_eps = {} must be in (0, 1)", self.rms_norm_eps));
        }
        self.validate_features()?;
        self.rope_scaling.validate(self.rot_dim())?;
        for (name, id) in self
            .bos_token_id
            .iter()
            .map(|i| ("bos_token_id", *i))
            .chain(self.eos_token_ids.iter().map(|i| ("eos_token_id", *i)))
        {
            if id as usize >= self.vocab_size {
                return bad(format!(
                    "{name} = {id} is outside the vocabulary ({})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    fn validate_features(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadConfig(m));
        let f = &self.features;
        let positive = |x: f32| x.is_finite() && x > 0.0;
        for (name, v) in [
            ("attn_logit_softcapping", f.attn_softcap),
            ("final_logit_softcapping", f.final_softcap),
        ] {
            if v != 0.0 && !positive(v) {
                return bad(format!("{name} = {v} must be a positive number (or null)"));
            }
        }
        if !positive(f.embed_scale) {
            return bad(format!("the embedding scale {} must be positive", f.embed_scale));
        }
        if let Some(s) = f.query_pre_attn_scalar.filter(|&s| !positive(s)) {
            return bad(format!("query_pre_attn_scalar = {s} must be positive"));
        }
        if let Some(t) = f.local_rope_theta.filter(|&t| !positive(t)) {
            return bad(format!("rope_local_base_freq = {t} must be positive"));
        }
        if !(f.partial_rotary > 0.0 && f.partial_rotary <= 1.0) || self.rot_dim() < 2 {
            return bad(format!(
                "partial_rotary_factor = {} must be in (0, 1] and rotate at least 2 of the {} head elements",
                f.partial_rotary, self.head_dim
            ));
        }
        if !f.sliding_layers.is_empty() && f.sliding_layers.len() != self.n_layers {
            return bad(format!(
                "layer_types lists {} layers, the model has {}",
                f.sliding_layers.len(),
                self.n_layers
            ));
        }
        if let Some(m) = &f.moe {
            if m.experts == 0 || m.experts > MAX_EXPERTS {
                return bad(format!(
                    "num_experts = {} is out of range (1..={MAX_EXPERTS})",
                    m.experts
                ));
            }
            if m.top_k == 0 || m.top_k > m.experts {
                return bad(format!(
                    "num_experts_per_tok = {} must be in 1..={} (the expert count)",
                    m.top_k, m.experts
                ));
            }
            if m.ffn_dim == 0 || m.ffn_dim > MAX_FFN {
                return bad(format!(
                    "the experts' intermediate size {} is out of range",
                    m.ffn_dim
                ));
            }
            if let Some(&l) = m.dense_layers.iter().find(|&&l| l >= self.n_layers) {
                return bad(format!("mlp_only_layers names layer {l} of {}", self.n_layers));
            }
        }
        Ok(())
    }
}
