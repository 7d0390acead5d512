//! Tensor names: the one table from GGUF (llama.cpp) names to the HF names the engine uses,
//! and the list of the tensors a model has, by HF name, in load order, with the file tensors
//! each is made of (a fused projection's rows, one expert of a stack).

use crate::config::ModelConfig;

/// Whole-model tensors: (GGUF name, HF name).
const MODEL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer tensors, the part between the layer number and the `.weight` / `.bias` suffix:
/// (GGUF `blk.N.<part>`, HF `model.layers.N.<part>`).
const LAYER_NAMES: [(&str, &str); 17] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_qkv", "self_attn.qkv_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    // Experts stacked [experts, rows, cols], and the router.
    ("ffn_gate_inp", "mlp.gate"),
    ("ffn_gate_exps", "mlp.experts.gate_proj"),
    ("ffn_up_exps", "mlp.experts.up_proj"),
    ("ffn_down_exps", "mlp.experts.down_proj"),
    ("rope_freqs", "rope_freqs"),
];

/// Gemma's norms around attention and the MLP: Llama's `ffn_norm` is Gemma's pre-MLP norm,
/// and HF's `post_attention_layernorm` is Gemma's attention output norm.
const GEMMA_LAYER_NAMES: [(&str, &str); 3] = [
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

/// Phi-3's fused gate and up projection is llama.cpp's `ffn_up`.
const PHI3_LAYER_NAMES: [(&str, &str); 1] = [("ffn_up", "mlp.gate_up_proj")];

/// The layer-name table of GGUF architecture `arch`: the family's own entries first.
fn layer_names(arch: Option<&str>) -> Vec<(&'static str, &'static str)> {
    let own: &[(&str, &str)] = match arch {
        Some("gemma2" | "gemma3") => &GEMMA_LAYER_NAMES,
        Some("phi3") => &PHI3_LAYER_NAMES,
        _ => &[],
    };
    own.iter().chain(&LAYER_NAMES).copied().collect()
}

/// Maps a GGUF tensor name of a file of architecture `arch` (`general.architecture`) to its
/// HF name; names with no HF counterpart come back unchanged.
pub fn gguf_to_hf(name: &str, arch: Option<&str>) -> String {
    translate(name, "blk.", "model.layers.", &layer_names(arch), |(gguf, hf)| (gguf, hf))
}

/// Maps an HF tensor name to its GGUF name for architecture `arch`; the inverse of
/// [`gguf_to_hf`]. Names with no GGUF counterpart come back unchanged.
pub fn hf_to_gguf(name: &str, arch: Option<&str>) -> String {
    translate(name, "model.layers.", "blk.", &layer_names(arch), |(gguf, hf)| (hf, gguf))
}

/// `name` through the tables, read from the side `pick` puts first: a whole-model name, or
/// `<from_layer>N.<part>.<suffix>` to `<to_layer>N.<part>.<suffix>`.
fn translate(
    name: &str,
    from_layer: &str,
    to_layer: &str,
    layers: &[(&'static str, &'static str)],
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
    match layers.iter().copied().map(pick).find(|&(from, _)| from == part) {
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

/// Where a model tensor's data is in a file tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole file tensor (a stack [experts, rows, cols] counts as [experts * rows, cols]).
    Whole,
    /// Rows start..start + rows of a fused projection (Phi-3's qkv_proj, gate_up_proj) of
    /// `of` rows.
    Rows { start: usize, rows: usize, of: usize },
    /// Expert e's matrix of a stack the file stores one expert per tensor (HF).
    Expert(usize),
}

/// One tensor the model uploads: its name, shape ([out, in] for a matrix, [experts * out,
/// in] for a stack of experts, [len] for a vector) and the file tensors it may come from.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub sources: Vec<(String, Part)>,
}

/// Every tensor a model of `c` loads, in the order the engine uploads them.
pub fn model_tensors(c: &ModelConfig) -> Vec<TensorSpec> {
    let f = &c.features;
    let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let embed = vec![c.vocab_size, c.dim];
    let whole = |name: &str, shape: Vec<usize>| TensorSpec {
        name: name.to_string(),
        shape,
        sources: vec![(name.to_string(), Part::Whole)],
    };
    let mut out = vec![whole("model.embed_tokens.weight", embed.clone())];
    for l in 0..c.n_layers {
        let p = format!("model.layers.{l}.");
        let mut t = |name: &str, shape: Vec<usize>| out.push(whole(&format!("{p}{name}"), shape));
        t("input_layernorm.weight", vec![c.dim]);
        for (proj, rows) in [("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)] {
            t(&format!("self_attn.{proj}.weight"), vec![rows, c.dim]);
        }
        if c.qkv_bias {
            t("self_attn.q_proj.bias", vec![q_dim]);
            t("self_attn.k_proj.bias", vec![kv_dim]);
            t("self_attn.v_proj.bias", vec![kv_dim]);
        }
        if f.qk_norm {
            t("self_attn.q_norm.weight", vec![c.head_dim]);
            t("self_attn.k_norm.weight", vec![c.head_dim]);
        }
        t("self_attn.o_proj.weight", vec![c.dim, q_dim]);
        t("post_attention_layernorm.weight", vec![c.dim]);
        if f.post_norms {
            t("pre_feedforward_layernorm.weight", vec![c.dim]);
            t("post_feedforward_layernorm.weight", vec![c.dim]);
        }
        match (&f.moe, c.is_moe_layer(l)) {
            (Some(m), true) => {
                t("mlp.gate.weight", vec![m.experts, c.dim]);
                for (proj, rows, cols) in [
                    ("gate_proj", m.ffn_dim, c.dim),
                    ("up_proj", m.ffn_dim, c.dim),
                    ("down_proj", c.dim, m.ffn_dim),
                ] {
                    t(&format!("mlp.experts.{proj}.weight"), vec![m.experts * rows, cols]);
                }
            }
            _ => {
                t("mlp.gate_proj.weight", vec![c.ffn_dim, c.dim]);
                t("mlp.up_proj.weight", vec![c.ffn_dim, c.dim]);
                t("mlp.down_proj.weight", vec![c.dim, c.ffn_dim]);
            }
        }
    }
    out.push(whole("model.norm.weight", vec![c.dim]));
    if !c.tie_embeddings {
        out.push(whole("lm_head.weight", embed));
    }
    for spec in &mut out {
        spec.sources.extend(other_sources(c, &spec.name));
    }
    out
}

/// The file tensors other than its own name a model tensor of `c` can come from: HF's fused
/// projections (Phi-3), its experts one per tensor, and its families' other names.
fn other_sources(c: &ModelConfig, name: &str) -> Vec<(String, Part)> {
    let Some(rest) = name.strip_prefix("model.layers.") else { return vec![] };
    let Some((l, tail)) = rest.split_once('.') else { return vec![] };
    let p = format!("model.layers.{l}.");
    let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let mut out = vec![];
    if c.features.fused_projections {
        let qkv = format!("{p}self_attn.qkv_proj.weight");
        let of = q_dim + 2 * kv_dim;
        let gate_up = format!("{p}mlp.gate_up_proj.weight");
        match tail {
            "self_attn.q_proj.weight" => out.push((qkv, Part::Rows { start: 0, rows: q_dim, of })),
            "self_attn.k_proj.weight" => {
                out.push((qkv, Part::Rows { start: q_dim, rows: kv_dim, of }))
            }
            "self_attn.v_proj.weight" => {
                out.push((qkv, Part::Rows { start: q_dim + kv_dim, rows: kv_dim, of }))
            }
            "mlp.gate_proj.weight" => {
                out.push((gate_up, Part::Rows { start: 0, rows: c.ffn_dim, of: 2 * c.ffn_dim }))
            }
            "mlp.up_proj.weight" => out.push((
                gate_up,
                Part::Rows { start: c.ffn_dim, rows: c.ffn_dim, of: 2 * c.ffn_dim },
            )),
            _ => {}
        }
    }
    if let Some(m) = &c.features.moe {
        // Qwen3-MoE's names, then Mixtral's (w1 gate, w3 up, w2 down).
        let mixtral = |proj: &str| match proj {
            "gate_proj" => "w1",
            "up_proj" => "w3",
            _ => "w2",
        };
        if let Some(proj) =
            tail.strip_prefix("mlp.experts.").and_then(|t| t.strip_suffix(".weight"))
        {
            for e in 0..m.experts {
                out.push((format!("{p}mlp.experts.{e}.{proj}.weight"), Part::Expert(e)));
                let w = mixtral(proj);
                out.push((format!("{p}block_sparse_moe.experts.{e}.{w}.weight"), Part::Expert(e)));
            }
        }
        if tail == "mlp.gate.weight" {
            out.push((format!("{p}block_sparse_moe.gate.weight"), Part::Whole));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_llama_cpp_names() {
        let to_hf = |n: &str| gguf_to_hf(n, Some("llama"));
        assert_eq!(to_hf("blk.12.attn_q.bias"), "model.layers.12.self_attn.q_proj.bias");
        assert_eq!(
            to_hf("blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(to_hf("output.weight"), "lm_head.weight");
        assert_eq!(to_hf("blk.x.attn_q.weight"), "blk.x.attn_q.weight");
        assert_eq!(to_hf("blk.1.attn_qkv.weight"), "model.layers.1.self_attn.qkv_proj.weight");
        assert_eq!(to_hf("rope_freqs.weight"), "rope_freqs.weight");
        assert_eq!(to_hf("blk.2.ffn_up_exps.weight"), "model.layers.2.mlp.experts.up_proj.weight");
        let gemma = |n: &str| gguf_to_hf(n, Some("gemma3"));
        assert_eq!(
            gemma("blk.0.ffn_norm.weight"),
            "model.layers.0.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            gemma("blk.0.post_attention_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            gguf_to_hf("blk.3.ffn_up.weight", Some("phi3")),
            "model.layers.3.mlp.gate_up_proj.weight"
        );
        assert_eq!(
            hf_to_gguf("model.layers.7.mlp.down_proj.weight", None),
            "blk.7.ffn_down.weight"
        );
        assert_eq!(hf_to_gguf("model.embed_tokens.weight", None), "token_embd.weight");
        assert_eq!(
            hf_to_gguf("model.layers.7.mlp.experts.weight", None),
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
        for t in &tensors {
            let gguf = hf_to_gguf(&t.name, Some("qwen2"));
            assert_ne!(gguf, t.name, "{} has no GGUF name", t.name);
            assert_eq!(gguf_to_hf(&gguf, Some("qwen2")), t.name);
        }
    }
}
