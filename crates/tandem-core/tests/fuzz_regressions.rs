//! Inputs the fuzz targets (fuzz/) found that crashed tandem or made two loaders disagree,
//! minimized, each with the fix it needed. They run in the normal test suite, on stable.

use tandem_core::loader::gguf::{GgufMetadata, GgufValue};
use tandem_core::loader::safetensors::SafetensorsStore;
use tandem_core::loader::stream::{GgufStream, SafetensorsStream, TensorSink};
use tandem_core::loader::{HostTensor, LoadAs};
use tandem_core::tokenizer::{render_chat_template, ChatMessage, Tokenizer};

struct Keep(Vec<String>);
impl TensorSink for Keep {
    fn wants(&self, _: &str) -> Option<LoadAs> {
        Some(LoadAs::Native)
    }
    fn put(&mut self, name: &str, _: HostTensor) -> tandem_core::Result<()> {
        self.0.push(name.to_string());
        Ok(())
    }
}

/// safetensors_stream: a shard with a byte after its data, streamed without its length, was
/// accepted while the memory-mapped loader refuses it ("file not fully covered"). The stream
/// now checks at the end that the data ends the file.
#[test]
fn safetensors_stream_refuses_bytes_after_the_data() {
    let json = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json);
    file.extend_from_slice(&[0; 8]);
    file.push(0x2c);
    assert!(SafetensorsStore::from_bytes("t", file.clone()).is_err());
    for len in [None, Some(file.len() as u64)] {
        let mut s = SafetensorsStream::new("t", len);
        let r = s.push(&file, &mut Keep(Vec::new())).and_then(|()| s.finish());
        let e = r.expect_err("trailing byte").to_string();
        assert!(e.contains("invalid safetensors"), "{len:?}: {e}");
    }
    // Without the extra byte both read it.
    file.pop();
    assert!(SafetensorsStore::from_bytes("t", file.clone()).is_ok());
    let mut s = SafetensorsStream::new("t", None);
    let mut keep = Keep(Vec::new());
    s.push(&file, &mut keep).and_then(|()| s.finish()).expect("valid");
    assert_eq!(keep.0, ["w"]);
}

/// chat_template: `divisibleby 0` divided by zero inside minijinja 2 (a panic from a model
/// file's template). Fixed by minijinja 3, which reports it; `i128::MIN % -1` likewise.
#[test]
fn chat_template_divisible_by_zero_is_an_error() {
    let messages = [ChatMessage::new("user", "hi")];
    for template in [
        "{% for m in messages %}{% if loop.index is divisibleby 0 %}\n{% endif %}{% endfor %}",
        "{{ 1 is divisibleby(0) }}",
        "{{ -170141183460469231731687303715884105728 is divisibleby(-1) }}",
        "{{ 1 % 0 }}",
    ] {
        let _ = render_chat_template(template, &messages, true, "<s>", "</s>");
    }
    let e = render_chat_template("{{ 1 is divisibleby(0) }}", &messages, true, "", "")
        .expect_err("division by zero");
    assert!(e.to_string().contains("chat template"), "{e}");
}

/// gguf_tokenizer: a byte-level BPE merge whose two halves are tokens but whose concatenation
/// is longer than any token panicked inside the `tokenizers` crate (its BPE builder slices a
/// buffer sized by the longest token). The GGUF builder now checks every merge first.
#[test]
fn gguf_merge_longer_than_any_token_is_an_error() {
    let tokens = ["a", "bb", "<0a>", "\u{0}", "#$%&'()*+,-."];
    let mut m = GgufMetadata::new();
    m.insert("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into()));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(tokens.iter().map(|t| GgufValue::String(t.to_string())).collect()),
    );
    m.insert(
        "tokenizer.ggml.merges".into(),
        GgufValue::Array(vec![GgufValue::String("#$%&'()*+,-. #$%&'()*+,-.".into())]),
    );
    let e = Tokenizer::from_gguf(&m).err().expect("refused").to_string();
    assert!(e.contains("is not in the vocabulary"), "{e}");
    // Halves missing from the vocabulary are named too.
    m.insert(
        "tokenizer.ggml.merges".into(),
        GgufValue::Array(vec![GgufValue::String("a zz".into())]),
    );
    let e = Tokenizer::from_gguf(&m).err().expect("refused").to_string();
    assert!(e.contains("'zz' is not in the vocabulary"), "{e}");
    // A merge whose result is a token builds.
    let mut ok = m.clone();
    ok.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(
            ["a", "b", "ab"].iter().map(|t| GgufValue::String(t.to_string())).collect(),
        ),
    );
    ok.insert(
        "tokenizer.ggml.merges".into(),
        GgufValue::Array(vec![GgufValue::String("a b".into())]),
    );
    let tok = Tokenizer::from_gguf(&ok).expect("valid");
    assert_eq!(tok.encode("ab").unwrap(), [2]);
}

/// gguf_stream (found reading the stream's code, then replayed through the target): a tensor
/// of 0 bytes at offset 2^64 - 32, streamed without the file's length, overflowed
/// `data_offset + offset` (a panic with overflow checks, a wrapped span without). The header
/// parser now refuses an offset whose absolute end is not a number, whatever it knows.
#[test]
fn gguf_offset_overflowing_the_file_offsets_is_an_error() {
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    for v in [3u32.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec()]
    {
        b.extend_from_slice(&v);
    }
    string(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    string(&mut b, "llama");
    string(&mut b, "w");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // dims [0]: no bytes
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0xFFFF_FFFF_FFFF_FFE0u64.to_le_bytes());
    b.resize(b.len().next_multiple_of(32), 0);
    for len in [None, Some(b.len() as u64)] {
        let mut s = GgufStream::new("o.gguf", len);
        let e = s
            .push(&b, &mut Keep(Vec::new()))
            .and_then(|()| s.finish())
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("overflows the file offsets") || e.contains("past the end"),
            "{len:?}: {e}"
        );
    }
    let e = tandem_core::loader::gguf::GgufFile::from_bytes("o.gguf", b)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("past the end") || e.contains("overflows"), "{e}");
}

/// gguf_tokenizer: a SentencePiece vocabulary listing the same piece several times ("" five
/// times, then "\u{1}" at position 5) encoded to id 5 while `vocab_size()` said 2 (the inner
/// map holds each piece once). Every position of tokenizer.ggml.tokens is an id, so the size
/// is the list's length.
#[test]
fn gguf_duplicate_pieces_keep_every_position_an_id() {
    let tokens = ["", "", "", "", "", "\u{1}", ""];
    let mut m = GgufMetadata::new();
    m.insert("tokenizer.ggml.model".into(), GgufValue::String("llama".into()));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(tokens.iter().map(|t| GgufValue::String(t.to_string())).collect()),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        GgufValue::Array(vec![GgufValue::I32(1); tokens.len()]),
    );
    m.insert(
        "tokenizer.ggml.scores".into(),
        GgufValue::Array(vec![GgufValue::F32(0.0); tokens.len()]),
    );
    m.insert("tokenizer.ggml.add_space_prefix".into(), GgufValue::Bool(false));
    let tok = Tokenizer::from_gguf(&m).expect("builds");
    assert_eq!(tok.vocab_size(), tokens.len());
    let ids = tok.encode("eof \0\0\u{1}\u{1}").expect("encodes");
    assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()), "{ids:?}");
    assert!(ids.contains(&5), "{ids:?}");
}

/// safetensors_stream: a 430 KB header arriving in chunks of 1 to 16 bytes took half a minute:
/// the header buffer grew by exactly each chunk, reallocating and copying itself on every
/// push. It now grows geometrically; here a 512 KB header arrives a byte at a time.
#[test]
fn a_header_trickling_in_byte_by_byte_streams() {
    let pad = " ".repeat(512 << 10);
    let json = format!(r#"{{"w":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}{pad}}}"#);
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json.as_bytes());
    file.extend_from_slice(&1f32.to_le_bytes());
    file.extend_from_slice(&2f32.to_le_bytes());
    let mut s = SafetensorsStream::new("t", None);
    let mut keep = Keep(Vec::new());
    for b in file.chunks(1) {
        s.push(b, &mut keep).expect("valid");
    }
    s.finish().expect("complete");
    assert_eq!(keep.0, ["w"]);
    assert!(
        s.peak_buffered() <= 2 * file.len(),
        "{} bytes held for a {}-byte file",
        s.peak_buffered(),
        file.len()
    );
}

/// safetensors_stream: a file whose header length is 0 hung the stream: having read the
/// 8-byte length it "wanted" 8 bytes again and went back for the JSON forever. Now it is the
/// same invalid header the whole-file loader refuses, in chunks of any size.
#[test]
fn an_empty_safetensors_header_is_an_error() {
    let mut file = 0u64.to_le_bytes().to_vec();
    file.extend_from_slice(b"{}");
    assert!(SafetensorsStore::from_bytes("t", file.clone()).is_err());
    for chunk in [1, 3, 8, 64] {
        for len in [None, Some(file.len() as u64)] {
            let mut s = SafetensorsStream::new("t", len);
            let mut keep = Keep(Vec::new());
            let r =
                file.chunks(chunk).try_for_each(|c| s.push(c, &mut keep)).and_then(|()| s.finish());
            let e = r.expect_err("an empty header").to_string();
            assert!(e.contains("safetensors"), "{chunk}-byte chunks, {len:?}: {e}");
        }
    }
}

/// chat_template: `{% set ns.n = ns %}` made a namespace that holds itself, and rendering it
/// recursed until the stack overflowed (an abort, not an error). Every attribute store is now
/// checked (tokenizer/chat_guard.rs): a value holding its namespace, or nested too deep, is an
/// error; ordinary stores render as before.
#[test]
fn chat_template_namespace_holding_itself_is_an_error() {
    let messages = [ChatMessage::new("user", "hi"), ChatMessage::new("assistant", "yo")];
    let render = |t: &str| render_chat_template(t, &messages, true, "<s>", "</s>");
    // The fuzzer's input, minimized.
    let found = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns %}{{ '%0d'|format(ns.n) }}{% endfor %}";
    for (template, needle) in [
        (found, "holds the namespace itself"),
        ("{% set ns = namespace(n=0) %}{% set ns.n = ns %}{{ ns }}", "holds the namespace itself"),
        ("{% set ns = namespace() %}{%- set ns.l = [1, {'a': ns}] -%}{{ ns ~ '' }}", "holds the namespace itself"),
        ("{% set ns = namespace() %}{% set ns.l = [ns]|reverse %}{{ ns }}", "holds the namespace itself"),
        ("{% set a = namespace() %}{% set b = namespace(x=a) %}{% set a.y = b %}{{ a == b }}", "holds the namespace itself"),
        ("{% set ns = namespace(x=0) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns }}", "nested more than 128 deep"),
        ("{% set ns = namespace(x=0) %}{% set a, ns.x = 1, 2 %}", "one attribute per set"),
    ] {
        let e = render(template).expect_err(template).to_string();
        assert!(e.contains(needle), "{template}: {e}");
    }
    // Attribute stores that do not hold their namespace render as they did.
    for (template, want) in [
        ("{% set ns = namespace(x=0) %}{% for m in messages %}{% set ns.x = ns.x + 1 %}{% endfor %}{{ ns.x }}", "2"),
        ("{% set ns = namespace(x=0) %}{%- set ns.x = 'a' if ns.x == 0 else 'b' -%}{{ ns.x }}", "a"),
        ("{% set ns = namespace() %}{% set ns.x %}hi {{ messages[0].role }}{% endset %}{{ ns.x }}", "hi user"),
        ("{% set a = namespace(v=1) %}{% set b = namespace(x=0) %}{% set b.x = a %}{{ b.x.v }}", "1"),
        ("{% set ns = namespace(m=[]) %}{% for m in messages %}{% set ns.m = ns.m + [m.role] %}{% endfor %}{{ ns.m|join(',') }}", "user,assistant"),
        ("{% set ns = namespace(t='{% set x.y = 1 %}') %}{{ ns.t }}", "{% set x.y = 1 %}"),
    ] {
        assert_eq!(render(template).expect(template), want, "{template}");
    }
}
