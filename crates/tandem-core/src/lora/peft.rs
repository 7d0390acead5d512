//! PEFT's LoRA files: `adapter_config.json` (rank, alpha, rsLoRA, per-module alpha patterns)
//! and `adapter_model.safetensors` (`base_model.model.<module>.lora_A.weight` [r, in] and
//! `lora_B.weight` [out, r] of each targeted module). The tensors say which modules are
//! changed and at which rank (PEFT's `rank_pattern` is in their shapes); the config gives each
//! module's scale, alpha / r (alpha / sqrt(r) with rsLoRA).

use std::collections::BTreeMap;

use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensors};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{Adapter, ModuleLora, Target};
use crate::config::ModelConfig;

/// The files of a PEFT adapter directory: its config and its weights.
pub const PEFT_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    peft_type: Option<String>,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    layer_replication: Option<serde_json::Value>,
    #[serde(default)]
    trainable_token_indices: Option<serde_json::Value>,
    /// Pattern -> alpha, in the file's order: PEFT takes the first key that matches.
    #[serde(default, deserialize_with = "ordered")]
    alpha_pattern: Vec<(String, f64)>,
}

/// A JSON object (or null) as its entries in file order.
fn ordered<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(String, f64)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of numbers, or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(vec![])
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(vec![])
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
            let mut out = vec![];
            while let Some(e) = m.next_entry::<String, f64>()? {
                out.push(e);
            }
            Ok(out)
        }
    }
    d.deserialize_option(Entries)
}

/// The modules an adapter may name, as tandem runs them: fused ones split by rows.
fn targets(module: &str, c: &ModelConfig) -> Option<Vec<(Target, usize)>> {
    // (target, first row of the file's B)
    let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    Some(match module {
        "self_attn.qkv_proj" => vec![(Target::Q, 0), (Target::K, q), (Target::V, q + kv)],
        "mlp.gate_up_proj" => vec![(Target::Gate, 0), (Target::Up, c.ffn_dim)],
        m => vec![(*Target::ALL.iter().find(|t| t.hf_name() == m)?, 0)],
    })
}

pub(super) fn parse(config: &str, st: &[u8], c: &ModelConfig) -> Result<Adapter, String> {
    let cfg: Config =
        serde_json::from_str(config).map_err(|e| format!("adapter_config.json: {e}"))?;
    check_config(&cfg)?;
    let patterns = cfg
        .alpha_pattern
        .iter()
        .map(|(k, a)| {
            regex_lite::Regex::new(&format!(r"^(.*\.)?({k})$"))
                .map(|re| (re, *a))
                .map_err(|e| format!("alpha_pattern key '{k}': {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let st = SafeTensors::deserialize(st).map_err(|e| format!("adapter_model.safetensors: {e}"))?;
    let mut pairs = Pairs::new();
    for name in st.names() {
        let (layer, module, which) = split_name(name)?;
        pairs.entry((layer, module)).or_default()[which] = Some(tensor(&st, name)?);
    }
    assemble(pairs, c, |key, rank| {
        let alpha =
            patterns.iter().find(|(re, _)| re.is_match(key)).map_or(cfg.lora_alpha, |p| p.1);
        match cfg.use_rslora {
            true => alpha / (rank as f64).sqrt(),
            false => alpha / rank as f64,
        }
    })
}

/// A 2-d tensor as f32: its shape (rows, columns) and values.
pub(super) type Tensor2 = ([usize; 2], Vec<f32>);

/// (layer, module as HF names it in a layer) -> its A and B, as a file gave them.
pub(super) type Pairs = BTreeMap<(usize, String), [Option<Tensor2>; 2]>;

/// Every module's A [r, in] and B [out, r] checked against the base's projection, scaled by
/// `scale(module key, r)` and split to the projections tandem runs.
pub(super) fn assemble(
    pairs: Pairs,
    c: &ModelConfig,
    scale: impl Fn(&str, usize) -> f64,
) -> Result<Adapter, String> {
    let mut modules = vec![];
    for ((layer, module), [a, b]) in pairs {
        let key = format!("model.layers.{layer}.{module}");
        let (Some((a_shape, a)), Some((b_shape, b))) = (a, b) else {
            return Err(format!("{key}: lora_A and lora_B must come together"));
        };
        let parts = targets(&module, c)
            .ok_or_else(|| format!("{key}: tandem applies adapters to q/k/v/o, gate/up/down and Phi-3's qkv_proj/gate_up_proj, not {module}"))?;
        let ([rank, k], [m, rank_b]) = (a_shape, b_shape);
        let fused_m: usize = parts.iter().map(|(t, _)| t.shape(c).1).sum();
        if rank_b != rank || k != parts[0].0.shape(c).0 || m != fused_m {
            return Err(format!(
                "{key}: lora_A [{rank}, {k}] and lora_B [{m}, {rank_b}] do not fit the base's [{fused_m}, {}] projection",
                parts[0].0.shape(c).0
            ));
        }
        let scale = scale(&key, rank) as f32;
        if !scale.is_finite() {
            return Err(format!("{key}: scale {scale} at rank {rank}"));
        }
        for (target, row0) in parts {
            let rows = target.shape(c).1;
            let b = b[row0 * rank..(row0 + rows) * rank].iter().map(|v| v * scale).collect();
            modules.push(ModuleLora { layer, target, rank, a: a.clone(), b });
        }
    }
    Adapter::checked(modules, Some(c))
}

fn check_config(cfg: &Config) -> Result<(), String> {
    let refuse = |what: &str| Err(format!("adapter_config.json: {what} is not supported"));
    if cfg.peft_type.as_deref().is_some_and(|t| t != "LORA") {
        return refuse(&format!(
            "peft_type {:?} (LoRA only)",
            cfg.peft_type.as_deref().unwrap_or("")
        ));
    }
    if cfg.use_dora {
        return refuse("use_dora (DoRA)");
    }
    if cfg.fan_in_fan_out {
        return refuse("fan_in_fan_out (Conv1D layers)");
    }
    if cfg.bias.as_deref().is_some_and(|b| b != "none") || cfg.lora_bias {
        return refuse("a trained bias");
    }
    if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
        return refuse("modules_to_save (whole modules saved beside the adapter)");
    }
    if cfg.layer_replication.as_ref().is_some_and(|v| !v.is_null()) {
        return refuse("layer_replication");
    }
    if cfg.trainable_token_indices.as_ref().is_some_and(|v| !v.is_null()) {
        return refuse("trainable_token_indices");
    }
    if !cfg.lora_alpha.is_finite() || cfg.alpha_pattern.iter().any(|(_, a)| !a.is_finite()) {
        return Err("adapter_config.json: lora_alpha is not a finite number".into());
    }
    Ok(())
}

/// `base_model.model.model.layers.N.<module>.lora_{A,B}.weight` as (N, module, 0 for A or 1
/// for B).
fn split_name(name: &str) -> Result<(usize, String, usize), String> {
    let bad = || format!("tensor '{name}': not a LoRA weight of a decoder layer's projection");
    let rest = name.strip_prefix("base_model.model.").ok_or_else(bad)?;
    let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, 0)
    } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
        (m, 1)
    } else {
        return Err(bad());
    };
    let rest = module.strip_prefix("model.layers.").ok_or_else(bad)?;
    let (layer, module) = rest.split_once('.').ok_or_else(bad)?;
    let layer = layer.parse::<usize>().map_err(|_| bad())?;
    Ok((layer, module.to_string(), which))
}

/// A 2-d float tensor as f32.
fn tensor(st: &SafeTensors, name: &str) -> Result<Tensor2, String> {
    let t = st.tensor(name).map_err(|e| format!("tensor '{name}': {e}"))?;
    let [r, c] = t.shape()[..] else {
        return Err(format!("tensor '{name}': shape {:?}, not 2-d", t.shape()));
    };
    let d = t.data();
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => {
            d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        Dtype::F16 => {
            d.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        Dtype::BF16 => {
            d.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        other => return Err(format!("tensor '{name}': dtype {other:?} (f32, f16 or bf16)")),
    };
    Ok(([r, c], v))
}
