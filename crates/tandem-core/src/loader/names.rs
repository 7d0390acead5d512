//! Tensor names: the one table from GGUF (llama.cpp) names to the HF names the engine uses,
//! and the list of the tensors a model has, by HF name, in load order.

use crate::config::ModelConfig;

/// Whole-model tensors: (GGUF name, HF name).
const MODEL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer tensors, the part between the layer number and the `.weight` / `.bias` suffix:
/// (GGUF `blk.N.<part>`, HF `model.layers.N.<part>`).
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Maps a GGUF tensor name to its HF name; names with no HF counterpart (e.g.
/// `rope_freqs.weight`) come back unchanged.
pub fn gguf_to_hf(name: &str) -> String {
    translate(name, "blk.", "model.layers.", |(gguf, hf)| (gguf, hf))
}

/// Maps an HF tensor name to its GGUF name; the inverse of [`gguf_to_hf`]. Names with no GGUF
/// counterpart come back unchanged.
pub fn hf_to_gguf(name: &str) -> String {
    translate(name, "model.layers.", "blk.", |(gguf, hf)| (hf, gguf))
}

/// `name` through the tables, read from the side `pick` puts first: a whole-model name, or
/// `<from_layer>N.<part>.<suffix>` to `<to_layer>N.<part>.<suffix>`.
fn translate(
    name: &str,
    from_layer: &str,
    to_layer: &str,
    pick: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> String {
    if let Some((_, to)) = MODEL_NAMES.into_iter().map(&pick).find(|&(from, _)| from == name) {
        return to.into();
    }
    let Some(rest) = name.strip_prefix(from_layer) else { return name.into() };
    let Some((layer, rest)) = rest.split_once('.') else { return name.into() };
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return name.into();
    }
    let Some((part, suffix)) = rest.rsplit_once('.') else { return name.into() };
    match LAYER_NAMES.into_iter().map(pick).find(|&(from, _)| from == part) {
        Some((_, to)) => format!("{to_layer}{layer}.{to}.{suffix}"),
        None => name.into(),
    }
}

/// Which head count llama.cpp's converter permuted an HF tensor's rows with, if any:
/// `Some(false)` for q (head_count), `Some(true)` for k (head_count_kv).
pub fn rope_permuted(hf_name: &str) -> Option<bool> {
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (_, tail) = rest.split_once('.')?;
    match tail {
        "self_attn.q_proj.weight" | "self_attn.q_proj.bias" => Some(false),
        "self_attn.k_proj.weight" | "self_attn.k_proj.bias" => Some(true),
        _ => None,
    }
}

/// Every tensor a model of `c` loads: (HF name, shape), in the order the engine uploads them.
/// Matrices are 2-D ([out, in]); norm weights and biases are 1-D.
pub fn model_tensors(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let embed = vec![c.vocab_size, c.dim];
    let mut out = vec![("model.embed_tokens.weight".to_string(), embed.clone())];
    for l in 0..c.n_layers {
        let mut t = |name: &str, shape: Vec<usize>| {
            out.push((format!("model.layers.{l}.{name}"), shape));
        };
        t("input_layernorm.weight", vec![c.dim]);
        t("self_attn.q_proj.weight", vec![q_dim, c.dim]);
        t("self_attn.k_proj.weight", vec![kv_dim, c.dim]);
        t("self_attn.v_proj.weight", vec![kv_dim, c.dim]);
        if c.qkv_bias {
            t("self_attn.q_proj.bias", vec![q_dim]);
            t("self_attn.k_proj.bias", vec![kv_dim]);
            t("self_attn.v_proj.bias", vec![kv_dim]);
        }
        t("self_attn.o_proj.weight", vec![c.dim, q_dim]);
        t("post_attention_layernorm.weight", vec![c.dim]);
        t("mlp.gate_proj.weight", vec![c.ffn_dim, c.dim]);
        t("mlp.up_proj.weight", vec![c.ffn_dim, c.dim]);
        t("mlp.down_proj.weight", vec![c.dim, c.ffn_dim]);
    }
    out.push(("model.norm.weight".into(), vec![c.dim]));
    if !c.tie_embeddings {
        out.push(("lm_head.weight".into(), embed));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_llama_cpp_names() {
        assert_eq!(gguf_to_hf("blk.12.attn_q.bias"), "model.layers.12.self_attn.q_proj.bias");
        assert_eq!(
            gguf_to_hf("blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(gguf_to_hf("output.weight"), "lm_head.weight");
        assert_eq!(gguf_to_hf("blk.x.attn_q.weight"), "blk.x.attn_q.weight");
        assert_eq!(gguf_to_hf("blk.1.attn_qkv.weight"), "blk.1.attn_qkv.weight");
        assert_eq!(gguf_to_hf("rope_freqs.weight"), "rope_freqs.weight");
        assert_eq!(hf_to_gguf("model.layers.7.mlp.down_proj.weight"), "blk.7.ffn_down.weight");
        assert_eq!(hf_to_gguf("model.embed_tokens.weight"), "token_embd.weight");
        assert_eq!(
            hf_to_gguf("model.layers.7.mlp.experts.weight"),
            "model.layers.7.mlp.experts.weight"
        );
        assert_eq!(rope_permuted("model.layers.3.self_attn.k_proj.weight"), Some(true));
        assert_eq!(rope_permuted("model.layers.3.self_attn.v_proj.weight"), None);
    }

    #[test]
    fn every_model_tensor_has_a_gguf_name_that_maps_back() {
        let json = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": false}"#;
        let c = ModelConfig::from_hf_json(json).unwrap();
        let tensors = model_tensors(&c);
        assert_eq!(tensors.len(), 1 + 2 * 12 + 2);
        for (hf, _) in &tensors {
            let gguf = hf_to_gguf(hf);
            assert_ne!(&gguf, hf, "{hf} has no GGUF name");
            assert_eq!(&gguf_to_hf(&gguf), hf);
        }
    }
}
