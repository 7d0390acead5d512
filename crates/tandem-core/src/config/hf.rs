//! `config.json` of a Hugging Face checkpoint, in the layout of the Hub's files (`rope_theta`,
//! `rope_scaling`) and of transformers 5's (`rope_parameters`, `layer_types`).

use serde_json::Value;

use super::rope::longrope_attention_factor;
use super::{Activation, Arch, Features, ModelConfig, Moe, RopeScaling};
use crate::{Error, Result};

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

fn json_f32_list(v: &Value, key: &str) -> Result<Option<Vec<f32>>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(xs)) => xs
            .iter()
            .map(|x| {
                x.as_f64().map(|f| f as f32).ok_or_else(|| {
                    Error::BadConfig(format!("{key} must be a list of numbers, holds {x}"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(x) => Err(Error::BadConfig(format!("{key} must be a list of numbers, got {x}"))),
    }
}

/// One RoPE's parameters: the object of `rope_parameters` (transformers 5; per layer type
/// for Gemma 3) or of `rope_scaling` beside a top-level `rope_theta` (the Hub's files).
struct RopeParams<'a> {
    obj: Option<&'a Value>,
    top: &'a Value,
}

impl RopeParams<'_> {
    fn theta(&self) -> Result<f32> {
        let from_obj = match self.obj {
            Some(o) => json_f32(o, "rope_theta")?,
            None => None,
        };
        Ok(from_obj.or(json_f32(self.top, "rope_theta")?).unwrap_or(10000.0))
    }

    /// A field of the RoPE object, else of the top level (Phi-3 keeps
    /// `original_max_position_embeddings` and `partial_rotary_factor` there).
    fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.obj.map(|o| json_f32(o, key)).transpose()?.flatten() {
            Some(x) => Ok(Some(x)),
            None => json_f32(self.top, key),
        }
    }

    fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.obj.map(|o| json_usize(o, key)).transpose()?.flatten() {
            Some(x) => Ok(Some(x)),
            None => json_usize(self.top, key),
        }
    }

    fn scaling(&self, max_position: usize) -> Result<RopeScaling> {
        let Some(rs) = self.obj.filter(|v| !v.is_null()) else { return Ok(RopeScaling::None) };
        if !rs.is_object() {
            return Err(Error::BadConfig(format!(
                "rope_scaling must be an object or null, got {rs}"
            )));
        }
        // transformers renamed "type" to "rope_type"; files in the wild carry either.
        let kind = rs
            .get("rope_type")
            .or_else(|| rs.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let need = |k: &str| -> Result<f32> {
            json_f32(rs, k)?.ok_or_else(|| Error::BadConfig(format!("rope_scaling.{k} missing")))
        };
        let original = || -> Result<usize> {
            self.get_usize("original_max_position_embeddings")?.ok_or_else(|| {
                Error::BadConfig("rope_scaling.original_max_position_embeddings missing".into())
            })
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: need("factor")? }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position: original()?,
            }),
            // "su" is LongRoPE's name in the first Phi-3 files.
            "longrope" | "su" => {
                let list = |k: &str| -> Result<Vec<f32>> {
                    json_f32_list(rs, k)?
                        .ok_or_else(|| Error::BadConfig(format!("rope_scaling.{k} missing")))
                };
                let original = original()?;
                let attention_factor = match json_f32(rs, "attention_factor")? {
                    Some(a) => a,
                    None => longrope_attention_factor(max_position, original),
                };
                Ok(RopeScaling::LongRope {
                    short: list("short_factor")?,
                    long: list("long_factor")?,
                    original_max_position: original,
                    attention_factor,
                })
            }
            other => Err(Error::BadConfig(format!(
                "rope_scaling type '{other}' is not supported (tandem supports null, linear, llama3 and longrope)"
            ))),
        }
    }
}

/// The global and (Gemma 3) local RoPE parameters.
fn rope_params(v: &Value) -> Result<(RopeParams<'_>, Option<RopeParams<'_>>)> {
    let Some(rp) = v.get("rope_parameters").filter(|x| !x.is_null()) else {
        let global = RopeParams { obj: v.get("rope_scaling"), top: v };
        return Ok((global, None));
    };
    if !rp.is_object() {
        return Err(Error::BadConfig(format!("rope_parameters must be an object, got {rp}")));
    }
    match (rp.get("full_attention"), rp.get("sliding_attention")) {
        (Some(full), local) => Ok((
            RopeParams { obj: Some(full), top: v },
            local.map(|l| RopeParams { obj: Some(l), top: v }),
        )),
        (None, _) => Ok((RopeParams { obj: Some(rp), top: v }, None)),
    }
}

/// Which layers slide: `layer_types` when given, else each family's rule.
fn sliding_layers(v: &Value, arch: Arch, n_layers: usize) -> Result<Vec<bool>> {
    if let Some(types) = v.get("layer_types").filter(|x| !x.is_null()) {
        let types = types
            .as_array()
            .ok_or_else(|| Error::BadConfig(format!("layer_types must be a list, got {types}")))?;
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(Error::BadConfig(format!(
                    "layer_types holds {t}; tandem knows sliding_attention and full_attention"
                ))),
            })
            .collect();
    }
    Ok(match arch {
        Arch::Gemma2 => (0..n_layers).map(|l| l % 2 == 0).collect(),
        Arch::Gemma3 => {
            let pattern = json_usize(v, "sliding_window_pattern")?
                .or(json_usize(v, "_sliding_window_pattern")?)
                .unwrap_or(6)
                .max(1);
            (0..n_layers).map(|l| (l + 1) % pattern != 0).collect()
        }
        Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe => {
            let on = json_bool(v, "use_sliding_window")?.unwrap_or(false);
            let from = json_usize(v, "max_window_layers")?.unwrap_or(0);
            (0..n_layers).map(|l| on && l >= from).collect()
        }
        Arch::Llama => vec![false; n_layers],
        Arch::Mistral | Arch::Mixtral | Arch::Phi3 => vec![true; n_layers],
    })
}

/// A soft-cap: null or absent is none (0); a number must be positive (0 would divide by 0).
fn softcap(v: &Value, key: &str) -> Result<f32> {
    match json_f32(v, key)? {
        None => Ok(0.0),
        Some(c) if c.is_finite() && c > 0.0 => Ok(c),
        Some(c) => Err(Error::BadConfig(format!("{key} = {c} must be a positive number or null"))),
    }
}

fn activation(v: &Value) -> Result<Activation> {
    let name = v
        .get("hidden_activation")
        .or_else(|| v.get("hidden_act"))
        .and_then(Value::as_str)
        .unwrap_or("silu");
    match name {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu_pytorch_tanh" | "gelu_tanh" => Ok(Activation::GeluTanh),
        other => Err(Error::BadConfig(format!(
            "hidden_act '{other}' is not supported (tandem supports silu and gelu_pytorch_tanh)"
        ))),
    }
}

fn moe(v: &Value, arch: Arch, n_layers: usize, ffn_dim: usize) -> Result<Option<Moe>> {
    let experts = || -> Result<usize> {
        json_usize(v, "num_local_experts")?
            .or(json_usize(v, "num_experts")?)
            .ok_or_else(|| Error::BadConfig("missing num_local_experts / num_experts".into()))
    };
    let top_k = || json_req_usize(v, "num_experts_per_tok");
    Ok(match arch {
        Arch::Mixtral => Some(Moe {
            experts: experts()?,
            top_k: top_k()?,
            norm_topk: true,
            ffn_dim,
            dense_layers: vec![],
        }),
        Arch::Qwen3Moe => {
            let step = json_usize(v, "decoder_sparse_step")?.unwrap_or(1).max(1);
            let mut dense: Vec<usize> = match v.get("mlp_only_layers") {
                None | Some(Value::Null) => vec![],
                Some(Value::Array(ls)) => ls
                    .iter()
                    .map(|l| {
                        l.as_u64().map(|l| l as usize).ok_or_else(|| {
                            Error::BadConfig(format!("mlp_only_layers holds {l}, not a layer"))
                        })
                    })
                    .collect::<Result<_>>()?,
                Some(x) => {
                    return Err(Error::BadConfig(format!(
                        "mlp_only_layers must be a list, got {x}"
                    )))
                }
            };
            dense.extend((0..n_layers).filter(|l| (l + 1) % step != 0));
            dense.sort_unstable();
            dense.dedup();
            Some(Moe {
                experts: experts()?,
                top_k: top_k()?,
                norm_topk: json_bool(v, "norm_topk_prob")?.unwrap_or(false),
                ffn_dim: json_req_usize(v, "moe_intermediate_size")?,
                dense_layers: dense,
            })
        }
        _ => None,
    })
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
            None if n_heads > 0 && !dim.is_multiple_of(n_heads) => {
                return Err(Error::BadConfig(format!(
                    "num_attention_heads = {n_heads} does not divide hidden_size = {dim} (and no head_dim is given)"
                )))
            }
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
        let n_layers = super::check_layers(json_req_usize(&v, "num_hidden_layers")?)?;
        let ffn_dim = json_req_usize(&v, "intermediate_size")?;
        let max_position = json_req_usize(&v, "max_position_embeddings")?;
        let (global, local) = rope_params(&v)?;
        let gemma = arch.is_gemma();
        let features = Features {
            act: activation(&v)?,
            norm_plus_one: gemma,
            post_norms: gemma,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3),
            embed_scale: if gemma { (dim as f64).sqrt() as f32 } else { 1.0 },
            query_pre_attn_scalar: if gemma {
                json_f32(&v, "query_pre_attn_scalar")?
            } else {
                None
            },
            attn_softcap: softcap(&v, "attn_logit_softcapping")?,
            final_softcap: softcap(&v, "final_logit_softcapping")?,
            sliding_window: json_usize(&v, "sliding_window")?.unwrap_or(0),
            sliding_layers: sliding_layers(&v, arch, n_layers)?,
            local_rope_theta: match &local {
                Some(l) => Some(l.theta()?),
                None if arch == Arch::Gemma3 => {
                    Some(json_f32(&v, "rope_local_base_freq")?.unwrap_or(10000.0))
                }
                None => None,
            },
            partial_rotary: global.get_f32("partial_rotary_factor")?.unwrap_or(1.0),
            fused_projections: arch == Arch::Phi3,
            moe: moe(&v, arch, n_layers, ffn_dim)?,
        };
        let features = Features {
            sliding_window: if features.sliding_layers.iter().any(|&s| s) {
                features.sliding_window
            } else {
                0
            },
            ..features
        };
        let cfg = ModelConfig {
            arch,
            dim,
            n_layers,
            n_heads,
            n_kv_heads: json_usize(&v, "num_key_value_heads")?.unwrap_or(n_heads),
            head_dim,
            ffn_dim,
            vocab_size: json_req_usize(&v, "vocab_size")?,
            max_position,
            rope_theta: global.theta()?,
            rope_scaling: global.scaling(max_position)?,
            rms_norm_eps: json_f32(&v, "rms_norm_eps")?
                .ok_or_else(|| Error::BadConfig("missing rms_norm_eps".into()))?,
            tie_embeddings: json_bool(&v, "tie_word_embeddings")?.unwrap_or(gemma),
            qkv_bias: arch == Arch::Qwen2 || json_bool(&v, "attention_bias")?.unwrap_or(false),
            bos_token_id,
            eos_token_ids,
            features,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
