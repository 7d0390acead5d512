//! LoRA adapters through the browser engine's session, natively: the Qwen3 family fixture's
//! GGUF streamed in as the worker does, PEFT adapters read from their files' bytes and a LoRA
//! GGUF from its bytes (tests/fixtures/lora), requests of three adapters and of the base model
//! in flight at once with fewer slots than adapters. Each must give PEFT's greedy tokens
//! (`reference.json`; the base model's for the base). The page runs the same through the JS
//! API on WebGPU and the WASM CPU fallback (tests/browser/lora.test.mjs).

use std::collections::HashMap;
use std::path::PathBuf;
use tandem_core::model::{LoraOptions, ModelOptions, ModelStream};
use tandem_core::DType;
use tandem_cpu::CpuBackend;
use tandem_web::{Added, Output, Request, Session, WebBackend};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(path)
}

fn reference(adapter: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo(&format!("lora/qwen3-{adapter}/reference.json")));
    serde_json::from_str(&text.expect("reference.json")).expect("JSON")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn session(lora: Option<LoraOptions>) -> Session {
    let bytes = std::fs::read(repo("families/qwen3/model.gguf")).expect("read model.gguf");
    let opts = ModelOptions { context: 512, ..ModelOptions::default() };
    let mut s = ModelStream::new(WebBackend::Cpu(CpuBackend::fast(1).unwrap()), &opts);
    s.begin_file("model.gguf", Some(bytes.len() as u64)).expect("begin");
    bytes.chunks(64 << 10).try_for_each(|c| s.push(c)).expect("push");
    s.end_file().expect("end");
    Session::new(s.finish().expect("finish"), 4, lora).expect("session")
}

/// The PEFT files of fixture `adapter` as the page hands them over: the config's text and the
/// safetensors' bytes.
fn peft_files(adapter: &str) -> (String, Vec<u8>) {
    let dir = repo(&format!("lora/qwen3-{adapter}"));
    let config = std::fs::read_to_string(dir.join("adapter_config.json")).expect("config");
    (config, std::fs::read(dir.join("adapter_model.safetensors")).expect("safetensors"))
}

fn request(fields: serde_json::Value) -> Request {
    let mut req = serde_json::json!({ "temperature": 0, "ignore_eos": true });
    req.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    serde_json::from_value(req).expect("request")
}

#[test]
fn adapters_in_flight_together_give_pefts_greedy_tokens() {
    // Two slots for three adapters: one request waits for a slot while the others run.
    let mut s = session(Some(LoraOptions { slots: 2, rank: 64, dtype: DType::F32 }));
    assert_eq!((s.info.max_loras, s.info.max_lora_rank), (2, 64));
    for name in ["r8", "r64-rslora"] {
        let (config, weights) = peft_files(name);
        let adapter = s.read_adapter(Some(&config), weights).expect(name);
        s.add_adapter(name, adapter).expect(name);
    }
    let gguf = std::fs::read(repo("lora/qwen3-r16/adapter.gguf")).expect("adapter.gguf");
    let adapter = s.read_adapter(None, gguf).expect("the GGUF adapter");
    s.add_adapter("r16", adapter).expect("r16");
    assert!(
        s.add_adapter(
            "r16",
            s.read_adapter(Some(&peft_files("r16").0), peft_files("r16").1).unwrap()
        )
        .is_err(),
        "a taken name"
    );

    let prompt = ids(&reference("r8")["prompt"]);
    let n = ids(&reference("r8")["greedy"]).len();
    // (how the request picks its adapter, the greedy tokens it must give)
    let cases = [
        (serde_json::json!({ "adapter": "r8" }), ids(&reference("r8")["greedy"])),
        (serde_json::json!({ "model": "r64-rslora" }), ids(&reference("r64-rslora")["greedy"])),
        (serde_json::json!({ "adapter": "r16" }), ids(&reference("r16")["greedy"])),
        (serde_json::json!({ "model": "base-model" }), ids(&reference("r8")["base_greedy"])),
    ];
    let mut want = HashMap::new();
    for (pick, tokens) in cases.iter() {
        let mut fields = pick.clone();
        fields["prompt"] = serde_json::json!(prompt);
        fields["max_tokens"] = serde_json::json!(n);
        let Added::Queued(id) = s.add(&request(fields)).expect("add") else { panic!("queued") };
        want.insert(id, (pick.to_string(), tokens.clone()));
    }
    while !want.is_empty() {
        for (id, out) in pollster::block_on(s.step()) {
            match out {
                Output::Text(_) => {}
                Output::Done(usage) => {
                    let (pick, tokens) = want.remove(&id).expect("a request of ours");
                    assert_eq!(usage.token_ids, tokens, "{pick}: greedy tokens");
                }
                Output::Failed(e) => panic!("{e}"),
            }
        }
    }

    s.remove_adapter("r8").expect("remove r8");
    let mut fields = serde_json::json!({ "adapter": "r8", "max_tokens": 4 });
    fields["prompt"] = serde_json::json!(prompt);
    let err = s.add(&request(fields)).expect_err("a removed adapter").to_string();
    assert!(err.contains("r8"), "{err}");
    assert_eq!(s.adapters().len(), 2);
}

#[test]
fn adapters_that_do_not_fit_are_refused_with_the_reason() {
    let off = session(None);
    let (config, weights) = peft_files("r8");
    let err = off.read_adapter(Some(&config), weights.clone()).unwrap_err().to_string();
    assert!(err.contains("maxLoras"), "{err}");

    let mut s = session(Some(LoraOptions { slots: 1, rank: 8, dtype: DType::F16 }));
    let (config64, weights64) = peft_files("r64-rslora");
    let err = s.read_adapter(Some(&config64), weights64).unwrap_err().to_string();
    assert!(err.contains("rank 64") && err.contains("maxLoraRank"), "{err}");
    let err = s.read_adapter(Some(&config), weights[..weights.len() / 2].to_vec()).unwrap_err();
    assert!(err.to_string().contains("LoRA adapter"), "{err}");
    let err = s.read_adapter(None, b"GGUF not really".to_vec()).unwrap_err();
    assert!(!err.to_string().is_empty());
    let mut fields = serde_json::json!({ "adapter": "nothing", "max_tokens": 4 });
    fields["prompt"] = serde_json::json!([1, 2, 3]);
    let err = s.add(&request(fields)).expect_err("an unknown adapter").to_string();
    assert!(err.contains("nothing"), "{err}");
}
