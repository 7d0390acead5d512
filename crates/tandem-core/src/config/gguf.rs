//! GGUF metadata as llama.cpp's converter writes it (`general.architecture`, `{arch}.*`,
//! `tokenizer.ggml.*`). What llama.cpp decides in code rather than in the file (Gemma's
//! sliding pattern and local RoPE base, Gemma 2's attention scale) is decided here the same way.

use super::{Activation, Arch, Features, ModelConfig, Moe, RopeScaling};
use crate::loader::gguf::{GgufMetadata, GgufMetadataExt};
use crate::{Error, Result};

/// The features of `arch` from metadata keys (`key(k)` is `{arch}.{k}`).
fn features(
    meta: &GgufMetadata,
    arch: Arch,
    key: &dyn Fn(&str) -> String,
    n_layers: usize,
    head_dim: usize,
    dim: usize,
) -> Result<Features> {
    let opt = |k: &str| meta.get_u64(&key(k)).and_then(|n| usize::try_from(n).ok());
    let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
    // Written only when set, so a present key must be a positive cap.
    let softcap = |k: &str| -> Result<f32> {
        match meta.get_f32(&key(k)) {
            None => Ok(0.0),
            Some(c) if c.is_finite() && c > 0.0 => Ok(c),
            Some(c) => Err(Error::BadConfig(format!("{} = {c} must be positive", key(k)))),
        }
    };
    let window = opt("attention.sliding_window").unwrap_or(0);
    let sliding_layers = match arch {
        // llama.cpp's patterns: every other layer (Gemma 2), five of six (Gemma 3).
        Arch::Gemma2 => (0..n_layers).map(|l| l % 2 == 0).collect(),
        Arch::Gemma3 => {
            let p = opt("attention.sliding_window_pattern").unwrap_or(6).max(1);
            (0..n_layers).map(|l| (l + 1) % p != 0).collect()
        }
        _ => vec![window > 0; n_layers],
    };
    let rot_dim = opt("rope.dimension_count").unwrap_or(head_dim);
    let moe = match opt("expert_count").filter(|&n| n > 0) {
        None => None,
        Some(experts) => Some(Moe {
            experts,
            top_k: opt("expert_used_count").ok_or_else(|| {
                Error::BadConfig(format!("GGUF key {} missing", key("expert_used_count")))
            })?,
            // llama.cpp renormalizes the chosen experts' weights for both families.
            norm_topk: true,
            ffn_dim: match opt("expert_feed_forward_length") {
                Some(n) => n,
                None => opt("feed_forward_length").unwrap_or(0),
            },
            dense_layers: vec![],
        }),
    };
    Ok(Features {
        act: if gemma { Activation::GeluTanh } else { Activation::Silu },
        // llama.cpp's converter already added 1 to Gemma's norm weights.
        norm_plus_one: false,
        post_norms: gemma,
        qk_norm: matches!(arch, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3),
        embed_scale: if gemma { (dim as f64).sqrt() as f32 } else { 1.0 },
        // llama.cpp scales by 1/sqrt(head_dim), except Gemma's 27B sizes (46 and 62 layers)
        // by 1/sqrt(dim / heads): the files carry no query_pre_attn_scalar.
        query_pre_attn_scalar: None,
        attn_softcap: softcap("attn_logit_softcapping")?,
        final_softcap: softcap("final_logit_softcapping")?,
        sliding_window: window,
        sliding_layers,
        local_rope_theta: (arch == Arch::Gemma3)
            .then(|| meta.get_f32(&key("rope.freq_base_swa")).unwrap_or(10000.0)),
        partial_rotary: rot_dim as f32 / head_dim.max(1) as f32,
        // llama.cpp keeps Phi-3's qkv and gate+up fused (`attn_qkv`, `ffn_up`).
        fused_projections: arch == Arch::Phi3,
        moe,
    })
}

impl ModelConfig {
    /// Reads GGUF metadata (`general.architecture`, `{arch}.*`, `tokenizer.ggml.*`).
    ///
    /// `tie_embeddings` comes out false: only the tensor directory knows whether `output.weight`
    /// exists ([`crate::loader::gguf::GgufFile::model_config`] fills it in). Assuming untied is
    /// the safe default: a missing `lm_head.weight` is then a clear error, not wrong output.
    pub fn from_gguf(meta: &GgufMetadata) -> Result<ModelConfig> {
        let arch_name = meta
            .get_str("general.architecture")
            .ok_or_else(|| Error::BadConfig("GGUF metadata has no general.architecture".into()))?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let mut arch = Arch::from_name(arch_name)?;
        // llama.cpp writes Mixtral as a llama with experts.
        if arch == Arch::Llama && meta.get_u64(&key("expert_count")).is_some_and(|n| n > 0) {
            arch = Arch::Mixtral;
        }
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
        // Phi-3's LongRoPE: an original context (and factor lists, which are tensors: the
        // loader fills them in, see `GgufFile::model_config`) and no scaling type.
        let longrope = arch == Arch::Phi3 && opt("rope.scaling.original_context_length").is_some();
        let rope_scaling = match meta.get_str(&key("rope.scaling.type")) {
            _ if longrope => RopeScaling::LongRope {
                short: vec![],
                long: vec![],
                original_max_position: req("rope.scaling.original_context_length")?,
                attention_factor: meta.get_f32(&key("rope.scaling.attn_factor")).unwrap_or(1.0),
            },
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
        let n_layers = super::check_layers(req("block_count")?)?;
        let mut features = features(meta, arch, &key, n_layers, head_dim, dim)?;
        if matches!(arch, Arch::Gemma2 | Arch::Gemma3) && matches!(n_layers, 46 | 62) && n_heads > 0
        {
            features.query_pre_attn_scalar = Some((dim / n_heads) as f32);
        }
        let cfg = ModelConfig {
            arch,
            dim,
            n_layers,
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
            features,
        };
        // Phi-3's LongRoPE lists arrive with the tensors; validated once they are in.
        if !matches!(&cfg.rope_scaling, RopeScaling::LongRope { short, .. } if short.is_empty()) {
            cfg.validate()?;
        }
        Ok(cfg)
    }
}
