//! Family configs: the Hub's spelling and transformers 5's give the same description, and
//! configs that contradict themselves are refused with the field's name.

use std::path::PathBuf;

use tandem_core::config::{Activation, Arch};
use tandem_core::ModelConfig;

fn fixture(family: &str, file: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/families")
        .join(family)
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const FAMILIES: [&str; 7] =
    ["qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3", "mistral", "mixtral"];

#[test]
fn hub_and_transformers5_configs_describe_the_same_model() {
    for family in FAMILIES {
        let v5 = ModelConfig::from_hf_json(&fixture(family, "config.json")).unwrap();
        let hub = ModelConfig::from_hf_json(&fixture(family, "config.hub.json")).unwrap();
        assert_eq!(v5, hub, "{family}");
    }
}

#[test]
fn features_are_read_per_family() {
    let c = |f: &str| ModelConfig::from_hf_json(&fixture(f, "config.json")).unwrap();
    let g2 = c("gemma2");
    assert_eq!(g2.arch, Arch::Gemma2);
    assert_eq!(g2.features.act, Activation::GeluTanh);
    assert_eq!((g2.features.attn_softcap, g2.features.final_softcap), (5.0, 3.0));
    assert_eq!(g2.attn_scale(), 1.0 / 32f32.sqrt());
    let windows: Vec<usize> = (0..4).map(|l| g2.layer_attention(l).window).collect();
    assert_eq!(windows, [16, 0, 16, 0]);
    let g3 = c("gemma3");
    assert!((0..5).all(|l| g3.layer_attention(l).local_rope) && !g3.layer_attention(5).local_rope);
    assert!(g3.features.qk_norm && g3.features.post_norms && g3.features.norm_plus_one);
    let phi = c("phi3");
    assert_eq!((phi.rot_dim(), phi.head_dim), (12, 16));
    assert!((phi.rope_scale() - 1.1547).abs() < 1e-4);
    let moe = c("qwen3_moe").features.moe.unwrap();
    assert_eq!((moe.experts, moe.top_k, moe.norm_topk, moe.ffn_dim), (8, 2, true, 16));
    assert!(c("mistral").layer_attention(1).window == 16);
    assert!(c("qwen3").layer_attention(0).window == 0);
}

/// `family`'s config with `edit` applied to its JSON.
fn edited(family: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&fixture(family, "config.json")).unwrap();
    edit(&mut v);
    v.to_string()
}

#[test]
fn contradictory_configs_are_refused_by_field() {
    use serde_json::json;
    let cases: Vec<(&str, String)> = vec![
        ("num_experts_per_tok", edited("mixtral", |v| v["num_experts_per_tok"] = json!(9))),
        ("attn_logit_softcapping", edited("gemma2", |v| v["attn_logit_softcapping"] = json!(0.0))),
        ("final_logit_softcapping", edited("gemma2", |v| v["final_logit_softcapping"] = json!(-1))),
        (
            "short_factor",
            edited("phi3", |v| v["rope_parameters"]["short_factor"] = json!([1.0, 1.0])),
        ),
        ("long_factor", edited("phi3", |v| v["rope_parameters"]["long_factor"][2] = json!(0.0))),
        (
            "num_attention_heads",
            edited("mistral", |v| {
                v["num_attention_heads"] = json!(3);
                v.as_object_mut().unwrap().remove("head_dim");
            }),
        ),
        ("layer_types", edited("gemma3", |v| v["layer_types"] = json!(["full_attention"]))),
        ("layer_types", edited("gemma3", |v| v["layer_types"][0] = json!("chunked_attention"))),
        ("mlp_only_layers", edited("qwen3_moe", |v| v["mlp_only_layers"] = json!([7]))),
        ("rope_type", edited("qwen3", |v| v["rope_parameters"]["rope_type"] = json!("yarn"))),
        (
            "partial_rotary_factor",
            edited("phi3", |v| v["rope_parameters"]["partial_rotary_factor"] = json!(1.5)),
        ),
        ("hidden_act", edited("gemma2", |v| v["hidden_activation"] = json!("relu"))),
    ];
    for (field, json) in cases {
        let err = ModelConfig::from_hf_json(&json).expect_err(field).to_string();
        let named = err.contains(field) || (field == "rope_type" && err.contains("yarn"));
        assert!(named, "the error for {field} does not name it: {err}");
    }
    let unknown = edited("qwen3", |v| v["architectures"] = json!(["FancyNewForCausalLM"]));
    let err = ModelConfig::from_hf_json(&unknown).unwrap_err().to_string();
    assert!(err.contains("FancyNewForCausalLM"), "{err}");
}

#[test]
fn a_window_longer_than_the_context_is_fine() {
    let json = edited("mistral", |v| v["sliding_window"] = serde_json::json!(1 << 20));
    assert_eq!(ModelConfig::from_hf_json(&json).unwrap().layer_attention(0).window, 1 << 20);
}
