//! Each model family's fixture GGUF (tests/fixtures/families) as the browser's worker loads it:
//! streamed in chunks through `ModelStream` into a `Session` on the CPU reference backend, fed
//! the reference's prompt ids as a request's `prompt`. Its 32 greedy tokens must equal
//! transformers' (`gguf_reference` where the GGUF cannot carry a setting of the HF config).
//! The page runs the same files on WebGPU and the WASM CPU fallback
//! (tests/browser/families.test.mjs); this catches a streaming-only gap natively.

use std::path::PathBuf;
use tandem_core::model::{ModelOptions, ModelStream};
use tandem_cpu::CpuBackend;
use tandem_web::{Added, Output, Request, Session, Usage, WebBackend};

const FAMILIES: [&str; 7] =
    ["qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3", "mistral", "mixtral"];

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/families").join(family)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// The GGUF streamed in 64 KiB chunks, with the worker's default context (capped at the
/// model's).
fn load(family: &str) -> Session {
    let bytes = std::fs::read(fixture(family).join("model.gguf")).expect("read model.gguf");
    let opts = ModelOptions { context: 2048, ..ModelOptions::default() };
    let mut s = ModelStream::new(WebBackend::Cpu(CpuBackend::reference()), &opts);
    s.begin_file("model.gguf", Some(bytes.len() as u64)).expect("begin");
    bytes.chunks(64 << 10).try_for_each(|c| s.push(c)).expect("push");
    s.end_file().expect("end");
    Session::new(s.finish().unwrap_or_else(|e| panic!("{family}: {e}")), 4, None)
        .unwrap_or_else(|e| panic!("{family}: {e}"))
}

/// Runs `req` alone to its end.
fn run(s: &mut Session, req: &Request) -> Usage {
    let Added::Queued(id) = s.add(req).expect("add") else { panic!("nothing to generate") };
    loop {
        for (rid, out) in pollster::block_on(s.step()) {
            assert_eq!(rid, id);
            match out {
                Output::Text(_) => {}
                Output::Done(usage) => return usage,
                Output::Failed(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn every_family_gguf_streamed_gives_the_reference_greedy_tokens() {
    for family in FAMILIES {
        let text = std::fs::read_to_string(fixture(family).join("reference.json")).unwrap();
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        let prompt = ids(&reference["prompt"]);
        let want = ids(&reference.get("gguf_reference").unwrap_or(&reference)["greedy"]);
        let mut s = load(family);
        let req = serde_json::json!({
            "prompt": prompt, "max_tokens": want.len(), "temperature": 0, "ignore_eos": true,
        });
        let usage = run(&mut s, &serde_json::from_value(req).expect("request"));
        assert_eq!(usage.prompt_tokens, prompt.len(), "{family}: the ids are fed as given");
        assert_eq!(usage.token_ids, want, "{family} ({}): greedy tokens", s.info.architecture);
    }
}
