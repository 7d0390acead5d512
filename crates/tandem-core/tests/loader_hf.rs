//! HF checkpoints: config.json parsing and validation, safetensors shards (good and broken),
//! opening directories, and the real stories260K when present.

use std::path::{Path, PathBuf};
use tandem_core::loader::safetensors::SafetensorsStore;
use tandem_core::loader::{open, LoadAs, TensorStore, TokenizerSource};
use tandem_core::{quant, Arch, DType, Error, ModelConfig, RopeScaling};

const LLAMA: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
 "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
 "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
 "bos_token_id": 1, "eos_token_id": 2}"#;

fn with(base: &str, patch: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).expect("base");
    let p: serde_json::Value = serde_json::from_str(patch).expect("patch");
    for (k, x) in p.as_object().expect("object") {
        v[k] = x.clone();
    }
    v.to_string()
}

fn config_err(text: &str, needle: &str) {
    let e = ModelConfig::from_hf_json(text)
        .err()
        .unwrap_or_else(|| panic!("expected an error mentioning {needle}"));
    assert!(e.to_string().contains(needle), "'{e}' does not mention '{needle}'");
}

#[test]
fn hf_config_variants() {
    let c = ModelConfig::from_hf_json(LLAMA).expect("llama");
    assert_eq!(
        (c.arch, c.head_dim, c.rope_theta, c.rope_scaling.clone()),
        (Arch::Llama, 8, 10000.0, RopeScaling::None)
    );
    assert!(c.tie_embeddings && !c.qkv_bias);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));

    let m = ModelConfig::from_hf_json(&with(LLAMA, r#"{"architectures": ["MistralForCausalLM"], "head_dim": null, "sliding_window": 4096, "eos_token_id": [2, 3], "tie_word_embeddings": null}"#)).expect("mistral");
    assert_eq!(
        (m.arch, m.head_dim, m.eos_token_ids.clone(), m.tie_embeddings),
        (Arch::Mistral, 8, vec![2, 3], false)
    );

    let q = ModelConfig::from_hf_json(&with(
        LLAMA,
        r#"{"architectures": null, "model_type": "qwen2", "rope_theta": 1000000}"#,
    ))
    .expect("qwen2");
    assert_eq!((q.arch, q.qkv_bias, q.rope_theta), (Arch::Qwen2, true, 1e6));
    assert!(
        ModelConfig::from_hf_json(&with(LLAMA, r#"{"attention_bias": true}"#))
            .expect("bias")
            .qkv_bias
    );

    let l3 = ModelConfig::from_hf_json(&with(LLAMA, r#"{"rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#)).expect("llama3");
    assert_eq!(
        l3.rope_scaling,
        RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192
        }
    );
    let lin = ModelConfig::from_hf_json(&with(
        LLAMA,
        r#"{"rope_scaling": {"type": "linear", "factor": 2}}"#,
    ))
    .expect("linear");
    assert_eq!(lin.rope_scaling, RopeScaling::Linear { factor: 2.0 });
}

#[test]
fn hf_config_errors() {
    let e = ModelConfig::from_hf_json(&with(LLAMA, r#"{"architectures": ["GPT2LMHeadModel"]}"#))
        .expect_err("unknown");
    assert!(matches!(e, Error::UnknownArchitecture(ref a) if a == "GPT2LMHeadModel"), "{e}");
    config_err(&with(LLAMA, r#"{"rope_scaling": {"type": "yarn", "factor": 4}}"#), "yarn");
    config_err(
        &with(LLAMA, r#"{"rope_scaling": {"rope_type": "llama3", "factor": 8}}"#),
        "low_freq_factor",
    );
    config_err(&with(LLAMA, r#"{"num_key_value_heads": 3}"#), "n_kv_heads");
    config_err(&with(LLAMA, r#"{"head_dim": 7}"#), "head_dim");
    config_err(&with(LLAMA, r#"{"num_hidden_layers": 0}"#), "n_layers");
    config_err(&with(LLAMA, r#"{"hidden_size": 1000000000}"#), "dim");
    config_err(&with(LLAMA, r#"{"hidden_size": -4}"#), "hidden_size");
    config_err(&with(LLAMA, r#"{"hidden_size": null}"#), "missing hidden_size");
    config_err(&with(LLAMA, r#"{"num_attention_heads": 0}"#), "n_heads");
    config_err(&with(LLAMA, r#"{"eos_token_id": 999}"#), "eos_token_id");
    config_err(&with(LLAMA, r#"{"rms_norm_eps": 0}"#), "rms_norm_eps");
    config_err(&with(LLAMA, r#"{"tie_word_embeddings": "yes"}"#), "tie_word_embeddings");
    config_err("[1, 2]", "not a JSON object");
    config_err("{", "config.json");
}

/// A safetensors image from (name, dtype, shape, data).
fn st_bytes(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}));
        data.extend_from_slice(bytes);
    }
    raw_st(&serde_json::Value::Object(header).to_string(), &data)
}

fn raw_st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn safetensors_dtypes_and_conversions() {
    let v: Vec<f32> = (0..96).map(|i| (i as f32 - 40.0) / 16.0).collect();
    let f16b: Vec<u8> = v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
    let bf16b: Vec<u8> = v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect();
    let img = st_bytes(&[
        ("a", "F32", vec![3, 32], f32_bytes(&v)),
        ("b", "F16", vec![96], f16b),
        ("c", "BF16", vec![2, 48], bf16b),
        ("i", "I64", vec![1], vec![0; 8]),
    ]);
    let s = SafetensorsStore::from_bytes("mem.safetensors", img).expect("parses");
    assert_eq!(s.infos().len(), 4);
    for (name, native, shape) in [
        ("a", DType::F32, vec![3, 32]),
        ("b", DType::F16, vec![96]),
        ("c", DType::F32, vec![2, 48]),
    ] {
        let t = s.load(name, LoadAs::Native).expect("native");
        assert_eq!((t.dtype, t.shape.clone()), (native, shape), "{name}");
        // These values are exact in f16 and bf16.
        assert_eq!(quant::decode(&t.bytes, t.dtype, 96), v, "{name}");
        let t = s.load(name, LoadAs::F32).expect("f32");
        assert_eq!(quant::decode(&t.bytes, DType::F32, 96), v, "{name}");
        let t = s.load(name, LoadAs::Exactly(DType::Q4_1)).expect("q4_1");
        assert_eq!(t.bytes, quant::encode(&v, DType::Q4_1), "{name}");
    }
    let e = s.load("i", LoadAs::F32).expect_err("I64 unsupported");
    assert!(e.to_string().contains("I64"), "{e}");
    assert!(matches!(s.load("zz", LoadAs::F32), Err(Error::MissingTensor(_))));
    assert!(matches!(s.load("a", LoadAs::Exactly(DType::U32)), Err(Error::InvalidParameter(_))));
}

#[test]
fn safetensors_rejects_broken_files() {
    let good = st_bytes(&[
        ("a", "F32", vec![2, 4], f32_bytes(&[1.0; 8])),
        ("b", "F32", vec![4], f32_bytes(&[2.0; 4])),
    ]);
    assert!(SafetensorsStore::from_bytes("x", good.clone()).is_ok());
    let check = |bytes: Vec<u8>, what: &str| {
        let e = SafetensorsStore::from_bytes("bad.safetensors", bytes)
            .err()
            .unwrap_or_else(|| panic!("{what}: expected an error"));
        let msg = e.to_string();
        assert!(
            matches!(e, Error::BadModelFile { .. }) && msg.contains("bad.safetensors"),
            "{what}: {msg}"
        );
    };
    for len in 0..good.len() {
        check(good[..len].to_vec(), &format!("truncated to {len}"));
    }
    let mut b = good.clone();
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    check(b, "header length 2^40");
    let mut b = good.clone();
    b[..8].copy_from_slice(&((good.len() as u64) + 1).to_le_bytes());
    check(b, "header length past the end");
    check(raw_st("{\"a\": {\"dtype\": \"F32\",", &[0; 8]), "bad JSON");
    check(
        raw_st(r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8000]}}"#, &[0; 8]),
        "offset out of range",
    );
    check(
        raw_st(r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}"#, &[0; 8]),
        "size disagrees with shape",
    );
    check(
        raw_st(
            r#"{"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}}"#,
            &[0; 8],
        ),
        "shape overflow",
    );
    // Flipping bytes never panics.
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x5a;
        if let Ok(s) = SafetensorsStore::from_bytes("x", b) {
            for n in ["a", "b"] {
                let _ = s.load(n, LoadAs::Native);
            }
        }
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tandem-loader-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), bytes).expect("write");
}

#[test]
fn open_hf_directories() {
    let d = temp_dir("hf");
    let e = open(&d).err().expect("no config");
    assert!(e.to_string().contains("config.json"), "{e}");
    write(&d, "config.json", LLAMA);
    let e = open(&d).err().expect("no tokenizer");
    assert!(matches!(e, Error::Tokenizer(ref m) if m.contains("missing tokenizer.json")), "{e}");
    write(&d, "tokenizer.json", "{}");
    let e = open(&d).err().expect("no weights");
    assert!(
        matches!(e, Error::BadModelFile { .. }) && e.to_string().contains("safetensors"),
        "{e}"
    );

    // Two shards through an index, plus generation_config's extra stop token.
    write(
        &d,
        "model-00001-of-00002.safetensors",
        st_bytes(&[("x", "F32", vec![2], f32_bytes(&[1.0, 2.0]))]),
    );
    write(
        &d,
        "model-00002-of-00002.safetensors",
        st_bytes(&[("y", "F16", vec![2], vec![0, 0x3c, 0, 0x40])]),
    );
    write(
        &d,
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#,
    );
    write(&d, "generation_config.json", r#"{"eos_token_id": [2, 7]}"#);
    let src = open(&d).expect("opens");
    assert_eq!(src.format, "safetensors");
    assert_eq!(src.config.eos_token_ids, vec![2, 7]);
    assert!(matches!(src.tokenizer, TokenizerSource::Files { tokenizer_config: None, .. }));
    let y = src.tensors.load("y", LoadAs::F32).expect("y");
    assert_eq!(quant::decode(&y.bytes, DType::F32, 2), vec![1.0, 2.0]);
    // A shard file opens as its directory.
    assert!(open(&d.join("model-00001-of-00002.safetensors")).is_ok());

    write(&d, "model.safetensors.index.json", r#"{"weight_map": {"x": "../../etc/passwd"}}"#);
    assert!(open(&d).is_err());
    write(
        &d,
        "model.safetensors.index.json",
        r#"{"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00001-of-00002.safetensors", "z": "model-00002-of-00002.safetensors"}}"#,
    );
    assert!(open(&d).is_ok());
    write(
        &d,
        "model-00002-of-00002.safetensors",
        st_bytes(&[("x", "F32", vec![1], f32_bytes(&[1.0]))]),
    );
    let e = open(&d).err().expect("duplicate tensor");
    assert!(e.to_string().contains("another shard"), "{e}");

    write(&d, "config.json", with(LLAMA, r#"{"architectures": ["FalconForCausalLM"]}"#));
    assert!(matches!(open(&d), Err(Error::UnknownArchitecture(_))));
    let e = open(&d.join("does-not-exist")).err().expect("missing path");
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("does-not-exist"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn stories260k_safetensors() {
    let Some(dir) = tandem_testkit::shared_model("stories260K", &["model.safetensors"]) else {
        return;
    };
    let src = open(&dir).expect("opens");
    let c = &src.config;
    assert_eq!(
        (
            c.arch,
            c.dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.ffn_dim,
            c.vocab_size,
            c.max_position
        ),
        (Arch::Llama, 64, 5, 8, 4, 8, 172, 512, 512)
    );
    assert!(c.tie_embeddings);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));
    assert!(matches!(src.tokenizer, TokenizerSource::Files { tokenizer_config: Some(_), .. }));
    for (name, shape) in [
        ("model.embed_tokens.weight", vec![512, 64]),
        ("model.layers.0.self_attn.q_proj.weight", vec![64, 64]),
        ("model.layers.4.self_attn.k_proj.weight", vec![32, 64]),
        ("model.layers.0.mlp.down_proj.weight", vec![64, 172]),
        ("model.norm.weight", vec![64]),
    ] {
        let t = src.tensors.load(name, LoadAs::Native).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((t.dtype, t.shape.clone()), (DType::F32, shape), "{name}");
    }
    for info in src.tensors.infos() {
        let t = src.tensors.load(&info.name, LoadAs::Exactly(DType::Q8_0)).expect("q8");
        assert_eq!(t.bytes.len(), DType::Q8_0.storage_bytes(info.shape.iter().product()));
    }
}
