//! Tokenizer tests on stories260K (a 512-piece SentencePiece BPE with byte fallback): the
//! tokenizer.json path, the same tokenizer rebuilt from GGUF-style metadata, streaming and
//! stop strings.

use std::path::PathBuf;
use tandem_core::loader::gguf::{GgufMetadata, GgufValue};
use tandem_core::tokenizer::{StopStrings, TextStream, Tokenizer};

fn stories_file(name: &str) -> Option<PathBuf> {
    tandem_testkit::shared_model("stories260K", &[name]).map(|dir| dir.join(name))
}

fn stories_json() -> Option<Tokenizer> {
    let json = stories_file("tokenizer.json")?;
    let config = stories_file("tokenizer_config.json")?;
    Some(Tokenizer::from_files(&json, Some(&config)).expect("stories260K tokenizer.json loads"))
}

const SENTENCES: &[&str] = &[
    "Once upon a time, there was a little girl.",
    "Hello world\nnew line",
    "héllo 123",
    "  two leading spaces and trailing  ",
    "Tom said: \"Let's go!\" 你好 🙂",
];

#[test]
fn tokenizer_stories_json_round_trip_and_specials() {
    let Some(tok) = stories_json() else { return };
    assert_eq!(tok.vocab_size(), 512);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), &[2]);
    assert!(tok.add_bos());
    assert!(tok.is_special(1) && tok.is_special(2) && !tok.is_special(300));
    assert_eq!(tok.token_str(1).as_deref(), Some("<s>"));
    assert!(tok.chat_template().is_none());
    assert!(matches!(tok.apply_chat_template(&[], true), Err(tandem_core::Error::ChatTemplate(_))));
    for s in SENTENCES {
        let ids = tok.encode(s).unwrap();
        assert_ne!(ids.first(), Some(&1), "encode must not add BOS");
        assert_eq!(tok.decode(&ids, false).unwrap(), *s, "round trip of {s:?} via {ids:?}");
    }
    // Special tokens written in the text are matched, and skipped on request.
    let ids = tok.encode("a</s>b").unwrap();
    assert!(ids.contains(&2), "{ids:?}");
    assert!(!tok.decode(&ids, true).unwrap().contains("</s>"));
    // Ids past the vocabulary (a model with a padded embedding can produce them) do not panic.
    let _ = tok.decode(&[5, 100_000, 6], false);
    assert_eq!(tok.token_str(100_000), None);
}

#[test]
fn tokenizer_stories_missing_file_names_path() {
    let err = Tokenizer::from_files(std::path::Path::new("/nonexistent/tokenizer.json"), None)
        .err()
        .expect("missing file is an error");
    assert!(err.to_string().contains("/nonexistent/tokenizer.json"), "{err}");
    let err = Tokenizer::from_gguf(&GgufMetadata::new()).err().expect("empty metadata is an error");
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
}

/// GGUF-style SentencePiece metadata from llama2.c's tok512.bin.
fn tok512_metadata() -> Option<GgufMetadata> {
    let bytes = std::fs::read(stories_file("tok512.bin")?).unwrap();
    let (tokens, scores, types) = tandem_tools::gguf_writer::llama2c_vocab(&bytes, 512).unwrap();
    let mut meta = GgufMetadata::new();
    meta.insert("tokenizer.ggml.model".into(), GgufValue::String("llama".into()));
    meta.insert("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens));
    meta.insert("tokenizer.ggml.scores".into(), GgufValue::Array(scores));
    meta.insert("tokenizer.ggml.token_type".into(), GgufValue::Array(types));
    meta.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1));
    meta.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2));
    Some(meta)
}

#[test]
fn tokenizer_stories_gguf_spm_matches_tokenizer_json() {
    let (Some(json), Some(meta)) = (stories_json(), tok512_metadata()) else { return };
    let gguf = Tokenizer::from_gguf(&meta).expect("SPM tokenizer from metadata");
    assert_eq!(gguf.vocab_size(), 512);
    assert_eq!(gguf.bos_id(), Some(1));
    assert_eq!(gguf.eos_ids(), &[2]);
    assert!(gguf.add_bos(), "llama GGUF tokenizers add BOS by default");
    for s in SENTENCES {
        let want = json.encode(s).unwrap();
        let got = gguf.encode(s).unwrap();
        assert_eq!(got, want, "ids of {s:?}");
        assert_eq!(gguf.decode(&got, false).unwrap(), *s);
    }
    assert_eq!(gguf.encode("a</s>b").unwrap(), json.encode("a</s>b").unwrap());
}

#[test]
fn tokenizer_stories_text_stream_holds_partial_chars() {
    let Some(tok) = stories_json() else { return };
    let text = "héllo wörld 你好 🙂 ok";
    let ids = tok.encode(text).unwrap();
    // 512 pieces cannot hold CJK or emoji: they arrive as byte-fallback tokens, one byte each.
    assert!(ids.iter().any(|&i| (3..259).contains(&i)), "expected byte tokens in {ids:?}");
    let mut stream = TextStream::new(&tok);
    let mut chunks = Vec::new();
    for &id in [1].iter().chain(&ids).chain(&[2]) {
        chunks.push(stream.push(id).unwrap());
    }
    chunks.push(stream.finish().unwrap());
    for c in &chunks {
        assert!(!c.contains('\u{FFFD}'), "chunk {c:?} splits a character; all: {chunks:?}");
        assert!(!c.contains("<s>") && !c.contains("</s>"), "special token emitted: {chunks:?}");
    }
    assert_eq!(chunks.concat(), tok.decode(&ids, true).unwrap());
    assert_eq!(chunks.concat(), text);
    // Spaces come out at the start of the word that owns them.
    assert!(chunks.iter().any(|c| c.starts_with(" w")), "{chunks:?}");
}

#[test]
fn tokenizer_stories_stop_strings() {
    // A stop string split across chunks is caught; text before it is emitted.
    let mut stop = StopStrings::new(vec!["</answer>".into(), "STOP".into()]);
    let mut out = String::new();
    let mut stopped = false;
    for chunk in ["The answer", " is 4.</an", "swer> and more"] {
        let (text, done) = stop.push(chunk);
        assert!(!text.contains('<'), "partial stop string emitted: {text:?}");
        out.push_str(&text);
        if done {
            stopped = true;
            break;
        }
    }
    assert!(stopped);
    assert_eq!(out, "The answer is 4.");
    assert_eq!(stop.push("more"), (String::new(), true));

    // No stop: a tail that looked like a stop prefix comes out at finish().
    let mut stop = StopStrings::new(vec!["STOP".into()]);
    let (a, da) = stop.push("ends with ST");
    assert_eq!((a.as_str(), da), ("ends with ", false));
    let (b, db) = stop.push("O");
    assert_eq!((b.as_str(), db), ("", false));
    assert_eq!(stop.finish(), "STO");

    // A false start is released as soon as it cannot become a stop string.
    let mut stop = StopStrings::new(vec!["STOP".into()]);
    assert_eq!(stop.push("STX"), ("STX".to_string(), false));

    // Multi-byte text around a stop string is never cut inside a character.
    let mut stop = StopStrings::new(vec!["🙂🙃".into()]);
    assert_eq!(stop.push("héllo 🙂"), ("héllo ".to_string(), false));
    assert_eq!(stop.push("🙃 bye"), (String::new(), true));

    // Empty stop strings are ignored rather than stopping at once.
    let mut stop = StopStrings::new(vec![String::new()]);
    assert_eq!(stop.push("abc"), ("abc".to_string(), false));
}
