//! Model hyper-parameters, read from HF `config.json` or GGUF metadata.

use crate::loader::gguf::{GgufMetadata, GgufMetadataExt};
use crate::{Error, Result};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: usize,
    },
    /// Plain position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f32,
    },
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
    /// SwiGLU inner width.
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_position: usize,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rms_norm_eps: f32,
    /// The output head reuses the token embedding table.
    pub tie_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// RoPE inverse frequencies, [head_dim / 2], with rope_theta and rope_scaling folded in.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let base =
                    1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / self.head_dim as f64);
                let f = match &self.rope_scaling {
                    RopeScaling::None => base,
                    RopeScaling::Linear { factor } => base / *factor as f64,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position,
                    } => {
                        let (factor, low, high) =
                            (*factor as f64, *low_freq_factor as f64, *high_freq_factor as f64);
                        let old = *original_max_position as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / base;
                        if wavelen < old / high {
                            base
                        } else if wavelen > old / low {
                            base / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * base / factor + smooth * base
                        }
                    }
                };
                f as f32
            })
            .collect()
    }

    /// Bytes of KV cache per token: 2 (K and V) x layers x kv_heads x head_dim x element size.
    pub fn kv_bytes_per_token(&self, elem_bytes: usize) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * elem_bytes
    }
}

// Upper bounds well above any Llama-family model (405B: dim 16384, ffn 53248, 126 layers);
// anything larger is a corrupt or hostile file, not a model.
const MAX_DIM: usize = 1 << 16;
const MAX_FFN: usize = 1 << 18;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_DIM: usize = 1024;
pub(crate) const MAX_VOCAB: usize = 1 << 22;
const MAX_POSITION: usize = 1 << 25;

impl Arch {
    /// From an HF `architectures` entry, `model_type`, or GGUF `general.architecture`.
    pub fn from_name(name: &str) -> Result<Arch> {
        match name {
            "LlamaForCausalLM" | "llama" => Ok(Arch::Llama),
            "MistralForCausalLM" | "mistral" => Ok(Arch::Mistral),
            "Qwen2ForCausalLM" | "qwen2" => Ok(Arch::Qwen2),
            other => Err(Error::UnknownArchitecture(other.to_string())),
        }
    }
}

fn json_usize(v: &Value, key: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().and_then(|n| usize::try_from(n).ok()).map(Some).ok_or_else(|| {
            Error::BadConfig(format!("{key} must be a non-negative integer, got {x}"))
        }),
    }
}

fn json_req_usize(v: &Value, key: &str) -> Result<usize> {
    json_usize(v, key)?.ok_or_else(|| Error::BadConfig(format!("missing {key}")))
}

fn json_f32(v: &Value, key: &str) -> Result<Option<f32>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(|f| Some(f as f32))
            .ok_or_else(|| Error::BadConfig(format!("{key} must be a number, got {x}"))),
    }
}

fn json_bool(v: &Value, key: &str) -> Result<Option<bool>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(x) => Err(Error::BadConfig(format!("{key} must be true or false, got {x}"))),
    }
}

fn token_id(x: &Value, key: &str) -> Result<u32> {
    x.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Error::BadConfig(format!("{key} must be a token id, got {x}")))
}

fn rope_scaling_from_json(v: Option<&Value>) -> Result<RopeScaling> {
    let Some(rs) = v.filter(|v| !v.is_null()) else { return Ok(RopeScaling::None) };
    if !rs.is_object() {
        return Err(Error::BadConfig(format!("rope_scaling must be an object or null, got {rs}")));
    }
    // transformers renamed "type" to "rope_type"; files in the wild carry either.
    let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("");
    let factor = || -> Result<f32> {
        json_f32(rs, "factor")?
            .ok_or_else(|| Error::BadConfig("rope_scaling.factor missing".into()))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
        "llama3" => {
            let need = |k: &str| -> Result<f32> {
                json_f32(rs, k)?
                    .ok_or_else(|| Error::BadConfig(format!("rope_scaling.{k} missing")))
            };
            Ok(RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position: json_usize(rs, "original_max_position_embeddings")?
                    .ok_or_else(|| {
                        Error::BadConfig(
                            "rope_scaling.original_max_position_embeddings missing".into(),
                        )
                    })?,
            })
        }
        other => Err(Error::BadConfig(format!(
            "rope_scaling type '{other}' is not supported (tandem supports null, linear and llama3)"
        ))),
    }
}

impl ModelConfig {
    /// Parses an HF `config.json`. The result is validated.
    pub fn from_hf_json(text: &str) -> Result<ModelConfig> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::BadConfig(format!("config.json: {e}")))?;
        if !v.is_object() {
            return Err(Error::BadConfig("config.json is not a JSON object".into()));
        }
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| v.get("model_type").and_then(Value::as_str))
            .ok_or_else(|| {
                Error::BadConfig("config.json names no architectures / model_type".into())
            })?;
        let arch = Arch::from_name(arch_name)?;
        let dim = json_req_usize(&v, "hidden_size")?;
        let n_heads = json_req_usize(&v, "num_attention_heads")?;
        let head_dim = match json_usize(&v, "head_dim")? {
            Some(h) => h,
            None if n_heads > 0 => dim / n_heads,
            None => 0, // validate() reports the zero head count
        };
        let eos_token_ids = match v.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => {
                ids.iter().map(|x| token_id(x, "eos_token_id")).collect::<Result<_>>()?
            }
            Some(x) => vec![token_id(x, "eos_token_id")?],
        };
        let bos_token_id = match v.get("bos_token_id") {
            None | Some(Value::Null) => None,
            Some(x) => Some(token_id(x, "bos_token_id")?),
        };
        let cfg = ModelConfig {
            arch,
            dim,
            n_layers: json_req_usize(&v, "num_hidden_layers")?,
            n_heads,
            n_kv_heads: json_usize(&v, "num_key_value_heads")?.unwrap_or(n_heads),
            head_dim,
            ffn_dim: json_req_usize(&v, "intermediate_size")?,
            vocab_size: json_req_usize(&v, "vocab_size")?,
            max_position: json_req_usize(&v, "max_position_embeddings")?,
            rope_theta: json_f32(&v, "rope_theta")?.unwrap_or(10000.0),
            rope_scaling: rope_scaling_from_json(v.get("rope_scaling"))?,
            rms_norm_eps: json_f32(&v, "rms_norm_eps")?
                .ok_or_else(|| Error::BadConfig("missing rms_norm_eps".into()))?,
            tie_embeddings: json_bool(&v, "tie_word_embeddings")?.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || json_bool(&v, "attention_bias")?.unwrap_or(false),
            bos_token_id,
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`general.architecture`, `{arch}.*`, `tokenizer.ggml.*`).
    ///
    /// `tie_embeddings` comes out false: only the tensor directory knows whether `output.weight`
    /// exists ([`crate::loader::gguf::GgufFile::model_config`] fills it in). Assuming untied is
    /// the safe default: a missing `lm_head.weight` is then a clear error, not wrong output.
    pub fn from_gguf(meta: &GgufMetadata) -> Result<ModelConfig> {
        let arch_name = meta
            .get_str("general.architecture")
            .ok_or_else(|| Error::BadConfig("GGUF metadata has no general.architecture".into()))?;
        let arch = Arch::from_name(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            let full = key(k);
            meta.get_u64(&full).and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                Error::BadConfig(format!("GGUF key {full} missing or not an integer"))
            })
        };
        let opt = |k: &str| meta.get_u64(&key(k)).and_then(|n| usize::try_from(n).ok());
        let dim = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        let head_dim = match opt("attention.key_length") {
            Some(h) => h,
            None if n_heads > 0 => dim / n_heads,
            None => 0,
        };
        if let Some(vl) = opt("attention.value_length") {
            if vl != head_dim {
                return Err(Error::BadConfig(format!(
                    "{} = {vl} differs from the key length {head_dim}; tandem needs equal K and V head sizes",
                    key("attention.value_length")
                )));
            }
        }
        let vocab_size = match opt("vocab_size") {
            Some(n) => n,
            None => match meta.get("tokenizer.ggml.tokens") {
                Some(crate::loader::gguf::GgufValue::Array(a)) => a.len(),
                _ => {
                    return Err(Error::BadConfig(format!(
                        "GGUF has neither {} nor tokenizer.ggml.tokens",
                        key("vocab_size")
                    )))
                }
            },
        };
        let rope_scaling = match meta.get_str(&key("rope.scaling.type")) {
            None | Some("none") => match meta.get_f32(&key("rope.scale_linear")) {
                // Older converters wrote linear scaling under this key.
                Some(f) if f != 1.0 => RopeScaling::Linear { factor: f },
                _ => RopeScaling::None,
            },
            Some("linear") => RopeScaling::Linear {
                factor: meta.get_f32(&key("rope.scaling.factor")).ok_or_else(|| {
                    Error::BadConfig(format!("{} missing", key("rope.scaling.factor")))
                })?,
            },
            Some(other) => {
                return Err(Error::BadConfig(format!(
                    "{} '{other}' is not supported (tandem supports none and linear)",
                    key("rope.scaling.type")
                )))
            }
        };
        let token = |k: &str| meta.get_u64(k).and_then(|n| u32::try_from(n).ok());
        let mut eos_token_ids: Vec<u32> =
            token("tokenizer.ggml.eos_token_id").into_iter().collect();
        // llama.cpp also stops on end-of-turn; chat models set it apart from EOS.
        if let Some(eot) = token("tokenizer.ggml.eot_token_id") {
            if !eos_token_ids.contains(&eot) {
                eos_token_ids.push(eot);
            }
        }
        let cfg = ModelConfig {
            arch,
            dim,
            n_layers: req("block_count")?,
            n_heads,
            n_kv_heads: opt("attention.head_count_kv").unwrap_or(n_heads),
            head_dim,
            ffn_dim: req("feed_forward_length")?,
            vocab_size,
            max_position: req("context_length")?,
            rope_theta: meta.get_f32(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling,
            rms_norm_eps: meta.get_f32(&key("attention.layer_norm_rms_epsilon")).ok_or_else(
                || Error::BadConfig(format!("{} missing", key("attention.layer_norm_rms_epsilon"))),
            )?,
            tie_embeddings: false,
            qkv_bias: arch == Arch::Qwen2,
            bos_token_id: token("tokenizer.ggml.bos_token_id"),
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects configs no real model has, naming the field: zero or absurd sizes, heads that
    /// do not divide, odd head_dim (RoPE rotates pairs), bad floats, token ids outside the vocab.
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
        let positive = |x: f32| x.is_finite() && x > 0.0;
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } if positive(*factor) => {}
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } if positive(*factor)
                && positive(*low_freq_factor)
                && high_freq_factor > low_freq_factor
                && high_freq_factor.is_finite()
                && *original_max_position > 0 => {}
            other => {
                return bad(format!(
                    "rope_scaling {other:?} has a non-positive or inconsistent factor"
                ))
            }
        }
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
}

#[cfg(test)]
mod rope_tests {
    use super::*;

    fn llama3(scaling: RopeScaling) -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            dim: 4096,
            n_layers: 1,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            ffn_dim: 14336,
            vocab_size: 128256,
            max_position: 131072,
            rope_theta: 500000.0,
            rope_scaling: scaling,
            rms_norm_eps: 1e-5,
            tie_embeddings: false,
            qkv_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let plain = llama3(RopeScaling::None).rope_inv_freq();
        let scaled = llama3(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
        })
        .rope_inv_freq();
        assert_eq!(plain.len(), 64);
        assert_eq!(plain[0], 1.0);
        for (i, (&p, &s)) in plain.iter().zip(&scaled).enumerate() {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < 2048.0 {
                assert_eq!(s, p, "short wavelengths are untouched (i = {i})");
            } else if wavelen > 8192.0 {
                assert!(
                    (s - p / 8.0).abs() <= p * 1e-6,
                    "long wavelengths are divided by the factor (i = {i})"
                );
            } else {
                assert!(s < p && s > p / 8.0, "the band between blends smoothly (i = {i})");
            }
        }
        assert!(scaled.windows(2).all(|w| w[1] < w[0]), "frequencies stay ordered");
        let linear = llama3(RopeScaling::Linear { factor: 4.0 }).rope_inv_freq();
        assert!((linear[5] - plain[5] / 4.0).abs() < 1e-9);
    }
}
