//! llama.cpp's LoRA GGUF (`convert_lora_to_gguf.py`): `general.type` "adapter",
//! `adapter.type` "lora", one `adapter.lora.alpha`, and `<tensor>.lora_a` [r, in] and
//! `.lora_b` [out, r] beside each adapted weight's GGUF name. The scale is llama.cpp's:
//! alpha / r (r from each module's A), or 1 where alpha is 0. (The converter keeps one alpha:
//! PEFT's rsLoRA and per-module alphas do not survive it.) A Llama model's q/k B rows come
//! permuted as the converter permutes the base's, and go back to HF's order here.

use super::peft::{assemble, Pairs};
use super::Adapter;
use crate::config::ModelConfig;
use crate::loader::ggml;
use crate::loader::gguf::{GgufFile, GgufMetadataExt};
use crate::loader::names::{self, gguf_to_hf};

pub(super) fn parse(file: &GgufFile, c: &ModelConfig) -> Result<Adapter, String> {
    let m = &file.metadata;
    if m.get_str("general.type") != Some("adapter") || m.get_str("adapter.type") != Some("lora") {
        return Err(format!(
            "not a LoRA adapter (general.type {:?}, adapter.type {:?}: \"adapter\" and \"lora\" expected)",
            m.get_str("general.type").unwrap_or("none"),
            m.get_str("adapter.type").unwrap_or("none")
        ));
    }
    let alpha = m.get_f32("adapter.lora.alpha").unwrap_or(0.0) as f64;
    if !alpha.is_finite() {
        return Err(format!("adapter.lora.alpha {alpha}"));
    }
    let arch = file.architecture();
    let mut pairs = Pairs::new();
    for t in &file.tensors {
        let (base, which) = match (t.name.strip_suffix(".lora_a"), t.name.strip_suffix(".lora_b")) {
            (Some(b), _) => (b, 0),
            (_, Some(b)) => (b, 1),
            _ => return Err(format!("tensor '{}': not a LoRA weight (.lora_a / .lora_b)", t.name)),
        };
        let hf = gguf_to_hf(base, arch);
        let module = hf
            .strip_prefix("model.layers.")
            .and_then(|r| r.strip_suffix(".weight"))
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, m)| Some((l.parse::<usize>().ok()?, m.to_string())));
        let Some((layer, module)) = module else {
            return Err(format!(
                "tensor '{}': tandem applies adapters to decoder layers' projections, not {base}",
                t.name
            ));
        };
        let shape = t.shape();
        let [r, cols] = shape[..] else {
            return Err(format!("tensor '{}': shape {shape:?}, not 2-d", t.name));
        };
        let data = file.tensor_data(t).map_err(|e| e.to_string())?;
        let mut values = ggml::dequantize(t.ggml_type.id, data)
            .ok_or_else(|| format!("tensor '{}': type {} is not read", t.name, t.ggml_type.name))?;
        // The converter permutes a Llama model's q/k rows for llama.cpp's RoPE, the adapter's
        // B rows (its output rows) with them; the base's come back in HF order, so these must.
        let permuted = matches!(arch, Some("llama" | "mistral")) && which == 1;
        if let Some(is_k) = names::rope_permuted(&hf).filter(|_| permuted) {
            let heads = if is_k { c.n_kv_heads } else { c.n_heads };
            let rows = ggml::unpermute_rows(bytemuck::cast_slice(&values), r, heads)
                .map_err(|e| format!("tensor '{}': {e}", t.name))?;
            values = bytemuck::pod_collect_to_vec(&rows);
        }
        pairs.entry((layer, module)).or_default()[which] = Some(([r, cols], values));
    }
    assemble(pairs, c, |_, rank| if alpha != 0.0 { alpha / rank as f64 } else { 1.0 })
}
