//! Tokenizer tests on SmolLM2-135M-Instruct's GGUF: byte-level BPE rebuilt from
//! tokenizer.ggml.*, its chat template, and streaming over byte-level pieces.

use std::path::PathBuf;
use tandem_core::loader::gguf::{GgufMetadata, GgufValue};
use tandem_core::tokenizer::{ChatMessage, TextStream, Tokenizer};

/// Just enough of GGUF v2/v3 to get the metadata: magic, version, counts, then the key/value
/// pairs; the tensor directory after them is not read. (The real reader lives in the loader.)
fn read_metadata(path: &PathBuf) -> GgufMetadata {
    let bytes = std::fs::read(path).unwrap();
    let mut r = Reader { b: &bytes, at: 0 };
    assert_eq!(r.take(4), b"GGUF");
    let version = r.u32();
    assert!(version == 2 || version == 3, "GGUF version {version}");
    let _n_tensors = r.u64();
    let n_kv = r.u64();
    let mut meta = GgufMetadata::new();
    for _ in 0..n_kv {
        let key = r.string();
        let ty = r.u32();
        let value = r.value(ty);
        meta.insert(key, value);
    }
    meta
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn value(&mut self, ty: u32) -> GgufValue {
        match ty {
            0 => GgufValue::U8(self.take(1)[0]),
            1 => GgufValue::I8(self.take(1)[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.take(2).try_into().unwrap())),
            3 => GgufValue::I16(i16::from_le_bytes(self.take(2).try_into().unwrap())),
            4 => GgufValue::U32(self.u32()),
            5 => GgufValue::I32(self.u32() as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32())),
            7 => GgufValue::Bool(self.take(1)[0] != 0),
            8 => GgufValue::String(self.string()),
            9 => {
                let elem = self.u32();
                let n = self.u64() as usize;
                GgufValue::Array((0..n).map(|_| self.value(elem)).collect())
            }
            10 => GgufValue::U64(self.u64()),
            11 => GgufValue::I64(self.u64() as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64())),
            other => panic!("GGUF value type {other}"),
        }
    }
}

fn smollm() -> Option<Tokenizer> {
    let meta =
        read_metadata(&tandem_testkit::default_model(tandem_tools::default_model::path().ok())?);
    Some(Tokenizer::from_gguf(&meta).expect("SmolLM2 tokenizer from GGUF"))
}

#[test]
fn tokenizer_smollm_chat_template_and_ids() {
    let Some(tok) = smollm() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert!(!tok.add_bos(), "SmolLM2's GGUF says add_bos_token = false");
    // EOS is <|im_end|>; <|endoftext|> also ends generation (a control token of that name).
    assert_eq!(tok.eos_ids()[0], 2);
    assert!(tok.eos_ids().contains(&0));
    assert!(tok.is_special(1) && !tok.is_special(504));

    let messages = [ChatMessage::new("user", "What is the capital of France?")];
    let prompt = tok.apply_chat_template(&messages, true).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&prompt).unwrap();
    assert_eq!(
        ids,
        [
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
            407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
            520, 9531, 198
        ]
    );
    assert_eq!(
        tok.decode(&[504, 3575, 282, 4649, 314, 7042, 30], false).unwrap(),
        "The capital of France is Paris."
    );
    assert_eq!(tok.decode(&ids, false).unwrap(), prompt);
    assert!(!tok.decode(&ids, true).unwrap().contains("<|im_start|>"));
}

#[test]
fn tokenizer_smollm_round_trips() {
    let Some(tok) = smollm() else { return };
    for s in [
        "1234567890 and 3.14159",
        "  leading spaces, tabs\tand\nnewlines\r\n",
        "héllo wörld, naïve café — “quotes”",
        "日本語のテキスト 你好",
        "emoji 🙂🚀👍🏽 and a family 👨‍👩‍👧",
        "",
    ] {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), s, "round trip of {s:?} via {ids:?}");
    }
    // The smollm pre-tokenizer splits digits one by one.
    let ids = tok.encode("2024").unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
}

#[test]
fn tokenizer_smollm_text_stream() {
    let Some(tok) = smollm() else { return };
    let text = "héllo wörld 你好 🙂 done.";
    let mut ids = tok.encode(text).unwrap();
    ids.push(2); // <|im_end|> is special: never emitted as text.
    let mut stream = TextStream::new(&tok);
    let mut chunks = Vec::new();
    for &id in &ids {
        chunks.push(stream.push(id).unwrap());
    }
    chunks.push(stream.finish().unwrap());
    for c in &chunks {
        assert!(!c.contains('\u{FFFD}'), "chunk {c:?} splits a character; all: {chunks:?}");
    }
    assert_eq!(chunks.concat(), text);
}

#[test]
fn tokenizer_smollm_template_errors() {
    let Some(path) = tandem_testkit::default_model(tandem_tools::default_model::path().ok()) else {
        return;
    };
    let mut meta = read_metadata(&path);
    meta.insert(
        "tokenizer.chat_template".into(),
        GgufValue::String(
            "{% if messages[0]['role'] != 'system' %}{{ raise_exception('need a system message') }}{% endif %}\
             {% for m in messages %}[{{ m['content'].strip() }}]{% endfor %}"
                .into(),
        ),
    );
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    let user = ChatMessage::new("user", " hi ");
    let err = tok.apply_chat_template(std::slice::from_ref(&user), false).unwrap_err();
    assert!(matches!(err, tandem_core::Error::ChatTemplate(_)));
    assert!(err.to_string().contains("need a system message"), "{err}");
    let system = ChatMessage::new("system", "  sys\n");
    assert_eq!(tok.apply_chat_template(&[system, user], false).unwrap(), "[sys][hi]");
}

/// GPT-2's byte-to-char table: printable bytes stand for themselves, the rest are shifted
/// past U+0100 so every byte-level piece is printable.
fn byte_level_alphabet() -> Vec<String> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut shifted = 0;
    (0u32..256)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

/// The Llama 3 and Qwen2 split regexes must compile (onig natively, fancy-regex on wasm) and
/// split the way their tokenizer.json does; a byte-only vocabulary shows the pieces' bytes.
#[test]
fn tokenizer_gguf_gpt2_pre_tokenizers() {
    let alphabet = byte_level_alphabet();
    for pre in ["llama-bpe", "qwen2", "smollm", "gpt2", "some-future-pre"] {
        let mut tokens: Vec<GgufValue> = alphabet.iter().cloned().map(GgufValue::String).collect();
        tokens.push(GgufValue::String("Ġw".into()));
        tokens.push(GgufValue::String("<|eot_id|>".into()));
        let mut types = vec![GgufValue::I32(1); 257];
        types.push(GgufValue::I32(3));
        let mut meta = GgufMetadata::new();
        meta.insert("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into()));
        meta.insert("tokenizer.ggml.pre".into(), GgufValue::String(pre.into()));
        meta.insert("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens));
        meta.insert("tokenizer.ggml.token_type".into(), GgufValue::Array(types));
        meta.insert(
            "tokenizer.ggml.merges".into(),
            GgufValue::Array(vec![GgufValue::String("Ġ w".into())]),
        );
        meta.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::I32(257));
        let tok = Tokenizer::from_gguf(&meta).unwrap_or_else(|e| panic!("pre {pre}: {e}"));
        assert_eq!(tok.eos_ids(), &[257]);
        assert_eq!(tok.bos_id(), None);
        assert!(!tok.add_bos());
        let text = "Hello world 12345 it's<|eot_id|>";
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "pre {pre}");
        assert_eq!(
            ids.iter().filter(|&&i| i == 256).count(),
            1,
            "pre {pre}: merge 'Ġ w' applies: {ids:?}"
        );
        assert_eq!(ids.last(), Some(&257), "pre {pre}");
        assert_eq!(tok.decode(&ids, true).unwrap(), "Hello world 12345 it's");
        // Qwen2 (like its tokenizer.json) composes to NFC first; the others keep the bytes.
        let composed = tok.encode("caf\u{e9}").unwrap();
        let decomposed = tok.encode("cafe\u{301}").unwrap();
        assert_eq!(composed == decomposed, pre == "qwen2", "pre {pre}");
    }
    // Metadata of the wrong type is reported by key, not a panic.
    let mut meta = GgufMetadata::new();
    meta.insert("tokenizer.ggml.tokens".into(), GgufValue::String("oops".into()));
    let err = Tokenizer::from_gguf(&meta).err().unwrap();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
}
