//! Qwen3, Gemma 3, Qwen3-MoE and Phi-3 written as GGUF (as llama.cpp's converter lays them out)
//! load back as the same model: the same logits, bit for bit, from the GGUF as from the synthetic checkpoint.

use std::path::PathBuf;

use tandem_core::model::{Model, ModelOptions, Output, Want};
use tandem_core::{DType, ModelConfig};
use tandem_cpu::CpuBackend;
use tandem_tools::gguf_writer::{placeholder_vocab, write_llama_gguf};
use tandem_tools::synthetic::{source, SyntheticOptions};

const QWEN3: &str = r#"{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
    "vocab_size": 300, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
    "tie_word_embeddings": true}"#;

const GEMMA3: &str = r#"{"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
    "vocab_size": 300, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
    "rope_local_base_freq": 10000, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    "sliding_window": 4, "sliding_window_pattern": 6, "query_pre_attn_scalar": 32,
    "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": true}"#;

const QWEN3_MOE: &str = r#"{"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 64,
    "intermediate_size": 96, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
    "norm_topk_prob": true, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 32, "vocab_size": 300, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000, "tie_word_embeddings": true}"#;

const PHI3: &str = r#"{"architectures": ["Phi3ForCausalLM"], "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
    "vocab_size": 300, "max_position_embeddings": 128, "original_max_position_embeddings": 32,
    "partial_rotary_factor": 0.5, "rope_theta": 10000, "rms_norm_eps": 1e-5, "sliding_window": 256,
    "rope_scaling": {"type": "longrope", "short_factor": [1, 1.1, 1.2, 1.3, 1.5, 1.8, 2, 3],
    "long_factor": [1, 1.5, 2, 3, 4, 6, 8, 12]}, "tie_word_embeddings": true}"#;

fn logits(source: &tandem_core::loader::ModelSource) -> Vec<f32> {
    let opts = ModelOptions { context: 128, ..ModelOptions::default() };
    let mut model = Model::load(CpuBackend::reference(), source, &opts, &mut |_, _| {}).unwrap();
    let mut seq = model.new_sequence();
    let prompt: Vec<u32> = (0..12).map(|i| 3 + i * 17).collect();
    match pollster::block_on(model.forward(&mut seq, &prompt, Want::AllLogits)).unwrap() {
        Output::Logits(l) => l,
        other => panic!("{other:?}"),
    }
}

#[test]
fn qwen3_gemma3_qwen3_moe_and_phi3_gguf_give_the_synthetic_models_logits() {
    let dir = std::env::temp_dir().join(format!("tandem-gguf-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, json) in
        [("qwen3", QWEN3), ("gemma3", GEMMA3), ("qwen3_moe", QWEN3_MOE), ("phi3", PHI3)]
    {
        let c = ModelConfig::from_hf_json(json).unwrap();
        for dtype in [DType::F32, DType::Q8_0] {
            let opts = SyntheticOptions { dtype, seed: 5, max_weight_bytes: 1 << 30 };
            let src = source(PathBuf::from(format!("{name}.json")), c.clone(), &opts).unwrap();
            let path = dir.join(format!("{name}-{dtype}.gguf"));
            write_llama_gguf(&src, placeholder_vocab(c.vocab_size), &path).unwrap();
            let back = tandem_core::loader::open(&path).unwrap();
            assert_eq!(back.config.arch, c.arch, "{name}");
            assert_eq!(back.config.describe(), c.describe(), "{name} {dtype}");
            let (a, b) = (logits(&src), logits(&back));
            assert!(a.iter().all(|x| x.is_finite()), "{name} {dtype}");
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name} {dtype}: the GGUF's logits differ"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
