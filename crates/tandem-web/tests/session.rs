//! The browser engine's logic, natively: stories260K handed over as named files pushed in
//! chunks (as the page's worker does through `Loader`), greedy from BOS through `Session`, must
//! give the 200 reference tokens on the CPU reference backend; an interrupt stops between
//! tokens; a wrong file set is a clear error.

use std::cell::Cell;
use std::path::PathBuf;
use tandem_core::model::{ModelOptions, ModelStream};
use tandem_cpu::CpuBackend;
use tandem_web::{Request, Session, WebBackend};

fn stories_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TANDEM_SHARED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models"))
        .join("stories260K");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIP: stories260K not found at {} (set TANDEM_SHARED_MODELS)", dir.display());
        None
    }
}

/// Streams `files` (as the worker names them) in 64 KiB chunks into a CPU session.
fn stream(dir: &std::path::Path, files: &[&str]) -> tandem_core::Result<Session> {
    let mut s = ModelStream::new(WebBackend::Cpu(CpuBackend::reference()), &ModelOptions::default());
    for name in files {
        let bytes = std::fs::read(dir.join(name)).expect("read model file");
        s.begin_file(&format!("some/dir/{name}"), Some(bytes.len() as u64))?;
        bytes.chunks(64 << 10).try_for_each(|c| s.push(c))?;
        s.end_file()?;
    }
    Session::new(s.finish()?)
}

fn session(dir: &std::path::Path) -> Session {
    stream(dir, &["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]).expect("load")
}

#[test]
fn wrong_file_sets_are_clear_errors() {
    let Some(dir) = stories_dir() else { return };
    let err = |files: &[&str]| stream(&dir, files).err().expect("an error").to_string();
    let e = err(&["tokenizer.json", "model.safetensors"]);
    assert!(e.contains("config.json must come before"), "{e}");
    let e = err(&["config.json", "model.safetensors"]);
    assert!(e.contains("tokenizer.json is missing") && e.contains("config.json, model.safetensors"), "{e}");
    let e = err(&["config.json", "tokenizer.json"]);
    assert!(e.contains(".safetensors file is missing"), "{e}");
    assert!(err(&[]).contains("no files"));
}

fn request(json: &str) -> Request {
    serde_json::from_str(json).expect("request JSON")
}

#[test]
fn stories260k_greedy_from_bos_matches_the_reference() {
    let Some(dir) = stories_dir() else { return };
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference_greedy.json")).unwrap()).unwrap();
    let want: Vec<u32> = reference["greedy_token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let mut s = session(&dir);
    let mut text = String::new();
    // Unknown (OpenAI) fields are ignored.
    let req = request(r#"{"prompt": "", "max_tokens": 200, "temperature": 0, "ignore_eos": true, "model": "x", "stream": true}"#);
    let usage = pollster::block_on(s.generate(&req, &mut |t| text.push_str(t), &|| false)).expect("generate");
    assert_eq!(usage.token_ids, want);
    assert_eq!(usage.prompt_tokens, 1);
    assert_eq!((usage.finish_reason, usage.finish_detail), ("length", "max_tokens"));
    assert_eq!(text, reference["text"].as_str().unwrap());
}

#[test]
fn interrupt_stop_strings_and_bad_requests() {
    let Some(dir) = stories_dir() else { return };
    let mut s = session(&dir);
    let asked = Cell::new(0);
    let stop_after_3 = || {
        asked.set(asked.get() + 1);
        asked.get() >= 3
    };
    let req = request(r#"{"prompt": "", "max_tokens": 100, "temperature": 0.8, "seed": 7}"#);
    let usage = pollster::block_on(s.generate(&req, &mut |_| {}, &stop_after_3)).expect("generate");
    assert_eq!((usage.finish_reason, usage.completion_tokens), ("interrupted", 3));

    let req = request(r#"{"prompt": "", "max_tokens": 200, "temperature": 0, "stop": "Lily"}"#);
    let mut text = String::new();
    let usage = pollster::block_on(s.generate(&req, &mut |t| text.push_str(t), &|| false)).expect("generate");
    assert_eq!(usage.finish_detail, "stop_string");
    assert_eq!(text, "Once upon a time, there was a little girl named ");

    for (json, why) in [
        (r#"{"max_tokens": 3}"#, "neither prompt nor messages"),
        (r#"{"prompt": "a", "messages": []}"#, "not both"),
        (r#"{"messages": [{"role": "user", "content": "hi"}]}"#, "chat template"),
        (r#"{"prompt": "a", "top_p": 0}"#, "top_p"),
        (r#"{"prompt": "a", "stop": ["", "x"]}"#, "stop string is empty"),
    ] {
        let e = pollster::block_on(s.generate(&request(json), &mut |_| {}, &|| false)).expect_err(json).to_string();
        assert!(e.contains(why), "{json}: {e}");
    }
}
