//! A model pushed file by file, each file in seeded random chunks (`model::ModelStream`, what
//! the browser does), must generate exactly what the reference and `Model::load` give: the HF
//! safetensors layout (one or two shards), a llama.cpp-style GGUF, and the real SmolLM2 GGUF;
//! on the CPU and on WebGPU. Missing, duplicate and misordered files are clear errors.

use std::collections::HashMap;
use tandem_core::loader::gguf::{GgufValue, GGML_F32, GGML_Q8_0};
use tandem_core::loader::{self, LoadAs, TensorStore};
use tandem_core::model::{Model, ModelOptions, ModelStream, StreamedModel};
use tandem_core::tokenizer::{ChatMessage, Tokenizer};
use tandem_core::Backend;
use tandem_cpu::CpuBackend;
use tandem_tests::e2e::{self, Skip};
use tandem_tools::gguf_writer;

/// splitmix64 chunk sizes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// Feeds `files` (name, bytes) through a stream in chunks of 1..=`max` bytes.
fn stream<B: Backend>(
    backend: B,
    opts: &ModelOptions,
    files: &[(&str, &[u8])],
    seed: u64,
    max: usize,
) -> tandem_core::Result<StreamedModel<B>> {
    let mut s = ModelStream::new(backend, opts);
    let mut rng = Rng(seed);
    for (name, bytes) in files {
        s.begin_file(name, Some(bytes.len() as u64))?;
        let mut at = 0;
        while at < bytes.len() {
            let n = (1 + rng.below(max)).min(bytes.len() - at);
            s.push(&bytes[at..at + n])?;
            at += n;
        }
        s.end_file()?;
    }
    s.finish()
}

fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn reference_tokens(dir: &std::path::Path) -> (Vec<u32>, Vec<u32>) {
    let r = e2e::read_json(&dir.join("reference_greedy.json"));
    (e2e::ids(&r["input_ids"]), e2e::ids(&r["greedy_token_ids"]))
}

/// Greedy tokens of a streamed model, with its own tokenizer.
fn greedy<B: Backend>(s: &mut StreamedModel<B>, prompt: &[u32], n: usize) -> Vec<u32> {
    let tokenizer = Tokenizer::load(&s.tokenizer).expect("tokenizer");
    e2e::greedy(&mut s.model, &tokenizer, prompt, n)
}

/// stories260K's HF files, its weights split into two shards by tensor name.
struct HfFiles {
    small: Vec<(&'static str, Vec<u8>)>,
    shards: [Vec<u8>; 2],
    /// Tensor names of the second shard.
    second: Vec<String>,
}

fn stories_hf(dir: &std::path::Path) -> HfFiles {
    let store = loader::safetensors::SafetensorsStore::open(&[dir.join("model.safetensors")])
        .expect("open");
    let mut names: Vec<String> = store.infos().iter().map(|i| i.name.clone()).collect();
    names.sort();
    let half = names.len() / 2;
    let shard = |names: &[String]| {
        let tensors: Vec<(String, tandem_core::loader::HostTensor)> =
            names.iter().map(|n| (n.clone(), store.load(n, LoadAs::F32).expect("load"))).collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        t.shape.clone(),
                        &t.bytes,
                    )
                    .expect("view"),
                )
            })
            .collect();
        safetensors::serialize(views, None::<HashMap<String, String>>).expect("serialize")
    };
    HfFiles {
        small: ["config.json", "tokenizer.json", "tokenizer_config.json"]
            .map(|n| (n, read(dir, n)))
            .into(),
        shards: [shard(&names[..half]), shard(&names[half..])],
        second: names[half..].to_vec(),
    }
}

fn stories_hf_run() -> Result<(), Skip> {
    let dir = e2e::stories_dir()?;
    let (prompt, want) = reference_tokens(&dir);
    let whole = read(&dir, "model.safetensors");
    let small: Vec<(&str, Vec<u8>)> = ["config.json", "tokenizer.json", "tokenizer_config.json"]
        .map(|n| (n, read(&dir, n)))
        .into();
    let mut files: Vec<(&str, &[u8])> = small.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    // A file of no interest in between is skipped, not kept.
    files.insert(1, ("README.md", b"# stories260K\n"));
    files.push(("some/dir/model.safetensors", &whole));
    for (seed, max) in [(1, 1), (2, 4096), (3, 1 << 20)] {
        if max == 1 {
            // 1-byte chunks for the small files and the shard's header; the data in bulk.
            let mut s = ModelStream::new(CpuBackend::reference(), &ModelOptions::default());
            for (name, bytes) in &files {
                s.begin_file(name, None).expect("begin");
                let header = if name.ends_with(".safetensors") {
                    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
                } else {
                    bytes.len()
                };
                bytes[..header].chunks(1).try_for_each(|c| s.push(c)).expect("push");
                s.push(&bytes[header..]).expect("push");
                s.end_file().expect("end");
            }
            let mut m = s.finish().expect("finish");
            e2e::assert_tokens_eq(
                &greedy(&mut m, &prompt, want.len()),
                &want,
                "stream, 1-byte header chunks".into(),
            );
            continue;
        }
        let mut m =
            stream(CpuBackend::fast(2).expect("cpu"), &ModelOptions::default(), &files, seed, max)
                .expect("stream");
        assert_eq!(m.format, "safetensors");
        e2e::assert_tokens_eq(
            &greedy(&mut m, &prompt, want.len()),
            &want,
            format!("stream, chunks up to {max}"),
        );
    }

    // Two shards, the second first: tensors arrive in any order.
    let hf = stories_hf(&dir);
    let mut files: Vec<(&str, &[u8])> = hf.small.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    files.push(("model-00002-of-00002.safetensors", &hf.shards[1]));
    files.push(("model-00001-of-00002.safetensors", &hf.shards[0]));
    let mut m =
        stream(CpuBackend::fast(2).expect("cpu"), &ModelOptions::default(), &files, 4, 10_000)
            .expect("two shards");
    e2e::assert_tokens_eq(&greedy(&mut m, &prompt, want.len()), &want, "two shards".into());
    let pulled = e2e::load(
        CpuBackend::fast(2).expect("cpu"),
        &loader::open(&dir).expect("open"),
        &ModelOptions::default(),
    );
    assert_eq!(
        m.model.weights.bytes, pulled.weights.bytes,
        "the same bytes uploaded as Model::load"
    );
    Ok(())
}

#[test]
fn stories260k_hf_streamed_matches_the_reference() {
    report("stories260k_hf_streamed_matches_the_reference", stories_hf_run());
}

/// stories260K as a llama.cpp-style GGUF (q/k permuted, llama2.c vocabulary).
fn stories_gguf(dir: &std::path::Path, q8: bool) -> Vec<u8> {
    let source = loader::open(dir).expect("open stories260K");
    let (tokens, scores, types) =
        gguf_writer::llama2c_vocab(&read(dir, "tok512.bin"), 512).expect("vocab");
    let kvs = vec![
        ("tokenizer.ggml.model", GgufValue::String("llama".into())),
        ("tokenizer.ggml.tokens", GgufValue::Array(tokens)),
        ("tokenizer.ggml.scores", GgufValue::Array(scores)),
        ("tokenizer.ggml.token_type", GgufValue::Array(types)),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
    ];
    let ty = |shape: &[usize]| {
        if q8 && shape.len() == 2 && shape[1].is_multiple_of(32) {
            GGML_Q8_0
        } else {
            GGML_F32
        }
    };
    gguf_writer::llama_gguf(&source, kvs, ty).expect("write").to_bytes()
}

fn stories_gguf_run() -> Result<(), Skip> {
    let dir = e2e::stories_dir()?;
    let (prompt, want) = reference_tokens(&dir);
    for q8 in [false, true] {
        let bytes = stories_gguf(&dir, q8);
        let source = loader::open_gguf_bytes("stories.gguf", bytes.clone()).expect("open");
        let tokenizer = Tokenizer::load(&source.tokenizer).expect("tokenizer");
        let mut pulled =
            e2e::load(CpuBackend::fast(2).expect("cpu"), &source, &ModelOptions::default());
        let pulled_tokens = e2e::greedy(&mut pulled, &tokenizer, &prompt, want.len());
        if !q8 {
            e2e::assert_tokens_eq(&pulled_tokens, &want, "Model::load, F32 GGUF".into());
        }
        // Named "model" (no extension): its first bytes say GGUF.
        for (name, max) in [("stories.gguf", 1usize), ("model", 64), ("stories.gguf", 200_000)] {
            let mut m = stream(
                CpuBackend::fast(2).expect("cpu"),
                &ModelOptions::default(),
                &[(name, &bytes)],
                9,
                max,
            )
            .expect("stream");
            assert_eq!(m.format, "gguf v3");
            let got = greedy(&mut m, &prompt, want.len());
            e2e::assert_tokens_eq(
                &got,
                &pulled_tokens,
                format!("streamed GGUF (q8 {q8}, chunks up to {max}) vs Model::load"),
            );
            assert_eq!(m.model.weights.layers[0].wq.dtype, pulled.weights.layers[0].wq.dtype);
        }
    }
    Ok(())
}

#[test]
fn stories260k_gguf_streamed_matches_model_load() {
    report("stories260k_gguf_streamed_matches_model_load", stories_gguf_run());
}

fn smollm_run() -> Result<(), Skip> {
    let path = e2e::smollm_gguf()?;
    let reference_path = e2e::smollm_reference()?;
    let reference = e2e::read_json(&reference_path);
    // From disk in seeded chunks, as a browser stream hands them over.
    use std::io::Read;
    let mut f = std::fs::File::open(&path).expect("open");
    let len = f.metadata().expect("metadata").len();
    let opts = ModelOptions { context: 512, ..Default::default() };
    let mut s = ModelStream::new(CpuBackend::fast(2).expect("cpu"), &opts);
    s.begin_file("SmolLM2-135M-Instruct.Q4_1.gguf", Some(len)).expect("begin");
    let (mut rng, mut buf) = (Rng(11), vec![0u8; 4 << 20]);
    let mut progress = Vec::new();
    loop {
        let n = f.read(&mut buf[..1 + rng.below(4 << 20)]).expect("read");
        if n == 0 {
            break;
        }
        s.push(&buf[..n]).expect("push");
        progress.extend(s.progress());
    }
    s.end_file().expect("end");
    let mut m = s.finish().expect("finish");
    // Tensors were uploaded while the file was still arriving, not at the end.
    let (first_done, total) = progress.first().copied().expect("progress");
    assert!(first_done < total && progress.last() == Some(&(total, total)), "{progress:?}");
    let tokenizer = Tokenizer::load(&m.tokenizer).expect("tokenizer");
    let messages = [ChatMessage::new("user", "What is the capital of France?")];
    let prompt = tokenizer
        .encode(&tokenizer.apply_chat_template(&messages, true).expect("template"))
        .expect("encode");
    assert_eq!(prompt, e2e::ids(&reference["input_ids"]));
    let want = e2e::ids(&reference["greedy_ids"]);
    let params = tandem_core::generate::GenerateParams { max_tokens: 64, ..Default::default() };
    let gen = pollster::block_on(tandem_core::generate::generate(
        &mut m.model,
        &tokenizer,
        &prompt,
        &params,
        &mut |_| {},
    ))
    .expect("generate");
    e2e::assert_tokens_eq(&gen.tokens, &want, "streamed SmolLM2".into());
    assert_eq!(gen.text, "The capital of France is Paris.");
    Ok(())
}

#[test]
fn smollm2_streamed_chat_matches_the_reference() {
    report("smollm2_streamed_chat_matches_the_reference", smollm_run());
}

fn wgpu_run() -> Result<(), Skip> {
    let dir = e2e::stories_dir()?;
    let backend = pollster::block_on(tandem_wgpu::WgpuBackend::new(Default::default()))
        .map_err(|e| Skip(e.to_string()))?;
    let (prompt, want) = reference_tokens(&dir);
    let bytes = stories_gguf(&dir, false);
    let mut m = stream(backend, &ModelOptions::default(), &[("stories.gguf", &bytes)], 13, 50_000)
        .expect("stream");
    e2e::assert_tokens_eq(&greedy(&mut m, &prompt, want.len()), &want, m.model.backend.name());
    Ok(())
}

#[test]
fn stories260k_streamed_onto_webgpu() {
    report("stories260k_streamed_onto_webgpu", wgpu_run());
}

fn report(name: &str, r: Result<(), Skip>) {
    if let Err(Skip(why)) = r {
        eprintln!("SKIP {name}: {why}");
    }
}

fn stream_err(files: &[(&str, &[u8])]) -> String {
    match stream(CpuBackend::reference(), &ModelOptions::default(), files, 1, 5000) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn errors_run() -> Result<(), Skip> {
    let dir = e2e::stories_dir()?;
    let hf = stories_hf(&dir);
    let small: Vec<(&str, &[u8])> = hf.small.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let with = |extra: &[(&'static str, &[u8])]| -> String {
        let mut files = small.clone();
        files.extend_from_slice(extra);
        stream_err(&files)
    };

    // A shard missing: every missing tensor is named.
    let e = with(&[("model-00001-of-00002.safetensors", &hf.shards[0])]);
    assert!(e.contains(&format!("{} tensors are missing", hf.second.len())), "{e}");
    for name in &hf.second {
        assert!(e.contains(&format!("'{name}'")), "{name} not named in: {e}");
    }
    // The same shard twice.
    let e = with(&[("a.safetensors", &hf.shards[0]), ("b.safetensors", &hf.shards[0])]);
    assert!(e.contains("given twice"), "{e}");
    // Order: a shard before config.json.
    let e = stream_err(&[("model.safetensors", &hf.shards[0]), ("config.json", &hf.small[0].1)]);
    assert!(e.contains("config.json must come before"), "{e}");
    // Files missing.
    let e = stream_err(&[("config.json", &hf.small[0].1), ("model.safetensors", &hf.shards[0])]);
    assert!(e.contains("tokenizer.json is missing"), "{e}");
    let e = stream_err(&small);
    assert!(e.contains("a .safetensors file is missing"), "{e}");
    assert!(stream_err(&[]).contains("no files"));
    let e = stream_err(&[("README.md", b"hello")]);
    assert!(e.contains("config.json is missing") && e.contains("README.md"), "{e}");
    // GGUF mixed with others, or two of them, or not a GGUF at all.
    let gguf = stories_gguf(&dir, true);
    assert!(stream_err(&[("a.gguf", &gguf), ("b.gguf", &gguf)]).contains("2 GGUF files"));
    assert!(stream_err(&[
        ("config.json", &hf.small[0].1),
        ("m.safetensors", &hf.shards[0]),
        ("a.gguf", &gguf)
    ])
    .contains("both given"));
    assert!(stream_err(&[("m.gguf", b"not a gguf file at all")]).contains("not a GGUF file"));
    // A truncated GGUF: the file's end says so, naming the tensor it cut.
    let e = stream_err(&[("m.gguf", &gguf[..gguf.len() - 100])]);
    assert!(e.contains("truncated"), "{e}");
    // The API used out of order.
    let mut s = ModelStream::new(CpuBackend::reference(), &ModelOptions::default());
    assert!(s.push(b"x").unwrap_err().to_string().contains("before any file"));
    s.begin_file("config.json", None).expect("begin");
    assert!(s.begin_file("tokenizer.json", None).unwrap_err().to_string().contains("still open"));
    assert!(s.finish().err().expect("open file").to_string().contains("not ended"));
    // A config file that claims to be huge is refused before any byte.
    let mut s = ModelStream::new(CpuBackend::reference(), &ModelOptions::default());
    assert!(s
        .begin_file("tokenizer.json", Some(1 << 40))
        .unwrap_err()
        .to_string()
        .contains("too large"));
    Ok(())
}

#[test]
fn stream_errors_are_clear() {
    report("stream_errors_are_clear", errors_run());
}

#[test]
fn model_load_still_reports_a_missing_tensor_by_name() {
    // The pull path goes through the same builder: a store without a tensor fails naming it.
    let dir = match e2e::stories_dir() {
        Ok(dir) => dir,
        Err(Skip(why)) => {
            return eprintln!("SKIP model_load_still_reports_a_missing_tensor_by_name: {why}")
        }
    };
    let hf = stories_hf(&dir);
    let store =
        loader::safetensors::SafetensorsStore::from_bytes("half.safetensors", hf.shards[0].clone())
            .expect("shard");
    let mut source = loader::open(&dir).expect("open");
    source.tensors = Box::new(store);
    let e = Model::load(CpuBackend::reference(), &source, &ModelOptions::default(), &mut |_, _| {})
        .err()
        .expect("missing tensor");
    assert!(
        e.to_string().contains(&hf.second[0])
            || hf.second.iter().any(|n| e.to_string().contains(n.as_str())),
        "{e}"
    );
}
