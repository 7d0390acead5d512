//! The engine's options as `Loader.create` reads them.
use super::js_error;
use crate::plan::{DebugLimits, Size};
use serde::Deserialize;
use tandem_core::model::LoraOptions;
use tandem_core::{DType, KvDtypes};
use wasm_bindgen::prelude::*;

/// What `Loader.create` accepts (JSON). Every field is optional.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct EngineOptions {
    /// "auto" (WebGPU when present, else the CPU), "webgpu" (an error without it) or "cpu".
    pub(super) backend: Option<String>,
    /// Most tokens one request may reach (capped at the model's own); `context_length` is
    /// its newer name.
    pub(super) context: Option<usize>,
    pub(super) context_length: Option<usize>,
    /// Most requests generating in one step (default [`DEFAULT_MAX_SEQS`]).
    pub(super) max_seqs: Option<usize>,
    /// Tokens the KV cache holds across all requests. Default: as many as `context` (the
    /// memory one request at that context needs alone, shared: room for four requests of 512
    /// tokens at the default 2048). A request that finds it full waits, or is
    /// preempted and recomputed later, so only speed depends on it.
    pub(super) kv_tokens: Option<usize>,
    /// The KV pool in bytes instead (as many whole blocks as fit), like the CLI's
    /// `--kv-cache-memory`.
    pub(super) kv_cache_memory: Option<Size>,
    /// Most bytes the weights, KV pool and activations may take: the KV pool is shrunk to
    /// fit, or the model refused before its weights download (see [`Loader::plan`]).
    pub(super) memory_budget: Option<Size>,
    /// TESTING ONLY: GPU limits smaller than the adapter's.
    pub(super) debug_limits: Option<DebugLimits>,
    /// How the KV cache stores keys and values: "f32" (the default), "f16", or "q8_0" /
    /// "q4_0" blocks (about a half / a quarter of f16's memory a token).
    pub(super) kv_dtype: Option<String>,
    /// The keys' and the values' storage each, overriding `kv_dtype` (e.g. keys "f16",
    /// values "q4_0"; the pairs are [`tandem_core::quant::kv::KV_PAIRS`]).
    pub(super) k_dtype: Option<String>,
    pub(super) v_dtype: Option<String>,
    /// Use `shader-f16` where the adapter has it (default true).
    pub(super) allow_f16: Option<bool>,
    /// LoRA adapters held on the backend at once (default 0: adapters off), their largest
    /// rank (default 16) and their dtype ("f32", the default, or "f16": half the memory).
    pub(super) max_loras: Option<usize>,
    pub(super) max_lora_rank: Option<usize>,
    pub(super) lora_dtype: Option<String>,
}

impl EngineOptions {
    /// The cache's K/V dtypes, `default`'s where the options name none.
    pub(super) fn kv_dtypes(&self, default: KvDtypes) -> Result<KvDtypes, JsValue> {
        let parse = |option: &str, name: Option<&str>| {
            let Some(name) = name else { return Ok(None) };
            let kinds = tandem_core::quant::kv::KV_DTYPES;
            match kinds.iter().find(|d| d.name() == name) {
                Some(&d) => Ok(Some(d)),
                None => {
                    let names: Vec<&str> = kinds.iter().map(|d| d.name()).collect();
                    let names = names.join(", ");
                    Err(js_error(format!("{option} must be one of {names}, not '{name}'")))
                }
            }
        };
        let both = parse("kvDtype", self.kv_dtype.as_deref())?;
        let k = parse("kDtype", self.k_dtype.as_deref())?.or(both).unwrap_or(default.k);
        let v = parse("vDtype", self.v_dtype.as_deref())?.or(both).unwrap_or(default.v);
        Ok(KvDtypes { k, v })
    }

    pub(super) fn lora(&self) -> Result<Option<LoraOptions>, JsValue> {
        let slots = self.max_loras.unwrap_or(0);
        let dtype = match self.lora_dtype.as_deref() {
            None | Some("f32") => DType::F32,
            Some("f16") => DType::F16,
            Some(other) => {
                return Err(js_error(format!("loraDtype must be 'f32' or 'f16', not '{other}'")))
            }
        };
        if slots == 0 {
            return match self.max_lora_rank.is_some() || self.lora_dtype.is_some() {
                true => {
                    Err(js_error("maxLoraRank and loraDtype need maxLoras (adapters held at once)"))
                }
                false => Ok(None),
            };
        }
        let rank = self.max_lora_rank.unwrap_or(16);
        if slots > LoraOptions::MAX_SLOTS || rank == 0 || rank > LoraOptions::MAX_RANK {
            return Err(js_error(format!(
                "maxLoras must be 1 to {} and maxLoraRank 1 to {} (got {slots} and {rank})",
                LoraOptions::MAX_SLOTS,
                LoraOptions::MAX_RANK
            )));
        }
        Ok(Some(LoraOptions { slots, rank, dtype }))
    }
}

pub(super) const DEFAULT_MAX_SEQS: usize = 4;
