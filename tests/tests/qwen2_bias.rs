//! The Qwen2 path (q/k/v projections with a bias) on a real model: stories260K rewritten as a
//! Qwen2 checkpoint. With zero biases it must reproduce the 200 reference tokens exactly; with a
//! non-zero value bias the output must change, proving the biases are loaded and applied.

use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tandem_core::loader::{self, LoadAs};
use tandem_core::model::ModelOptions;
use tandem_core::tokenizer::Tokenizer;
use tandem_core::Arch;
use tandem_cpu::CpuBackend;
use tandem_tests::e2e::{self, Skip};

/// Writes a Qwen2 copy of stories260K into a fresh directory, with every q/k/v bias = `bias`.
fn qwen2_copy(src: &Path, name: &str, bias: f32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-qwen2-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let config = config
        .replace("LlamaForCausalLM", "Qwen2ForCausalLM")
        .replace("\"model_type\": \"llama\"", "\"model_type\": \"qwen2\"");
    std::fs::write(dir.join("config.json"), config).unwrap();

    let source = loader::open(src).unwrap();
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for info in source.tensors.infos() {
        let t = source.tensors.load(&info.name, LoadAs::F32).unwrap();
        tensors.insert(info.name.clone(), (t.shape, t.bytes));
    }
    let c = &source.config;
    for l in 0..c.n_layers {
        for (proj, rows) in
            [("q_proj", c.n_heads), ("k_proj", c.n_kv_heads), ("v_proj", c.n_kv_heads)]
        {
            let len = rows * c.head_dim;
            let data: Vec<u8> =
                bytemuck::cast_slice(&vec![if proj == "v_proj" { bias } else { 0.0f32 }; len])
                    .to_vec();
            tensors.insert(format!("model.layers.{l}.self_attn.{proj}.bias"), (vec![len], data));
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (shape, bytes))| {
            (name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

fn greedy_from_bos(dir: &Path) -> (Arch, Vec<u32>) {
    let source = loader::open(dir).expect("open qwen2 copy");
    let tokenizer = Tokenizer::load(&source.tokenizer).unwrap();
    let mut model = e2e::load(CpuBackend::fast(2).unwrap(), &source, &ModelOptions::default());
    (source.config.arch, e2e::greedy(&mut model, &tokenizer, &[1], 200))
}

#[test]
fn qwen2_biases_are_loaded_and_applied() {
    let src = match e2e::stories_dir() {
        Ok(d) => d,
        Err(Skip(why)) => return eprintln!("SKIP qwen2_biases_are_loaded_and_applied: {why}"),
    };
    let reference =
        e2e::ids(&e2e::read_json(&src.join("reference_greedy.json"))["greedy_token_ids"]);

    let zero = qwen2_copy(&src, "zero", 0.0);
    let (arch, tokens) = greedy_from_bos(&zero);
    assert_eq!(arch, Arch::Qwen2);
    e2e::assert_tokens_eq(&tokens, &reference, "cpu-fast qwen2 zero bias".into());

    let biased = qwen2_copy(&src, "biased", 0.5);
    let (_, tokens) = greedy_from_bos(&biased);
    assert_ne!(tokens, reference, "a value bias of 0.5 must change the output");
    for d in [zero, biased] {
        let _ = std::fs::remove_dir_all(d);
    }
}
