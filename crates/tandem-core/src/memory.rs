//! Memory planning before a model loads: from the model's config, its weight files' sizes and
//! the options, what the weights, the KV pool and the activations will take, checked against a
//! memory budget and a GPU's buffer limits. The plan shrinks the KV pool (and with it the
//! context) to fit, or refuses with the numbers, before a byte of weights is fetched.
//!
//! The activations are an estimate of the buffers [`crate::model`] allocates for one step
//! (f32 and u32 rows of `max_step_tokens`, one logits row per sequence), not a measurement.
use crate::{KvDtypes, ModelConfig};
use serde::Serialize;

/// Why a model cannot be loaded as asked, with the numbers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// `what` needs `needs` bytes; `limit` (`memoryBudget`, ...) is `max` bytes.
    #[error("{what} needs {needs} bytes, over {limit} ({max} bytes)")]
    DoesNotFit { what: String, needs: u64, limit: &'static str, max: u64 },
    /// One GPU buffer would be larger than the device binds: only a CPU could run it.
    #[error("{what} needs one buffer of {needs} bytes, over the GPU's {limit} ({max} bytes)")]
    BufferTooLarge { what: String, needs: u64, limit: &'static str, max: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// How large the KV pool should be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvSize {
    /// As many tokens as the context (the pool the options leave unsaid); shrunk to fit.
    Default,
    /// Exactly this many tokens (rounded up to whole blocks).
    Tokens(usize),
    /// As many whole blocks as fit in these bytes (`kvCacheMemory`, `--kv-cache-memory`).
    Bytes(u64),
}

/// What a plan is asked.
#[derive(Debug, Clone)]
pub struct PlanRequest<'a> {
    /// The model's config; `None` when it is not known before the weights (a GGUF file): then
    /// only the weights are checked.
    pub config: Option<&'a ModelConfig>,
    /// The weight files' bytes, all of them.
    pub weights_bytes: u64,
    /// Tokens one request may reach, as asked (capped at the model's own).
    pub context: usize,
    pub kv: KvSize,
    pub kv_dtypes: KvDtypes,
    pub block_size: usize,
    pub max_step_tokens: usize,
    pub max_seqs: usize,
    /// Most bytes weights, KV pool and activations may take together.
    pub budget: Option<u64>,
    /// The GPU's largest storage buffer binding (the least of maxStorageBufferBindingSize and
    /// maxBufferSize); `None` on the CPU.
    pub max_binding: Option<u64>,
}

/// What was chosen, and why (JSON in the browser engine's `info.memory`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    pub weights_bytes: u64,
    /// Context and KV pool chosen; `None` without a config (the loader's defaults apply).
    pub context: Option<usize>,
    pub kv_blocks: Option<usize>,
    pub kv_tokens: Option<usize>,
    /// Bytes of one block of every layer's K and V.
    pub kv_block_bytes: u64,
    pub kv_bytes: u64,
    /// Estimated peak activation (scratch) bytes.
    pub scratch_bytes: u64,
    pub total_bytes: u64,
    pub budget: Option<u64>,
    pub max_binding: Option<u64>,
    /// What was changed from what was asked, and why, in words.
    pub notes: Vec<String>,
}

/// "512MiB", "2G", "1.5GB", "1000000": decimal (KB, MB, GB) or binary (K, M, G, KiB, ...).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a size like 512MiB or 2G"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit '{other}' (use B, K/KiB, M/MiB, G/GiB, KB, MB, GB)"
            ))
        }
    };
    let bytes = n * scale;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("'{s}' is not a positive size"));
    }
    Ok(bytes as u64)
}

/// Bytes of one KV block: (every layer's K and V, one layer's larger of K and V).
pub fn kv_block_bytes(c: &ModelConfig, dtypes: KvDtypes, block_size: usize) -> (u64, u64) {
    let bytes = |d| {
        let numel = crate::quant::kv::cache_numel(d, block_size, c.n_kv_heads, c.head_dim);
        d.storage_bytes(numel) as u64
    };
    let (k, v) = (bytes(dtypes.k), bytes(dtypes.v));
    (c.n_layers as u64 * (k + v), k.max(v))
}

/// The activation buffers of one step of `cap` tokens and `max_seqs` logits rows: (all of
/// them, the largest one's name and bytes). Every element is 4 bytes (f32 or u32).
pub fn activation_bytes(c: &ModelConfig, cap: usize, max_seqs: usize) -> (u64, &'static str, u64) {
    let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let ffn = match &c.features.moe {
        Some(m) => c.ffn_dim.max(m.top_k * m.ffn_dim),
        None => c.ffn_dim,
    };
    let qk_norm = if c.features.qk_norm { q + kv } else { 0 };
    let moe = c.features.moe.as_ref().map_or(0, |m| m.experts + m.top_k * (2 + c.dim));
    let per_token = 4 + 3 * c.dim + 2 * q + 2 * kv + 3 * ffn + qk_norm + moe;
    let logits = c.vocab_size * max_seqs.max(1);
    let all = 4 * (cap * per_token + c.dim + logits + 64) as u64;
    let largest = [("mlp gate/up", cap * ffn), ("attention q", cap * q), ("logits", logits)]
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or(("logits", 0), |(name, n)| (name, 4 * n as u64));
    (all, largest.0, largest.1)
}

/// Plans the model's memory: see the module docs.
pub fn plan(r: &PlanRequest) -> Result<MemoryPlan, PlanError> {
    let mut notes = Vec::new();
    let budget_err = |what: String, needs: u64, max: u64| PlanError::DoesNotFit {
        what,
        needs,
        limit: "memoryBudget",
        max,
    };
    let Some(c) = r.config else {
        if let Some(b) = r.budget.filter(|&b| r.weights_bytes > b) {
            return Err(budget_err("the weights".into(), r.weights_bytes, b));
        }
        return Ok(MemoryPlan {
            weights_bytes: r.weights_bytes,
            context: None,
            kv_blocks: None,
            kv_tokens: None,
            kv_block_bytes: 0,
            kv_bytes: 0,
            scratch_bytes: 0,
            total_bytes: r.weights_bytes,
            budget: r.budget,
            max_binding: r.max_binding,
            notes: vec!["the config is read with the weights (GGUF): only the weights' bytes were checked before loading".into()],
        });
    };
    let bs = r.block_size.max(1);
    let context = r.context.min(c.max_position).max(1);
    let cap = r.max_step_tokens.min(context).max(1);
    let (scratch, largest_name, largest) = activation_bytes(c, cap, r.max_seqs);
    let (block_bytes, layer_block_bytes) = kv_block_bytes(c, r.kv_dtypes, bs);
    let fixed = r.weights_bytes + scratch;
    if let Some(b) = r.budget.filter(|&b| fixed > b) {
        let what = format!(
            "the weights ({} bytes) with the activations ({scratch} bytes), before any KV pool ({block_bytes} bytes a block of {bs} tokens)",
            r.weights_bytes
        );
        return Err(budget_err(what, fixed, b));
    }
    if let Some(max) = r.max_binding.filter(|&m| largest > m) {
        let what = format!("the activation buffer '{largest_name}' ({cap} tokens a step)");
        return Err(PlanError::BufferTooLarge {
            what,
            needs: largest,
            limit: "maxStorageBufferBindingSize",
            max,
        });
    }
    let mut blocks = match r.kv {
        KvSize::Default => r.context.div_ceil(bs),
        KvSize::Tokens(n) => n.div_ceil(bs),
        KvSize::Bytes(b) => match (b / block_bytes.max(1)) as usize {
            0 => {
                return Err(PlanError::Invalid(format!(
                    "kvCacheMemory ({b} bytes) is smaller than one KV block ({block_bytes} bytes: {bs} tokens at {})",
                    r.kv_dtypes
                )))
            }
            n => n,
        },
    }
    .max(1);
    let asked = blocks;
    if let Some(max) = r.max_binding {
        let fit = (max / layer_block_bytes.max(1)) as usize;
        if fit == 0 {
            return Err(PlanError::BufferTooLarge {
                what: "one KV block of one layer".into(),
                needs: layer_block_bytes,
                limit: "maxStorageBufferBindingSize",
                max,
            });
        }
        if blocks > fit {
            notes.push(format!(
                "KV pool cut to {} tokens (from {}): one layer's K or V buffer would be {} bytes, over maxStorageBufferBindingSize ({max} bytes)",
                fit * bs,
                blocks * bs,
                blocks as u64 * layer_block_bytes
            ));
            blocks = fit;
        }
    }
    if let Some(b) = r.budget {
        let fit = ((b - fixed) / block_bytes.max(1)) as usize;
        if blocks > fit {
            let needs = fixed + blocks as u64 * block_bytes;
            if fit == 0 || r.kv != KvSize::Default {
                let what = format!(
                    "the weights ({} bytes), activations ({scratch} bytes) and a KV pool of {} tokens ({} bytes)",
                    r.weights_bytes,
                    if fit == 0 { bs } else { blocks * bs },
                    if fit == 0 { block_bytes } else { blocks as u64 * block_bytes }
                );
                let needs = if fit == 0 { fixed + block_bytes } else { needs };
                return Err(budget_err(what, needs, b));
            }
            notes.push(format!(
                "KV pool cut to {} tokens (from {}) to fit memoryBudget ({b} bytes): the weights ({} bytes) and activations ({scratch} bytes) leave {} bytes",
                fit * bs,
                blocks * bs,
                r.weights_bytes,
                b - fixed
            ));
            blocks = fit;
        }
    }
    let kv_tokens = blocks * bs;
    // A pool cut here holds no more than the context it leaves; a small pool asked for keeps
    // the context (a request then waits for room, and only one that could never fit fails).
    let context = if blocks < asked && kv_tokens < context {
        notes.push(format!(
            "context cut to {kv_tokens} tokens (from {context}): the KV pool holds no more"
        ));
        kv_tokens
    } else {
        context
    };
    let kv_bytes = blocks as u64 * block_bytes;
    Ok(MemoryPlan {
        weights_bytes: r.weights_bytes,
        context: Some(context),
        kv_blocks: Some(blocks),
        kv_tokens: Some(kv_tokens),
        kv_block_bytes: block_bytes,
        kv_bytes,
        scratch_bytes: scratch,
        total_bytes: fixed + kv_bytes,
        budget: r.budget,
        max_binding: r.max_binding,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    /// stories260K's shape: 5 layers, 4 KV heads of 8, 512 positions, vocab 512, ffn 172.
    fn config() -> ModelConfig {
        ModelConfig::from_hf_json(
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":64,
            "intermediate_size":172,"num_hidden_layers":5,"num_attention_heads":8,
            "num_key_value_heads":4,"head_dim":8,"max_position_embeddings":512,
            "rms_norm_eps":1e-5,"rope_theta":10000.0,"vocab_size":512,"tie_word_embeddings":true}"#,
        )
        .unwrap()
    }

    fn request(c: &ModelConfig) -> PlanRequest<'_> {
        PlanRequest {
            config: Some(c),
            weights_bytes: 1_000_000,
            context: 2048,
            kv: KvSize::Default,
            kv_dtypes: KvDtypes::same(DType::F32),
            block_size: 16,
            max_step_tokens: 256,
            max_seqs: 4,
            budget: None,
            max_binding: None,
        }
    }

    #[test]
    fn parse_size_reads_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn default_pool_is_the_context_and_block_bytes_match_kv_bytes_per_token() {
        let c = config();
        let p = plan(&request(&c)).unwrap();
        let per_token = c.kv_bytes_per_token(KvDtypes::same(DType::F32)) as u64;
        assert_eq!(p.kv_block_bytes, 16 * per_token);
        assert_eq!(p.kv_blocks, Some(128));
        assert_eq!(p.kv_bytes, 128 * 16 * per_token);
        assert_eq!(p.context, Some(512), "capped at the model's positions");
        assert_eq!(p.total_bytes, 1_000_000 + p.kv_bytes + p.scratch_bytes);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn kv_bytes_give_whole_blocks() {
        let c = config();
        let block = kv_block_bytes(&c, KvDtypes::same(DType::F32), 16).0;
        let p = plan(&PlanRequest { kv: KvSize::Bytes(1 << 20), ..request(&c) }).unwrap();
        assert_eq!(p.kv_blocks, Some(((1u64 << 20) / block) as usize));
        let tiny = plan(&PlanRequest { kv: KvSize::Bytes(block - 1), ..request(&c) });
        assert!(
            matches!(tiny, Err(PlanError::Invalid(m)) if m.contains("smaller than one KV block"))
        );
    }

    #[test]
    fn a_budget_under_the_weights_is_refused_with_the_numbers() {
        let c = config();
        let e = plan(&PlanRequest { budget: Some(500_000), ..request(&c) }).unwrap_err();
        let PlanError::DoesNotFit { needs, limit, max, .. } = &e else { panic!("{e}") };
        assert!(*needs > 1_000_000 && *limit == "memoryBudget" && *max == 500_000);
        assert!(e.to_string().contains("500000 bytes"), "{e}");
        // The refusal also says what the KV pool would add on top.
        let (block, _) = kv_block_bytes(&c, request(&c).kv_dtypes, request(&c).block_size);
        assert!(e.to_string().contains(&format!("KV pool ({block} bytes a block")), "{e}");
        // Without a config only the weights are checked.
        let gguf = PlanRequest { config: None, budget: Some(999_999), ..request(&c) };
        assert!(matches!(plan(&gguf), Err(PlanError::DoesNotFit { needs: 1_000_000, .. })));
    }

    #[test]
    fn a_budget_under_the_default_pool_shrinks_it_and_the_context() {
        let c = config();
        let full = plan(&request(&c)).unwrap();
        let budget = 1_000_000 + full.scratch_bytes + 20 * full.kv_block_bytes + 7;
        let p = plan(&PlanRequest { budget: Some(budget), ..request(&c) }).unwrap();
        assert_eq!(p.kv_blocks, Some(20));
        assert_eq!(p.context, Some(320));
        assert!(p.total_bytes <= budget);
        assert!(
            p.notes[0].contains("KV pool cut to 320 tokens") && p.notes[0].contains("memoryBudget")
        );
        // An explicit pool that does not fit is refused rather than shrunk; one that fits
        // keeps the context.
        let small = plan(&PlanRequest { kv: KvSize::Tokens(64), ..request(&c) }).unwrap();
        assert_eq!((small.kv_tokens, small.context), (Some(64), Some(512)));
        let explicit =
            PlanRequest { budget: Some(budget), kv: KvSize::Tokens(2048), ..request(&c) };
        assert!(matches!(plan(&explicit), Err(PlanError::DoesNotFit { .. })));
    }

    #[test]
    fn binding_limits_cut_the_pool_or_refuse_an_activation_buffer() {
        let c = config();
        let (_, layer_block) = kv_block_bytes(&c, KvDtypes::same(DType::F32), 16);
        let req =
            PlanRequest { kv: KvSize::Tokens(4096), max_binding: Some(256 << 10), ..request(&c) };
        let p = plan(&req).unwrap();
        assert_eq!(p.kv_blocks, Some(((256u64 << 10) / layer_block) as usize));
        assert!(p.notes[0].contains("maxStorageBufferBindingSize"), "{:?}", p.notes);
        let (_, name, largest) = activation_bytes(&c, 256, 4);
        let small = PlanRequest { max_binding: Some(largest - 1), ..request(&c) };
        let e = plan(&small).unwrap_err();
        assert!(matches!(&e, PlanError::BufferTooLarge { needs, .. } if *needs == largest), "{e}");
        assert!(e.to_string().contains(name), "{e}");
    }
}
