//! Push loaders (`loader::stream`): a file fed in chunks of any size gives, in file order,
//! exactly the tensors the memory-mapped loaders give, while holding no more than the header
//! plus one tensor plus one chunk; broken, truncated and hostile streams give clear errors.

use std::path::{Path, PathBuf};
use tandem_core::loader::gguf::{GgufFile, GgufValue, GGML_F32, GGML_Q4_1, GGML_Q8_0};
use tandem_core::loader::safetensors::SafetensorsStore;
use tandem_core::loader::stream::{FileHeader, GgufStream, SafetensorsStream, TensorSink};
use tandem_core::loader::{self, HostTensor, LoadAs, TensorStore};
use tandem_core::{DType, Error};
use tandem_tools::gguf_writer::{self, write_string, GgufWriter};

/// splitmix64: seeded chunk sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// How a test cuts a file into chunks.
#[derive(Clone, Copy, Debug)]
enum Chunks {
    /// Every byte alone.
    Bytes,
    /// Seeded sizes in 1..=max.
    Random {
        seed: u64,
        max: usize,
    },
    /// 1-byte chunks for the first `n` bytes (the header), then random sizes up to `max`.
    BytesThen {
        n: usize,
        seed: u64,
        max: usize,
    },
    Whole,
}

impl Chunks {
    fn sizes(self, len: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut rng = match self {
            Chunks::Random { seed, .. } | Chunks::BytesThen { seed, .. } => Rng(seed),
            _ => Rng(0),
        };
        while at < len {
            let n = match self {
                Chunks::Bytes => 1,
                Chunks::Whole => len,
                Chunks::BytesThen { n, .. } if at < n => 1,
                Chunks::Random { max, .. } | Chunks::BytesThen { max, .. } => 1 + rng.below(max),
            };
            let n = n.min(len - at);
            out.push(n);
            at += n;
        }
        out
    }
}

/// Records what a stream emits: names in order, and either the tensors or a check per tensor.
struct Recorder<'a> {
    as_: LoadAs,
    skip: &'a dyn Fn(&str) -> bool,
    check: &'a mut dyn FnMut(&str, HostTensor),
    names: Vec<String>,
    headers: usize,
}

impl TensorSink for Recorder<'_> {
    fn begin(&mut self, _header: &FileHeader) -> tandem_core::Result<()> {
        self.headers += 1;
        Ok(())
    }
    fn wants(&self, name: &str) -> Option<LoadAs> {
        (!(self.skip)(name)).then_some(self.as_)
    }
    fn put(&mut self, name: &str, t: HostTensor) -> tandem_core::Result<()> {
        self.names.push(name.to_string());
        (self.check)(name, t);
        Ok(())
    }
}

enum Format {
    Gguf,
    Safetensors,
}

/// Streams `bytes` in `chunks` and checks every tensor against `store.load(name, as_)`
/// bit for bit. Returns (tensor names in emission order, peak bytes buffered, largest chunk).
fn stream_matches(
    format: Format,
    bytes: &[u8],
    len_known: bool,
    chunks: Chunks,
    store: &dyn TensorStore,
    as_: LoadAs,
) -> (Vec<String>, usize, usize) {
    let len = len_known.then_some(bytes.len() as u64);
    let mut check = |name: &str, got: HostTensor| {
        let want = store.load(name, as_).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (got.dtype, &got.shape),
            (want.dtype, &want.shape),
            "{name} ({chunks:?}, {as_:?})"
        );
        assert!(got.bytes == want.bytes, "{name}: bytes differ ({chunks:?}, {as_:?})");
    };
    let skip = |_: &str| false;
    let mut sink = Recorder { as_, skip: &skip, check: &mut check, names: Vec::new(), headers: 0 };
    let sizes = chunks.sizes(bytes.len());
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut at = 0;
    let peak = match format {
        Format::Gguf => {
            let mut s = GgufStream::new("test.gguf", len);
            for n in sizes {
                s.push(&bytes[at..at + n], &mut sink)
                    .unwrap_or_else(|e| panic!("push at {at}: {e}"));
                at += n;
            }
            s.finish().expect("finish");
            s.peak_buffered()
        }
        Format::Safetensors => {
            let mut s = SafetensorsStream::new("test.safetensors", len);
            for n in sizes {
                s.push(&bytes[at..at + n], &mut sink)
                    .unwrap_or_else(|e| panic!("push at {at}: {e}"));
                at += n;
            }
            s.finish().expect("finish");
            s.peak_buffered()
        }
    };
    assert_eq!(sink.headers, 1);
    (sink.names, peak, largest)
}

fn stories() -> Option<PathBuf> {
    tandem_testkit::shared_model("stories260K", &["model.safetensors", "tok512.bin"])
}

/// stories260K rewritten as a llama.cpp-style GGUF; with `q8`, matrices whose rows are whole
/// blocks are Q8_0.
fn stories_gguf(dir: &Path, q8: bool) -> Vec<u8> {
    let source = loader::open(dir).expect("open stories260K");
    let tok = std::fs::read(dir.join("tok512.bin")).expect("tok512.bin");
    let (tokens, scores, types) = gguf_writer::llama2c_vocab(&tok, 512).expect("vocab");
    let kvs = vec![
        ("tokenizer.ggml.model", GgufValue::String("llama".into())),
        ("tokenizer.ggml.tokens", GgufValue::Array(tokens)),
        ("tokenizer.ggml.scores", GgufValue::Array(scores)),
        ("tokenizer.ggml.token_type", GgufValue::Array(types)),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
    ];
    let ty = |shape: &[usize]| {
        if q8 && shape.len() == 2 && shape[1].is_multiple_of(32) {
            GGML_Q8_0
        } else {
            GGML_F32
        }
    };
    gguf_writer::llama_gguf(&source, kvs, ty).expect("write GGUF").to_bytes()
}

fn largest_tensor(store: &dyn TensorStore) -> usize {
    store.infos().iter().map(|i| i.bytes).max().unwrap_or(0)
}

#[test]
fn gguf_stream_equals_the_mapped_loader_on_stories260k() {
    let Some(dir) = stories() else { return };
    for q8 in [false, true] {
        let bytes = stories_gguf(&dir, q8);
        let file = GgufFile::from_bytes("test.gguf", bytes.clone()).expect("parse");
        let header = file.data_offset;
        let largest = largest_tensor(&file);
        // The file order: by data offset.
        let mut order: Vec<(usize, String)> = file
            .tensors
            .iter()
            .zip(file.infos())
            .map(|(t, i)| (t.offset, i.name.clone()))
            .collect();
        order.sort();
        let order: Vec<String> = order.into_iter().map(|(_, n)| n).collect();
        assert!(
            order.iter().any(|n| n == "model.layers.0.self_attn.q_proj.weight"),
            "q is un-permuted under its HF name"
        );
        let plans = [
            Chunks::Bytes,
            Chunks::BytesThen { n: header, seed: 1, max: 4096 },
            Chunks::Random { seed: 2, max: 64 },
            Chunks::Random { seed: 3, max: 100_000 },
            Chunks::Random { seed: 4, max: 1 << 20 },
            Chunks::Whole,
        ];
        for (i, chunks) in plans.into_iter().enumerate() {
            let as_list: &[LoadAs] = if i == 0 {
                &[LoadAs::Native]
            } else {
                &[LoadAs::Native, LoadAs::F32, LoadAs::Exactly(DType::Q4_1)]
            };
            for &as_ in as_list {
                let (names, peak, chunk) =
                    stream_matches(Format::Gguf, &bytes, i % 2 == 0, chunks, &file, as_);
                assert_eq!(names, order, "{chunks:?}: every tensor, in file order");
                assert!(
                    peak < header + largest + chunk,
                    "{chunks:?}: peak {peak} >= header {header} + tensor {largest} + chunk {chunk}"
                );
                if matches!(chunks, Chunks::Bytes | Chunks::BytesThen { .. }) {
                    // Byte by byte, nothing but the header or one tensor is ever held.
                    assert!(peak <= header.max(largest), "{chunks:?}: peak {peak}");
                }
            }
        }
        eprintln!("stories260K GGUF ({} bytes, q8 {q8}): header {header} bytes, largest tensor {largest} bytes", bytes.len());
    }
}

#[test]
fn safetensors_stream_equals_the_mapped_loader_on_stories260k() {
    let Some(dir) = stories() else { return };
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    let store = SafetensorsStore::open(&[path]).expect("open");
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let largest = largest_tensor(&store);
    for (i, chunks) in [
        Chunks::Bytes,
        Chunks::BytesThen { n: header, seed: 5, max: 8192 },
        Chunks::Random { seed: 6, max: 300_000 },
        Chunks::Whole,
    ]
    .into_iter()
    .enumerate()
    {
        for as_ in [LoadAs::Native, LoadAs::Exactly(DType::F16), LoadAs::Exactly(DType::Q8_0)] {
            let (names, peak, chunk) =
                stream_matches(Format::Safetensors, &bytes, i % 2 == 1, chunks, &store, as_);
            assert_eq!(names.len(), store.infos().len(), "{chunks:?}");
            assert!(peak < header + largest + chunk, "{chunks:?}: peak {peak}");
        }
    }
}

#[test]
fn gguf_stream_equals_the_mapped_loader_on_smollm2() {
    let Some(path) = tandem_testkit::default_model(tandem_tools::default_model::path().ok()) else {
        return;
    };
    let file = GgufFile::open(&path).expect("open");
    let (header, largest) = (file.data_offset, largest_tensor(&file));
    // Read from disk in seeded chunk sizes, as a browser stream would hand them over: the test
    // never holds the file either.
    use std::io::Read;
    let mut f = std::fs::File::open(&path).expect("open");
    let len = f.metadata().expect("metadata").len();
    let mut rng = Rng(7);
    let mut count = 0;
    let mut check = |name: &str, got: HostTensor| {
        let want = file.load(name, LoadAs::Native).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got.dtype == want.dtype && got.shape == want.shape && got.bytes == want.bytes,
            "{name} differs"
        );
        count += 1;
    };
    let skip = |_: &str| false;
    let mut sink = Recorder {
        as_: LoadAs::Native,
        skip: &skip,
        check: &mut check,
        names: Vec::new(),
        headers: 0,
    };
    let mut stream = GgufStream::new("SmolLM2.gguf", Some(len));
    let mut buf = vec![0u8; 4 << 20];
    let mut biggest = 0;
    loop {
        let n = f.read(&mut buf[..1 + rng.below(4 << 20)]).expect("read");
        if n == 0 {
            break;
        }
        biggest = biggest.max(n);
        stream.push(&buf[..n], &mut sink).expect("push");
    }
    stream.finish().expect("finish");
    let peak = stream.peak_buffered();
    assert_eq!(sink.names.len(), file.tensors.len());
    assert!(
        peak < header + largest + biggest,
        "peak {peak} >= header {header} + tensor {largest} + chunk {biggest}"
    );
    eprintln!(
        "SmolLM2 GGUF ({len} bytes) streamed: {} tensors equal, header {header} bytes, largest tensor {largest}, peak buffered {peak}",
        sink.names.len()
    );
}

#[test]
fn unwanted_tensors_are_skipped_without_being_held() {
    let Some(dir) = stories() else { return };
    let bytes = stories_gguf(&dir, false);
    let file = GgufFile::from_bytes("test.gguf", bytes.clone()).expect("parse");
    let mut got = Vec::new();
    let mut check = |name: &str, _: HostTensor| got.push(name.to_string());
    let skip = |name: &str| name != "model.norm.weight";
    let mut sink = Recorder {
        as_: LoadAs::Native,
        skip: &skip,
        check: &mut check,
        names: Vec::new(),
        headers: 0,
    };
    let mut s = GgufStream::new("test.gguf", None);
    for c in bytes.chunks(1000) {
        s.push(c, &mut sink).expect("push");
    }
    s.finish().expect("finish");
    assert_eq!(got, ["model.norm.weight"]);
    // Only the header was ever held (its buffer at most doubling as pieces arrive), not any
    // skipped tensor: the embedding alone is several times the header.
    let largest = file.tensors.iter().map(|t| t.n_bytes).max().unwrap_or(0);
    assert!(
        largest > 2 * file.data_offset + 1000,
        "the check needs a tensor bigger than the header"
    );
    assert!(s.peak_buffered() <= 2 * file.data_offset + 1000, "peak {}", s.peak_buffered());
}

// ---- errors -----------------------------------------------------------------------------

/// Streams `bytes` (in `chunk`-byte pieces) wanting everything; the first error's text.
fn gguf_error(bytes: &[u8], len: Option<u64>, chunk: usize, limit: Option<usize>) -> String {
    let mut check = |_: &str, _: HostTensor| {};
    let skip = |_: &str| false;
    let mut sink = Recorder {
        as_: LoadAs::Native,
        skip: &skip,
        check: &mut check,
        names: Vec::new(),
        headers: 0,
    };
    let mut s = match limit {
        Some(l) => GgufStream::with_header_limit("test.gguf", len, l),
        None => GgufStream::new("test.gguf", len),
    };
    let r =
        bytes.chunks(chunk.max(1)).try_for_each(|c| s.push(c, &mut sink)).and_then(|()| s.finish());
    match r {
        Ok(()) => panic!("expected an error"),
        Err(e) => {
            assert!(matches!(e, Error::BadModelFile { .. }), "{e}");
            // Once failed, a stream refuses more bytes rather than going on half-broken.
            if !bytes.is_empty() {
                assert!(s.push(&bytes[..1], &mut sink).is_err() || s.finish().is_err());
            }
            e.to_string()
        }
    }
}

fn small_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", GgufValue::String("llama".into()));
    w.kv(
        "tokenizer.ggml.tokens",
        GgufValue::Array((0..50).map(|i| GgufValue::String(format!("t{i}"))).collect()),
    );
    w.tensor("a.weight", &[4, 32], GGML_Q4_1, &[0.5; 128]);
    w.tensor("b.weight", &[32], GGML_F32, &[1.0; 32]);
    w.to_bytes()
}

#[test]
fn truncated_streams_are_errors() {
    let good = small_gguf();
    let file = GgufFile::from_bytes("x", good.clone()).expect("valid");
    let last_end =
        file.tensors.iter().map(|t| file.data_offset + t.offset + t.n_bytes).max().unwrap();
    for cut in (0..last_end).step_by(7) {
        for chunk in [1, 13, 4096] {
            // Length unknown: the end of the stream is where it is found out.
            let e = gguf_error(&good[..cut], None, chunk, None);
            assert!(e.contains("truncated"), "cut at {cut}: {e}");
            // Length known: the stream ends short of it.
            let e = gguf_error(&good[..cut], Some(good.len() as u64), chunk, None);
            assert!(e.contains("truncated"), "cut at {cut} (length known): {e}");
        }
    }
    // More bytes than the declared length.
    let e = gguf_error(&good, Some(good.len() as u64 - 1), 64, None);
    assert!(e.contains("more than the") || e.contains("past the end"), "{e}");
}

#[test]
fn garbage_and_hostile_headers_are_errors() {
    let e = gguf_error(b"PK\x03\x04 this is a zip file, not a model", None, 3, None);
    assert!(e.contains("not a GGUF file"), "{e}");
    let mut v1 = b"GGUF".to_vec();
    v1.extend_from_slice(&1u32.to_le_bytes());
    v1.resize(64, 0);
    assert!(gguf_error(&v1, None, 1, None).contains("v1"));

    // A header larger than the limit.
    let good = small_gguf();
    let e = gguf_error(&good, None, 100, Some(256));
    assert!(e.contains("header") && e.contains("256 bytes"), "{e}");
    // A string that claims 2^50 bytes: refused as soon as the claim is read, not after
    // buffering (the stream has no length, so only the limit can stop it).
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(1u64 << 50).to_le_bytes());
    b.extend_from_slice(&[b'a'; 64]);
    let e = gguf_error(&b, None, 1, None);
    assert!(e.contains("MiB"), "{e}");
    // With the length known, the same claim is a truncation.
    assert!(gguf_error(&b, Some(1 << 20), 1, None).contains("truncated"));
    // Unknown value type, nesting.
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    write_string(&mut b, "k");
    b.extend_from_slice(&13u32.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    assert!(gguf_error(&b, None, 5, None).contains("unknown type 13"));
}

#[test]
fn overlapping_tensors_are_an_error() {
    // Two tensors whose offsets point at the same bytes (the mapped loader tolerates it; a
    // stream cannot hand the same bytes out twice).
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    for name in ["a", "b"] {
        write_string(&mut b, name);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&8u64.to_le_bytes());
        b.extend_from_slice(&GGML_F32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
    }
    b.resize(b.len().next_multiple_of(32) + 32, 0);
    assert!(GgufFile::from_bytes("x", b.clone()).is_ok());
    let e = gguf_error(&b, Some(b.len() as u64), 16, None);
    assert!(e.contains("overlap"), "{e}");
}

#[test]
fn corrupted_streams_never_panic() {
    let good = small_gguf();
    for i in 0..good.len() {
        for x in [0xffu8, 0x80, 0x01] {
            let mut b = good.clone();
            b[i] ^= x;
            for (len, chunk) in [(None, 1), (Some(b.len() as u64), 7)] {
                let mut check = |_: &str, _: HostTensor| {};
                let skip = |_: &str| false;
                let mut sink = Recorder {
                    as_: LoadAs::Native,
                    skip: &skip,
                    check: &mut check,
                    names: Vec::new(),
                    headers: 0,
                };
                let mut s = GgufStream::with_header_limit("x", len, 1 << 20);
                let _ = b
                    .chunks(chunk)
                    .try_for_each(|c| s.push(c, &mut sink))
                    .and_then(|()| s.finish());
            }
        }
    }
}

#[test]
fn safetensors_errors() {
    let st_error = |bytes: &[u8], len: Option<u64>, limit: usize| -> String {
        let mut check = |_: &str, _: HostTensor| {};
        let skip = |_: &str| false;
        let mut sink = Recorder {
            as_: LoadAs::Native,
            skip: &skip,
            check: &mut check,
            names: Vec::new(),
            headers: 0,
        };
        let mut s = SafetensorsStream::with_header_limit("m.safetensors", len, limit);
        match bytes.chunks(3).try_for_each(|c| s.push(c, &mut sink)).and_then(|()| s.finish()) {
            Ok(()) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    };
    let json = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let file = |json: &[u8], data: usize| {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json);
        b.resize(b.len() + data, 0);
        b
    };
    assert!(st_error(&file(b"{not json", 0), None, 1 << 20).contains("invalid safetensors"));
    assert!(st_error(&file(json, 4), None, 1 << 20).contains("truncated"));
    assert!(st_error(&file(json, 4), Some(file(json, 4).len() as u64), 1 << 20)
        .contains("bytes of data"));
    assert!(st_error(&file(json, 8), None, 16).contains("16 bytes tandem accepts"));
    let bad_offsets = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
    assert!(st_error(&file(bad_offsets, 4), None, 1 << 20).contains("invalid safetensors"));
    assert!(st_error(&u64::MAX.to_le_bytes(), None, 1 << 20).contains("header"));
    assert!(st_error(b"", Some(0), 1 << 20).contains("truncated"));
}
