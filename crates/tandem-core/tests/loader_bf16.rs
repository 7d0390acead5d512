//! Loading weights as bf16 (`LoadAs::Exactly(DType::BF16)`): bf16 files are copied as they are,
//! other types are rounded to nearest even; `LoadAs::Native` still widens bf16 to f32.

use tandem_core::loader::gguf::{GgufFile, GGML_BF16, GGML_F16, GGML_Q8_0};
use tandem_core::loader::safetensors::SafetensorsStore;
use tandem_core::loader::{LoadAs, TensorStore};
use tandem_core::{quant, DType};
use tandem_tools::gguf_writer::{quantize_ggml, GgufWriter};

/// Values that are not exact in bf16, so rounding shows.
fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.3).collect()
}

/// A one-shard safetensors image from (name, dtype, shape, data).
fn st_bytes(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let offsets = [data.len(), data.len() + bytes.len()];
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}),
        );
        data.extend_from_slice(bytes);
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

#[test]
fn safetensors_to_bf16() {
    // 15 elements: an odd count, so the 2-byte elements need padding to 4 bytes.
    let v = values(15);
    let bf: Vec<u8> = v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect();
    let f16: Vec<u8> = v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
    let f32: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let img = st_bytes(&[
        ("b", "BF16", vec![3, 5], bf.clone()),
        ("h", "F16", vec![3, 5], f16),
        ("f", "F32", vec![3, 5], f32),
    ]);
    let s = SafetensorsStore::from_bytes("mem.safetensors", img).expect("parses");

    let t = s.load("b", LoadAs::Exactly(DType::BF16)).expect("bf16 as bf16");
    assert_eq!((t.dtype, t.shape.clone()), (DType::BF16, vec![3, 5]));
    assert_eq!(t.bytes.len(), DType::BF16.storage_bytes(15));
    assert_eq!(&t.bytes[..30], &bf[..], "copied bit for bit");
    // Native keeps today's behaviour: bf16 widens to f32, exactly.
    let t = s.load("b", LoadAs::Native).expect("native");
    assert_eq!(t.dtype, DType::F32);
    assert_eq!(quant::decode(&t.bytes, DType::F32, 15), quant::decode(&bf, DType::BF16, 15));

    let t = s.load("f", LoadAs::Exactly(DType::BF16)).expect("f32 as bf16");
    assert_eq!((t.dtype, t.bytes.clone()), (DType::BF16, quant::encode(&v, DType::BF16)));
    let back = quant::decode(&t.bytes, DType::BF16, 15);
    for (a, b) in v.iter().zip(&back) {
        assert!((a - b).abs() <= a.abs() / 256.0, "{a} -> {b}");
    }
    let t = s.load("h", LoadAs::Exactly(DType::BF16)).expect("f16 as bf16");
    let via_f32 = quant::decode(&quant::encode(&v, DType::F16), DType::F16, 15);
    assert_eq!(t.bytes, quant::encode(&via_f32, DType::BF16));
}

#[test]
fn gguf_to_bf16() {
    let v = values(64);
    let mut w = GgufWriter::new();
    w.tensor("b.weight", &[2, 32], GGML_BF16, &v);
    w.tensor("h.weight", &[2, 32], GGML_F16, &v);
    w.tensor("q.weight", &[2, 32], GGML_Q8_0, &v);
    let f = GgufFile::from_bytes("mem.gguf", w.to_bytes()).expect("parses");

    let t = f.load("b.weight", LoadAs::Exactly(DType::BF16)).expect("bf16 as bf16");
    assert_eq!((t.dtype, t.shape.clone()), (DType::BF16, vec![2, 32]));
    assert_eq!(t.bytes, quantize_ggml(&v, GGML_BF16), "copied bit for bit");
    assert_eq!(f.load("b.weight", LoadAs::Native).expect("native").dtype, DType::F32);
    for name in ["h.weight", "q.weight"] {
        let t = f.load(name, LoadAs::Exactly(DType::BF16)).expect("as bf16");
        let f32 = f.load(name, LoadAs::F32).expect("as f32");
        assert_eq!(t.dtype, DType::BF16);
        assert_eq!(
            t.bytes,
            quant::encode(&quant::decode(&f32.bytes, DType::F32, 64), DType::BF16),
            "{name}"
        );
    }
}
