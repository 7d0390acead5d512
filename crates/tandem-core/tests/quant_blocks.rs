//! The GGUF block decoders against llama.cpp's own dequantizer: the fixtures in
//! tests/fixtures/kquants hold random ggml blocks of each type and the f32 values
//! `gguf.quants.dequantize` (llama.cpp's gguf-py) gives for them (make.py there writes them).

use tandem_core::dtype::BLOCK_DTYPES;
use tandem_core::loader::ggml;
use tandem_core::quant::{self, blocks, BlockView};
use tandem_core::DType;

struct Fixture {
    ggml_type: u32,
    blocks: usize,
    raw: Vec<u8>,
    values: Vec<f32>,
}

fn fixture(dtype: DType) -> Fixture {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/kquants");
    let path = format!("{dir}/{}.bin", dtype.name());
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (committed with the repository)"));
    let word =
        |i: usize| u32::from_le_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize;
    assert_eq!(&bytes[..4], b"TQKF", "{path}");
    let (ggml_type, blocks, block_bytes) = (word(0) as u32, word(1), word(2));
    let l = dtype.block_layout().unwrap();
    assert_eq!(block_bytes, l.ggml_bytes, "{path}");
    let raw = bytes[16..16 + blocks * block_bytes].to_vec();
    let values: Vec<f32> = bytes[16 + blocks * block_bytes..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values.len(), blocks * l.elems, "{path}");
    Fixture { ggml_type, blocks, raw, values }
}

/// Bit-identical, NaNs equal to NaNs (payloads may differ between numpy and Rust).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn every_decoder_matches_llama_cpp_bit_for_bit() {
    for dtype in BLOCK_DTYPES {
        let f = fixture(dtype);
        assert_eq!(ggml::native_dtype(f.ggml_type), Some(dtype));
        let l = dtype.block_layout().unwrap();
        let numel = f.blocks * l.elems;
        let padded = blocks::from_ggml(dtype, f.raw.clone()).expect("whole blocks");
        assert_eq!(padded.len(), dtype.storage_bytes(numel));
        let view = BlockView::new(dtype, numel, &padded);
        let mut whole = vec![0f32; numel];
        view.decode_range(0, &mut whole);
        let via_loader = ggml::dequantize(f.ggml_type, &f.raw).expect("a supported type");
        let via_decode = quant::decode(&padded, dtype, numel);
        let mut wrong = 0;
        for (e, &want) in f.values.iter().enumerate() {
            for (how, got) in [
                ("get", view.get(e)),
                ("decode_range", whole[e]),
                ("ggml::dequantize", via_loader[e]),
                ("quant::decode", via_decode[e]),
            ] {
                if !same(want, got) {
                    wrong += 1;
                    if wrong <= 5 {
                        eprintln!("{dtype} element {e} (block {}, {}): {how} gives {got:e}, llama.cpp {want:e}", e / l.elems, e % l.elems);
                    }
                }
            }
        }
        assert_eq!(wrong, 0, "{dtype}: {wrong} values differ from llama.cpp's");
        // A fixture whose values were all zero or all NaN could not catch a wrong decoder.
        let distinct: std::collections::HashSet<u32> =
            f.values.iter().filter(|v| v.is_finite()).map(|v| v.to_bits()).collect();
        assert!(distinct.len() > l.elems / 4, "{dtype}: fixture too uniform");
        eprintln!("{dtype}: {numel} values from {} blocks equal llama.cpp's", f.blocks);
    }
}
