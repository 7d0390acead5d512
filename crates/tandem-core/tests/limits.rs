//! Limits on what strangers' files and requests can make tandem do: each oversized input is a
//! clear error that states the limit, found before the work or the allocation it would cost.
//! (fuzz/ runs the same entry points under libFuzzer; these are the cases it must never break.)

use std::time::{Duration, Instant};

use tandem_core::generate::{GenerateParams, MAX_STOP_BYTES, MAX_STOP_STRINGS};
use tandem_core::loader::gguf::{GgufFile, GgufMetadata, GgufValue, GGML_F32};
use tandem_core::loader::safetensors::SafetensorsStore;
use tandem_core::loader::stream::{GgufStream, TensorSink};
use tandem_core::loader::{HostTensor, LoadAs};
use tandem_core::tokenizer::{render_chat_template, ChatMessage, Tokenizer, MAX_TEXT_BYTES};
use tandem_core::{Error, ModelConfig};
use tandem_tools::gguf_writer::{write_string, GgufWriter};

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn err_text<T>(r: Result<T, Error>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// A vocabulary of 2^31 tokens: the header's array count is refused before anything is
/// allocated, however the file is read.
#[test]
fn a_vocabulary_of_2_pow_31_tokens_is_refused() {
    let mut b = header(0, 1);
    write_string(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 31).to_le_bytes());
    for i in 0..1000 {
        write_string(&mut b, &format!("t{i}"));
    }
    let e = err_text(GgufFile::from_bytes("v.gguf", b.clone()));
    assert!(e.contains("claims 2147483648 entries"), "{e}");
    // A stream reads the same header and refuses it the same way.
    let mut s = GgufStream::new("v.gguf", Some(b.len() as u64));
    let e = err_text(s.push(&b, &mut Nothing).and_then(|()| s.finish()));
    assert!(e.contains("2147483648"), "{e}");
    // A config that says so is out of range, naming the range.
    let cfg = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":64,"num_hidden_layers":1,
        "num_attention_heads":2,"max_position_embeddings":64,"rms_norm_eps":1e-5,"vocab_size":2147483648}"#;
    let e = err_text(ModelConfig::from_hf_json(cfg));
    assert!(e.contains("vocab_size = 2147483648 is out of range (1..=4194304)"), "{e}");
}

struct Nothing;
impl TensorSink for Nothing {
    fn wants(&self, _: &str) -> Option<LoadAs> {
        Some(LoadAs::Native)
    }
    fn put(&mut self, _: &str, _: HostTensor) -> tandem_core::Result<()> {
        Ok(())
    }
}

/// Dims whose product passes usize (or whose bytes do): refused by the GGUF and the
/// safetensors readers alike.
#[test]
fn tensor_dims_multiplying_past_usize_are_refused() {
    let mut b = header(1, 0);
    write_string(&mut b, "w");
    b.extend_from_slice(&3u32.to_le_bytes());
    for d in [1u64 << 22, 1 << 22, 1 << 22] {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&GGML_F32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.resize(b.len().next_multiple_of(32) + 64, 0);
    let e = err_text(GgufFile::from_bytes("d.gguf", b));
    assert!(e.contains("overflow"), "{e}");

    let json = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}}"#;
    let mut st = (json.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(json.as_bytes());
    st.resize(st.len() + 16, 0);
    let e = err_text(SafetensorsStore::from_bytes("d.safetensors", st));
    assert!(e.contains("invalid safetensors"), "{e}");
}

/// A stream of unknown length whose header claims a 1 TiB tensor holds only the bytes that
/// really arrive, and ends with an error naming the shortfall.
#[test]
fn a_stream_claiming_a_huge_tensor_holds_only_what_arrives() {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", GgufValue::String("llama".into()));
    w.tensor_raw("w", vec![1 << 38], GGML_F32, Vec::new());
    let mut b = w.to_bytes();
    // The writer put no data; the directory still claims 2^38 floats.
    b.resize(b.len() + (3 << 20), 7);
    let mut s = GgufStream::new("huge.gguf", None);
    s.push(&b, &mut Nothing).expect("nothing is wrong yet");
    assert!(s.buffered() <= 8 << 20, "holds {} bytes", s.buffered());
    let e = err_text(s.finish());
    assert!(e.contains("truncated"), "{e}");
    // Told the length, the header is refused at once.
    let mut s = GgufStream::new("huge.gguf", Some(b.len() as u64));
    let e = err_text(s.push(&b, &mut Nothing));
    assert!(e.contains("past the end"), "{e}");
}

fn placeholder() -> Tokenizer {
    Tokenizer::placeholder(16).expect("placeholder")
}

#[test]
fn a_10_mb_prompt_is_refused_naming_the_limit() {
    let tok = placeholder();
    let prompt = "<1> ".repeat(10 << 18);
    assert_eq!(prompt.len(), 10 << 20);
    let t = Instant::now();
    let e = err_text(tok.encode(&prompt));
    assert!(e.contains(&format!("tandem tokenizes at most {MAX_TEXT_BYTES} bytes (8 MiB)")), "{e}");
    assert!(t.elapsed() < Duration::from_millis(100), "refused before tokenizing");
    assert_eq!(tok.encode("<1> <2>").unwrap(), [1, 2]);
}

#[test]
fn a_million_stop_strings_are_refused_naming_the_limit() {
    let params = |stop: Vec<String>| GenerateParams { stop, ..Default::default() };
    let e = err_text(params(vec!["x".into(); 1_000_000]).validate());
    assert!(e.contains(&format!("at most {MAX_STOP_STRINGS} stop strings, got 1000000")), "{e}");
    let e = err_text(params(vec!["x".repeat(MAX_STOP_BYTES + 1)]).validate());
    assert!(e.contains(&format!("at most {MAX_STOP_BYTES} bytes")), "{e}");
    assert!(params(vec!["x".repeat(MAX_STOP_BYTES); MAX_STOP_STRINGS]).validate().is_ok());
    // The sampling parameters are part of it.
    let mut p = params(vec![]);
    p.sampling.top_p = f32::NAN;
    assert!(err_text(p.validate()).contains("top_p"));
}

fn render(template: &str, n_messages: usize) -> Result<String, Error> {
    let messages: Vec<ChatMessage> = (0..n_messages)
        .map(|i| {
            ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, format!("message {i}"))
        })
        .collect();
    render_chat_template(template, &messages, true, "<s>", "</s>")
}

const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn endless_templates_run_out_of_fuel() {
    let t = Instant::now();
    for template in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for m in messages * 100000 %}{% for n in messages * 100000 %}{{ m }}{% endfor %}{% endfor %}",
        "{% set ns = namespace(x=0) %}{% for i in range(100000) %}{% for j in range(100000) %}{% set ns.x = ns.x + 1 %}{% endfor %}{% endfor %}",
    ] {
        let e = err_text(render(template, 2));
        assert!(e.contains("used up its fuel of 2000000"), "{template}: {e}");
    }
    // Recursion stops at minijinja's own depth limit.
    let e = err_text(render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", 1));
    assert!(e.contains("recursion"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    // Real templates are far from the limit: 20,000 messages of ChatML render.
    let text = render(CHATML, 20_000).expect("a long conversation renders");
    assert!(text.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn template_sizes_and_amplifying_filters_are_bounded() {
    let e = err_text(render(&"x".repeat(2 << 20), 1));
    assert!(e.contains("more than the 1048576 tandem compiles"), "{e}");
    // 100 MB of output in 100,000 steps: stopped at the output limit.
    let e = err_text(render("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", 1));
    assert!(e.contains("exceeds 8388608 bytes"), "{e}");
    // Filters and operators that would build a huge string or list from a small argument are
    // charged fuel before they allocate (minijinja 3), or checked by tandem first (tojson,
    // which serializes before it charges; str.replace, a method tandem adds).
    let t = Instant::now();
    for (template, needle) in [
        ("{{ 'a\nb'|indent(1000000000000) }}", "used up its fuel"),
        ("{{ 'a\nb'|indent(width=1000000000000) }}", "used up its fuel"),
        ("{{ '%999999999999d'|format(1) }}", "used up its fuel"),
        ("{{ ('x' * 10000000)|replace('', 'yyyyyyyyyy') }}", "used up its fuel"),
        ("{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}", "used up its fuel"),
        ("{{ [1]|batch(1000000000000)|list }}{{ ('x' * 100000000)|length }}", "used up its fuel"),
        ("{{ {'a': 1}|tojson(indent=1000000000) }}", "tojson indent 1000000000 (tandem's limits"),
        ("{{ (messages * 100000000)|tojson }}", "tojson of a value this large (tandem's limits"),
        ("{{ ('x' * 1000000).replace('x', 'yyyyyyyyyy') }}", "replace() result (tandem's limits"),
    ] {
        let e = err_text(render(template, 1));
        assert!(e.contains(needle), "{template}: {e}");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    // The same filters still work at ordinary sizes.
    let ok = render("{{ 'a\nb'|indent(2) }}|{{ {'a': 1}|tojson(indent=2) }}|{{ '%3d'|format(7) }}|{{ 'abcb'|replace('b', 'x', 1) }}|{{ messages|tojson }}", 1)
        .expect("ordinary filters");
    assert_eq!(
        ok,
        "a\n  b|{\n  \"a\": 1\n}|  7|axcb|[{\"role\": \"user\", \"content\": \"message 0\"}]"
    );
}

/// A SentencePiece vocabulary of long pieces would make rebuilding its merges quadratic in
/// each piece: refused, naming the budget, before the work.
#[test]
fn sentencepiece_pieces_too_long_to_split_are_refused() {
    let tokens: Vec<GgufValue> =
        (0..600).map(|i| GgufValue::String(format!("{i}{}", "a".repeat(20_000)))).collect();
    let n = tokens.len();
    let mut m = GgufMetadata::new();
    m.insert("tokenizer.ggml.model".into(), GgufValue::String("llama".into()));
    m.insert("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens));
    m.insert("tokenizer.ggml.scores".into(), GgufValue::Array(vec![GgufValue::F32(0.0); n]));
    let t = Instant::now();
    let e = err_text(Tokenizer::from_gguf(&m));
    assert!(e.contains("over the limit of 134217728"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn header_limits_state_the_limit() {
    // A stream refuses a header past its limit, saying how large it would be and the limit.
    let mut b = header(0, 1);
    write_string(&mut b, "k");
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(100u64 << 20).to_le_bytes());
    let mut s = GgufStream::with_header_limit("h.gguf", None, 1 << 20);
    let e = err_text(s.push(&b, &mut Nothing));
    assert!(e.contains("more than the 1 MiB tandem accepts"), "{e}");
}
