//! GGUF (llama.cpp) tensor names to the HF names the engine uses.

/// Maps a GGUF tensor name to its HF name; names with no HF counterpart (e.g.
/// `rope_freqs.weight`) come back unchanged.
pub fn gguf_to_hf(name: &str) -> String {
    match name {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let Some(rest) = name.strip_prefix("blk.") else { return name.into() };
    let Some((layer, rest)) = rest.split_once('.') else { return name.into() };
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return name.into();
    }
    let Some((part, suffix)) = rest.rsplit_once('.') else { return name.into() };
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return name.into(),
    };
    format!("model.layers.{layer}.{hf}.{suffix}")
}

/// Which head count llama.cpp's converter permuted an HF tensor's rows with, if any:
/// `Some(false)` for q (head_count), `Some(true)` for k (head_count_kv).
pub(crate) fn rope_permuted(hf_name: &str) -> Option<bool> {
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (_, tail) = rest.split_once('.')?;
    match tail {
        "self_attn.q_proj.weight" | "self_attn.q_proj.bias" => Some(false),
        "self_attn.k_proj.weight" | "self_attn.k_proj.bias" => Some(true),
        _ => None,
    }
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
        assert_eq!(gguf_to_hf("rope_freqs.weight"), "rope_freqs.weight");
        assert_eq!(rope_permuted("model.layers.3.self_attn.k_proj.weight"), Some(true));
        assert_eq!(rope_permuted("model.layers.3.self_attn.v_proj.weight"), None);
    }
}
