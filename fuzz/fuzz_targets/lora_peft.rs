//! Hostile PEFT LoRA adapters against a tiny Llama's shapes: an adapter is refused with a
//! message, or every module it gives has the base projection's shapes and finite values; and
//! nothing panics, hangs or runs away with memory.
//!
//! Input: adapter_config.json, a 0 byte, then adapter_model.safetensors.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tandem_core::lora::Adapter;
use tandem_core::ModelConfig;

/// Two layers, 16 wide, grouped-query attention (2 heads, 1 KV head), MLP 32.
fn base() -> &'static ModelConfig {
    static C: OnceLock<ModelConfig> = OnceLock::new();
    C.get_or_init(|| {
        ModelConfig::from_hf_json(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 32,
                "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 2,
                "vocab_size": 8, "max_position_embeddings": 64, "rms_norm_eps": 1e-5}"#,
        )
        .expect("the base config parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(config) = std::str::from_utf8(&data[..split]) else { return };
    let weights = data.get(split + 1..).unwrap_or_default();
    let c = base();
    let Ok(adapter) = Adapter::from_peft(config, weights, c) else { return };
    assert!(!adapter.modules.is_empty());
    for m in &adapter.modules {
        let (k, out) = m.target.shape(c);
        assert!(m.layer < c.n_layers && m.rank > 0);
        assert_eq!((m.a.len(), m.b.len()), (m.rank * k, out * m.rank));
        assert!(m.a.iter().chain(&m.b).all(|v| v.is_finite()));
    }
    assert_ne!(adapter.fingerprint(), 0);
    let _ = adapter.scaled(0.5);
});
