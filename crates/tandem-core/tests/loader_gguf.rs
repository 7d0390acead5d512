//! GGUF reader: metadata and tensor round trips through the test writer, the q/k
//! un-permutation, hostile and broken files, and the real SmolLM2 GGUF when present.

use tandem_core::loader::gguf::{
    GgufFile, GgufMetadataExt, GgufValue, GGML_BF16, GGML_F16, GGML_F32, GGML_Q4_0, GGML_Q4_1,
    GGML_Q8_0,
};
use tandem_core::loader::{ggml, open, open_gguf_bytes, LoadAs, TensorStore};
use tandem_core::{quant, Arch, DType, Error};
use tandem_tools::gguf_writer::{quantize_ggml, write_string, GgufWriter};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 2001) as f32 / 1000.0
                - 1.0
        })
        .collect()
}

/// A minimal valid llama model header: 2 heads, 1 kv head, head_dim 16, dim 32.
fn llama_meta(w: &mut GgufWriter, arch: &str) {
    w.kv("general.architecture", GgufValue::String(arch.into()));
    for (k, v) in [
        ("embedding_length", 32u32),
        ("block_count", 1),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
        ("feed_forward_length", 64),
        ("context_length", 128),
    ] {
        w.kv(&format!("{arch}.{k}"), GgufValue::U32(v));
    }
    w.kv(&format!("{arch}.attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5));
    let tokens = (0..40).map(|i| GgufValue::String(format!("t{i}"))).collect();
    w.kv("tokenizer.ggml.tokens", GgufValue::Array(tokens));
    w.kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1));
    w.kv("tokenizer.ggml.eos_token_id", GgufValue::I32(2));
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, Error> {
    GgufFile::from_bytes("test.gguf", bytes)
}

fn expect_err(bytes: Vec<u8>, needle: &str) {
    match parse(bytes) {
        Ok(_) => panic!("expected an error mentioning '{needle}', got Ok"),
        Err(e) => {
            let msg = e.to_string();
            assert!(matches!(e, Error::BadModelFile { .. }), "{msg}");
            assert!(msg.contains(needle), "error '{msg}' does not mention '{needle}'");
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn metadata_round_trip_all_types() {
    let mut w = GgufWriter::new();
    let kvs = vec![
        ("a.u8", GgufValue::U8(200)),
        ("a.i8", GgufValue::I8(-5)),
        ("a.u16", GgufValue::U16(60000)),
        ("a.i16", GgufValue::I16(-30000)),
        ("a.u32", GgufValue::U32(4_000_000_000)),
        ("a.i32", GgufValue::I32(-7)),
        ("a.u64", GgufValue::U64(1 << 40)),
        ("a.i64", GgufValue::I64(-(1 << 40))),
        ("a.f32", GgufValue::F32(1.5)),
        ("a.f64", GgufValue::F64(-2.25)),
        ("a.bool", GgufValue::Bool(true)),
        ("a.str", GgufValue::String("héllo".into())),
        (
            "a.strs",
            GgufValue::Array(vec![GgufValue::String("x".into()), GgufValue::String("".into())]),
        ),
        ("a.f32s", GgufValue::Array(vec![GgufValue::F32(0.5), GgufValue::F32(-1.0)])),
        ("a.i32s", GgufValue::Array(vec![GgufValue::I32(-1), GgufValue::I32(3)])),
        ("a.nested", GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1)])])),
        ("a.empty", GgufValue::Array(vec![])),
        ("n.as_i32", GgufValue::I32(12)),
        ("n.as_u64", GgufValue::U64(12)),
    ];
    for (k, v) in &kvs {
        w.kv(k, v.clone());
    }
    for version in [2, 3] {
        w.version = version;
        let f = parse(w.to_bytes()).expect("parses");
        assert_eq!(f.version, version);
        for (k, v) in &kvs {
            assert_eq!(f.metadata.get(*k), Some(v), "{k}");
        }
        let m = &f.metadata;
        assert_eq!(m.get_u32("n.as_i32"), Some(12));
        assert_eq!(m.get_u32("n.as_u64"), Some(12));
        assert_eq!(m.get_u32("a.i32"), None, "negative is not a u32");
        assert_eq!(m.get_u32("a.u64"), None, "2^40 does not fit a u32");
        assert_eq!(m.get_f32("a.f64"), Some(-2.25));
        assert_eq!(m.get_str("a.str"), Some("héllo"));
        assert_eq!(m.get_bool("a.bool"), Some(true));
        assert_eq!(m.get_str_array("a.strs"), Some(vec!["x", ""]));
        assert_eq!(m.get_f32_array("a.f32s"), Some(vec![0.5, -1.0]));
        assert_eq!(m.get_i32_array("a.i32s"), Some(vec![-1, 3]));
        assert_eq!(m.get_str("missing"), None);
    }
}

#[test]
fn tensors_round_trip_each_type() {
    let shape = [3usize, 64];
    let src = values(shape[0] * shape[1], 7);
    let types = [
        (GGML_F32, DType::F32),
        (GGML_F16, DType::F16),
        (GGML_BF16, DType::F32),
        (GGML_Q8_0, DType::Q8_0),
        (GGML_Q4_0, DType::Q4_0),
        (GGML_Q4_1, DType::Q4_1),
    ];
    let mut w = GgufWriter::new();
    llama_meta(&mut w, "qwen2");
    w.alignment(64);
    for (ty, _) in types {
        w.tensor(&format!("t{ty}.weight"), &shape, ty, &src);
    }
    let f = parse(w.to_bytes()).expect("parses");
    assert_eq!(f.infos().len(), types.len());
    for (ty, native) in types {
        let name = format!("t{ty}.weight");
        let raw = quantize_ggml(&src, ty);
        let want = ggml::dequantize(ty, &raw).expect("supported");
        // The ggml dequantization is close to the source (sanity of the reference itself).
        for (a, b) in src.iter().zip(&want) {
            assert!((a - b).abs() < 0.15, "type {ty}: {a} vs {b}");
        }
        let t = f.load(&name, LoadAs::Native).expect("loads");
        assert_eq!((t.dtype, t.shape.clone()), (native, shape.to_vec()), "type {ty}");
        assert_eq!(t.bytes.len(), native.storage_bytes(src.len()));
        assert_eq!(
            bits(&quant::decode(&t.bytes, t.dtype, src.len())),
            bits(&want),
            "native type {ty}"
        );
        let t = f.load(&name, LoadAs::F32).expect("loads f32");
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(
            bits(&quant::decode(&t.bytes, DType::F32, src.len())),
            bits(&want),
            "f32 type {ty}"
        );
        let t = f.load(&name, LoadAs::Exactly(DType::Q8_0)).expect("loads q8");
        let got = quant::decode(&t.bytes, DType::Q8_0, src.len());
        assert_eq!(
            bits(&got),
            bits(&quant::decode(&quant::encode(&want, DType::Q8_0), DType::Q8_0, src.len()))
        );
    }
    assert!(matches!(f.load("nope", LoadAs::F32), Err(Error::MissingTensor(_))));
}

#[test]
fn ggml_q4_0_block_layout() {
    // d = 1: element j is the low nibble of byte j, element j + 16 the high nibble.
    let mut block = half::f16::from_f32(1.0).to_le_bytes().to_vec();
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = ggml::dequantize(GGML_Q4_0, &block).expect("q4_0");
    for j in 0..16 {
        assert_eq!(v[j], j as f32 - 8.0);
        assert_eq!(v[j + 16], (15 - j) as f32 - 8.0);
    }
}

/// HF -> GGUF, as llama.cpp's converter does it.
fn permute_hf_to_gguf(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let gguf_row = h * hd + 2 * i + j;
                let hf_row = h * hd + j * (hd / 2) + i;
                out[gguf_row * cols..(gguf_row + 1) * cols]
                    .copy_from_slice(&w[hf_row * cols..(hf_row + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn llama_q_k_rows_are_unpermuted() {
    let (cols, hd) = (32, 16);
    let q_hf: Vec<f32> =
        (0..2 * hd * cols).map(|i| (i / cols) as f32 * 100.0 + (i % cols) as f32).collect();
    let k_hf: Vec<f32> =
        (0..hd * cols).map(|i| -((i / cols) as f32 * 100.0 + (i % cols) as f32)).collect();
    for arch in ["llama", "qwen2"] {
        let permuted = arch == "llama";
        let (q_file, k_file) = if permuted {
            (permute_hf_to_gguf(&q_hf, 2 * hd, cols, 2), permute_hf_to_gguf(&k_hf, hd, cols, 1))
        } else {
            (q_hf.clone(), k_hf.clone())
        };
        assert_ne!(q_file == q_hf, permuted);
        for ty in [GGML_F32, GGML_Q8_0, GGML_Q4_1] {
            let mut w = GgufWriter::new();
            llama_meta(&mut w, arch);
            w.tensor("blk.0.attn_q.weight", &[2 * hd, cols], ty, &q_file);
            w.tensor("blk.0.attn_k.weight", &[hd, cols], ty, &k_file);
            w.tensor("blk.0.attn_v.weight", &[hd, cols], ty, &k_file);
            let f = parse(w.to_bytes()).expect("parses");
            // One block per row, so quantizing the HF rows gives the same blocks, reordered.
            for (name, hf) in [("q_proj", &q_hf), ("k_proj", &k_hf)] {
                let t = f
                    .load(&format!("model.layers.0.self_attn.{name}.weight"), LoadAs::Native)
                    .expect("loads");
                let want = ggml::dequantize(ty, &quantize_ggml(hf, ty)).expect("supported");
                assert_eq!(
                    bits(&quant::decode(&t.bytes, t.dtype, hf.len())),
                    bits(&want),
                    "{arch} {name} type {ty}"
                );
            }
            // v is never permuted.
            let v = f.load("model.layers.0.self_attn.v_proj.weight", LoadAs::F32).expect("loads");
            let want = ggml::dequantize(ty, &quantize_ggml(&k_file, ty)).expect("supported");
            assert_eq!(bits(&quant::decode(&v.bytes, DType::F32, k_file.len())), bits(&want));
        }
    }
}

#[test]
fn open_gguf_file_and_bytes() {
    let mut w = GgufWriter::new();
    llama_meta(&mut w, "llama");
    w.tensor("token_embd.weight", &[40, 32], GGML_Q8_0, &values(40 * 32, 1));
    w.tensor("output_norm.weight", &[32], GGML_F32, &values(32, 2));
    let bytes = w.to_bytes();
    let src = open_gguf_bytes("mem.gguf", bytes.clone()).expect("opens");
    assert_eq!(src.format, "gguf v3");
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
        (Arch::Llama, 32, 1, 2, 1, 16, 64, 40, 128)
    );
    assert!(c.tie_embeddings, "no output.weight means tied");
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));
    let names: Vec<&str> = src.tensors.infos().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["model.embed_tokens.weight", "model.norm.weight"]);
    assert_eq!(
        src.tensors.load("model.embed_tokens.weight", LoadAs::Native).expect("embed").dtype,
        DType::Q8_0
    );

    let dir = std::env::temp_dir().join(format!("tandem-loader-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Detected by magic, whatever the extension.
    let path = dir.join("model.bin");
    std::fs::write(&path, &bytes).expect("write");
    let src = open(&path).expect("opens by magic");
    assert_eq!(src.config.dim, 32);
    assert!(matches!(src.tokenizer, tandem_core::loader::TokenizerSource::Gguf(_)));
    let missing = open(&dir.join("nope.gguf")).err().expect("missing file errs");
    assert!(
        matches!(missing, Error::Io { .. }) && missing.to_string().contains("nope.gguf"),
        "{missing}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gguf_config_errors_name_the_problem() {
    let mut w = GgufWriter::new();
    llama_meta(&mut w, "gpt2");
    let e = open_gguf_bytes("m", w.to_bytes()).err().expect("unknown arch");
    assert!(matches!(e, Error::UnknownArchitecture(ref a) if a == "gpt2"), "{e}");
    let mut w = GgufWriter::new();
    w.kv("general.architecture", GgufValue::String("llama".into()));
    let e = open_gguf_bytes("m", w.to_bytes()).err().expect("missing keys");
    assert!(
        matches!(e, Error::BadConfig(_)) && e.to_string().contains("llama.embedding_length"),
        "{e}"
    );
}

#[test]
fn llama3_rope_freqs_tensor_becomes_rope_scaling() {
    let want = tandem_core::RopeScaling::Llama3 {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192,
    };
    let build = |factors: &[f32]| {
        let mut w = GgufWriter::new();
        llama_meta(&mut w, "llama");
        w.kv("llama.rope.freq_base", GgufValue::F32(500000.0));
        w.tensor("rope_freqs.weight", &[factors.len()], GGML_F32, factors);
        open_gguf_bytes("m", w.to_bytes())
    };
    let cfg = build(&[1.0; 8]).expect("all-ones factors").config;
    assert_eq!(cfg.rope_scaling, tandem_core::RopeScaling::None);
    // llama.cpp's converter: factor = base_freq / scaled_freq per frequency.
    let scaled =
        tandem_core::ModelConfig { rope_scaling: want.clone(), ..cfg.clone() }.rope_inv_freq();
    let factors: Vec<f32> = cfg.rope_inv_freq().iter().zip(&scaled).map(|(b, s)| b / s).collect();
    assert!(
        factors.iter().any(|&f| f > 1.0 && f < 32.0),
        "head_dim 16 at theta 5e5 covers the smooth band"
    );
    assert_eq!(build(&factors).expect("llama3 factors").config.rope_scaling, want);
    let mut odd = factors.clone();
    odd[3] *= 1.5;
    let e = build(&odd).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("rope_freqs.weight"), "{e}");
    let e = build(&factors[..4]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("4 factors"), "{e}");
}

// ---- hostile and broken files --------------------------------------------------------------

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn small_valid() -> Vec<u8> {
    let mut w = GgufWriter::new();
    llama_meta(&mut w, "llama");
    w.tensor("blk.0.attn_q.weight", &[32, 32], GGML_Q4_1, &values(32 * 32, 3));
    w.tensor("blk.0.attn_norm.weight", &[32], GGML_F32, &values(32, 4));
    w.to_bytes()
}

fn load_all(f: &GgufFile) {
    let names: Vec<String> = f.infos().iter().map(|i| i.name.clone()).collect();
    for n in names {
        for as_ in [LoadAs::Native, LoadAs::F32, LoadAs::Exactly(DType::Q4_0)] {
            let _ = f.load(&n, as_);
        }
    }
}

#[test]
fn rejects_bad_headers() {
    let mut b = small_valid();
    b[0] = b'X';
    expect_err(b, "magic");
    expect_err(header(1, 0, 0), "v1");
    expect_err(header(4, 0, 0), "version 4");
    expect_err(header(3u32.swap_bytes(), 0, 0), "big-endian");
    expect_err(b"GG".to_vec(), "truncated");
    expect_err(header(3, 1 << 62, 0), "tensor count");
    expect_err(header(3, 0, u64::MAX), "metadata count");

    // A key claiming 2^50 bytes.
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&(1u64 << 50).to_le_bytes());
    b.extend_from_slice(&[b'a'; 64]);
    expect_err(b, "string of 1125899906842624 bytes");

    // An array claiming 2^60 elements.
    let mut b = header(3, 0, 1);
    write_string(&mut b, "big");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    expect_err(b, "metadata array 'big'");

    // 2^26 u8 elements really present (as if tensor data followed): refused by the budget,
    // since each parsed value costs ~32 bytes.
    let mut b = header(3, 0, 1);
    write_string(&mut b, "bytes");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 26).to_le_bytes());
    b.resize(b.len() + (1 << 26), 0);
    expect_err(b, "array elements in total");
    let mut b = header(3, 1 << 21, 0);
    b.resize(b.len() + (24 << 21), 0);
    expect_err(b, "more than any model");

    let kv = |ty: u32, payload: &[u8]| {
        let mut b = header(3, 0, 1);
        write_string(&mut b, "k");
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(payload);
        b
    };
    expect_err(kv(13, &[0; 8]), "unknown value type 13");
    expect_err(kv(7, &[2]), "bool byte 2");
    expect_err(kv(8, &[2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe]), "not UTF-8");
    assert!(parse(kv(4, &3u32.to_le_bytes())).is_ok());
    let mut w = GgufWriter::new();
    w.alignment(3);
    expect_err(w.to_bytes(), "general.alignment");
    let mut w = GgufWriter::new();
    w.kv("x", GgufValue::U8(1)).kv("x", GgufValue::U8(2));
    expect_err(w.to_bytes(), "duplicate metadata key 'x'");
    // Arrays nested without end would exhaust the stack.
    let mut b = kv(9, &[]);
    for _ in 0..100_000 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    expect_err(b, "nested");
}

#[test]
fn rejects_bad_tensor_directory() {
    let tensor = |dims: &[u64], ty: u32, offset: u64, data: usize| {
        let mut b = header(3, 1, 0);
        write_string(&mut b, "w");
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.resize(b.len().next_multiple_of(32) + data, 0);
        b
    };
    assert!(parse(tensor(&[32, 2], GGML_F32, 0, 256)).is_ok());
    expect_err(tensor(&[32, 2], GGML_F32, 0, 255), "past the end");
    expect_err(tensor(&[32, 2], GGML_F32, 1 << 40, 256), "past the end");
    expect_err(tensor(&[32, 2], GGML_F32, u64::MAX - 31, 256), "past the end");
    expect_err(tensor(&[32, 2], GGML_F32, 4, 256), "alignment");
    expect_err(tensor(&[1 << 32, 1 << 32, 1 << 32], GGML_F32, 0, 0), "overflow");
    expect_err(tensor(&[u64::MAX, 2], GGML_F32, 0, 0), "overflow");
    expect_err(tensor(&[1 << 62], GGML_F32, 0, 0), "");
    expect_err(tensor(&[32, 2], 99, 0, 256), "unknown ggml type 99");
    expect_err(tensor(&[1, 1, 1, 1, 1], GGML_F32, 0, 4), "5 dimensions");
    expect_err(tensor(&[], GGML_F32, 0, 4), "0 dimensions");
    expect_err(tensor(&[33, 1], GGML_Q8_0, 0, 64), "not a multiple");
    // K-quant rows must be whole 256-element blocks too.
    expect_err(tensor(&[300, 1], 12, 0, 4096), "not a multiple of the Q4_K block size 256");
    expect_err(tensor(&[32, 1], 20 + 3, 0, 4096), "not a multiple of the IQ4_XS block size 256");
    // Known types tandem cannot load: the file opens, loading names the type and lists what
    // tandem loads.
    for (id, name, bytes) in [
        (16u32, "IQ2_XXS", 66),
        (19, "IQ1_S", 50),
        (21, "IQ3_S", 110),
        (34, "TQ1_0", 54),
        (35, "TQ2_0", 66),
        (15, "Q8_K", 292),
    ] {
        let f = parse(tensor(&[256], id, 0, bytes)).unwrap_or_else(|e| panic!("{name} opens: {e}"));
        let e = f.load("w", LoadAs::Native).expect_err("does not load").to_string();
        assert!(
            e.contains(&format!("ggml type {name} is not supported"))
                && e.contains("Q4_K")
                && e.contains("IQ4_XS"),
            "{e}"
        );
    }
    // Q4_K loads as the blocks the file holds (144 bytes a block, no padding needed).
    let f = parse(tensor(&[256], 12, 0, 144)).expect("Q4_K opens");
    let t = f.load("w", LoadAs::Native).expect("Q4_K loads");
    assert_eq!((t.dtype, t.bytes.len()), (DType::Q4_K, 144));
    // Another block type tandem quantizes to is made through f32; one it only loads is
    // refused, not attempted.
    let t = f.load("w", LoadAs::Exactly(DType::Q6_K)).expect("Q4_K -> Q6_K requantizes");
    assert_eq!((t.dtype, t.bytes.len()), (DType::Q6_K, 212));
    let e = f.load("w", LoadAs::Exactly(DType::Q5_K)).expect_err("no Q4_K -> Q5_K").to_string();
    assert!(
        e.contains("cannot convert Q4_K to q5_k") && e.contains("does not quantize to q5_k"),
        "{e}"
    );
    // Q6_K blocks (210 bytes) gain 2 bytes of padding each.
    let f = parse(tensor(&[512], 14, 0, 420)).expect("Q6_K opens");
    assert_eq!(f.load("w", LoadAs::Native).expect("Q6_K loads").bytes.len(), 424);
}

#[test]
fn truncated_and_corrupted_files_never_panic() {
    let good = small_valid();
    let f = parse(good.clone()).expect("valid");
    load_all(&f);
    for len in 0..good.len() {
        match parse(good[..len].to_vec()) {
            Err(Error::BadModelFile { .. }) => {}
            Err(e) => panic!("truncated to {len}: unexpected error kind {e}"),
            // Cutting only trailing padding after the last tensor can leave a valid file.
            Ok(f) => load_all(&f),
        }
    }
    // Flip every byte of the header region and some of the data; whatever parses must load
    // or fail cleanly.
    for i in 0..good.len() {
        for x in [0xffu8, 0x80, 0x01] {
            let mut b = good.clone();
            b[i] ^= x;
            if let Ok(f) = parse(b) {
                load_all(&f);
                let _ = tandem_core::ModelConfig::from_gguf(&f.metadata);
                let _ = f.model_config();
            }
        }
    }
}

// ---- the real SmolLM2 GGUF ----------------------------------------------------------------

#[test]
fn smollm2_gguf() {
    let Some(path) = tandem_testkit::default_model(tandem_tools::default_model::path().ok()) else {
        return;
    };
    let src = open(&path).expect("opens");
    assert_eq!(src.format, "gguf v3");
    let c = &src.config;
    assert_eq!(
        (c.arch, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size),
        (Arch::Llama, 576, 30, 9, 3, 64, 1536, 49152)
    );
    assert_eq!(c.rope_theta, 100000.0);
    assert!(c.tie_embeddings);
    assert!(!c.qkv_bias);
    assert_eq!((c.bos_token_id, c.eos_token_ids.first().copied()), (Some(1), Some(2)));
    let t = &src.tensors;
    let q = t.load("model.layers.0.self_attn.q_proj.weight", LoadAs::Native).expect("q");
    assert_eq!((q.dtype, q.shape.clone()), (DType::Q4_1, vec![576, 576]));
    let k = t.load("model.layers.0.self_attn.k_proj.weight", LoadAs::Native).expect("k");
    assert_eq!((k.dtype, k.shape.clone()), (DType::Q4_1, vec![192, 576]));
    let e = t.load("model.embed_tokens.weight", LoadAs::Native).expect("embed");
    assert_eq!((e.dtype, e.shape.clone()), (DType::Q8_0, vec![49152, 576]));
    let n = t.load("model.layers.0.input_layernorm.weight", LoadAs::Native).expect("norm");
    assert_eq!((n.dtype, n.shape.clone()), (DType::F32, vec![576]));
    // Un-permuting moves whole rows: the multiset of row sums is unchanged, the order is not.
    let qf = quant::decode(
        &t.load("model.layers.0.self_attn.q_proj.weight", LoadAs::F32).expect("q f32").bytes,
        DType::F32,
        576 * 576,
    );
    let qn = quant::decode(&q.bytes, DType::Q4_1, 576 * 576);
    assert_eq!(bits(&qf), bits(&qn), "F32 and Native agree");
    assert!(qf.iter().all(|x| x.is_finite()));
    // Every tensor loads natively.
    for info in t.infos() {
        let h = t.load(&info.name, LoadAs::Native).unwrap_or_else(|e| panic!("{}: {e}", info.name));
        assert_eq!(h.bytes.len(), h.dtype.storage_bytes(h.shape.iter().product()), "{}", info.name);
    }
    assert!(
        matches!(src.tokenizer, tandem_core::loader::TokenizerSource::Gguf(ref g) if g.metadata.get_str_array("tokenizer.ggml.tokens").map(|v| v.len()) == Some(49152))
    );
}
