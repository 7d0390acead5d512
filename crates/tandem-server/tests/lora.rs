//! LoRA adapters through the server: served as models of their own (listed with their base
//! as parent), chosen by `model`, mixed in one engine with one slot between two adapters and
//! requests of the base, with PEFT's tokens; unloaded (then 404) and loaded again at run time;
//! per-adapter metrics. On the Qwen3 fixture model and its PEFT adapters
//! (`tests/fixtures/lora`).

mod common;

use std::path::PathBuf;

use common::{start, Options};
use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{json, Value};
use tandem_core::model::LoraOptions;
use tandem_core::tokenizer::Tokenizer;
use tandem_core::DType;
use tandem_server::ServerConfig;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn adapter_dir(name: &str) -> PathBuf {
    fixtures().join(format!("lora/qwen3-{name}"))
}

/// The fixture's prompt and the text of its greedy tokens (`key`: "greedy" through the
/// adapter, "base_greedy" without).
fn reference(adapter: &str, key: &str, tok: &Tokenizer) -> (Vec<u32>, String) {
    let text = std::fs::read_to_string(adapter_dir(adapter).join("reference.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    (ids("prompt"), tok.decode(&ids(key), true).unwrap())
}

fn options(allow_runtime_lora: bool) -> Options {
    let config = ServerConfig { port: 0, allow_runtime_lora, ..ServerConfig::default() };
    let adapters =
        vec![("r8".into(), adapter_dir("r8")), ("r64".into(), adapter_dir("r64-rslora"))];
    Options {
        config,
        names: vec!["qwen3".into()],
        // One slot for two adapters: they take turns.
        lora: Some((LoraOptions { slots: 1, rank: 64, dtype: DType::F32 }, adapters)),
        ..Options::default()
    }
}

async fn text_of(s: &common::TestServer, path: &str, body: &Value) -> (StatusCode, String) {
    let res = s.send("POST", path, body.to_string(), &[]).await;
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_are_models_mixed_in_one_engine() {
    let base = fixtures().join("families/qwen3");
    let tok = common::tokenizer(&base);
    let s = start(&base, options(true)).await;

    let (_, models) = s.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<(&str, Option<&str>)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["parent"].as_str()))
        .collect();
    assert_eq!(ids, [("qwen3", None), ("r8", Some("qwen3")), ("r64", Some("qwen3"))]);

    // Both adapters and the base at once; each answer is its reference's.
    let cases =
        [("r8", "r8", "greedy"), ("r64", "r64-rslora", "greedy"), ("qwen3", "r8", "base_greedy")];
    let requests = cases.iter().map(|&(model, fixture, key)| {
        let (prompt, want) = reference(fixture, key, &tok);
        let body = json!({ "model": model, "prompt": prompt, "max_tokens": 32, "temperature": 0, "ignore_eos": true });
        let s = &s;
        async move {
            let (status, v) = s.post("/v1/completions", &body).await;
            assert_eq!(status, StatusCode::OK, "{model}: {v}");
            assert_eq!(v["model"], model);
            assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want, "{model}");
        }
    });
    futures_util::future::join_all(requests).await;

    let (_, metrics) = s.get("/metrics").await;
    for a in ["r8", "r64"] {
        let line =
            format!("tandem_lora_requests_finished_total{{model=\"qwen3\",adapter=\"{a}\"}} 1");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }

    // Unloaded: gone from the list, and asking for it is a 404.
    let (status, text) =
        text_of(&s, "/v1/unload_lora_adapter", &json!({ "lora_name": "r64" })).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (_, models) = s.get("/v1/models").await;
    assert!(!models.contains("\"r64\""), "{models}");
    let (prompt, want) = reference("r64-rslora", "greedy", &tok);
    let body = json!({ "model": "r64", "prompt": prompt, "max_tokens": 32, "temperature": 0, "ignore_eos": true });
    assert_eq!(s.post("/v1/completions", &body).await.0, StatusCode::NOT_FOUND);
    let (status, _) = text_of(&s, "/v1/unload_lora_adapter", &json!({ "lora_name": "r64" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Loaded again at run time, under another name.
    let load = json!({ "lora_name": "again", "lora_path": adapter_dir("r64-rslora") });
    let (status, text) = text_of(&s, "/v1/load_lora_adapter", &load).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body = json!({ "model": "again", "prompt": prompt, "max_tokens": 32, "temperature": 0, "ignore_eos": true });
    let (status, v) = s.post("/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want);

    // What a load refuses: a name taken, a path with no adapter, an adapter of another shape.
    let taken = json!({ "lora_name": "r8", "lora_path": adapter_dir("r8") });
    let (status, text) = text_of(&s, "/v1/load_lora_adapter", &taken).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let missing = json!({ "lora_name": "x", "lora_path": "/nonexistent/adapter" });
    let (status, text) = text_of(&s, "/v1/load_lora_adapter", &missing).await;
    assert!(status == StatusCode::BAD_REQUEST && text.contains("lora_path"), "{status}: {text}");
    let phi = json!({ "lora_name": "phi", "lora_path": fixtures().join("lora/phi3-r8") });
    let (status, text) = text_of(&s, "/v1/load_lora_adapter", &phi).await;
    assert!(status == StatusCode::BAD_REQUEST && text.contains("model.layers"), "{status}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_loading_is_off_unless_allowed() {
    let base = fixtures().join("families/qwen3");
    let s = start(&base, options(false)).await;
    let load = json!({ "lora_name": "again", "lora_path": adapter_dir("r8") });
    let (status, text) = text_of(&s, "/v1/load_lora_adapter", &load).await;
    assert!(status == StatusCode::BAD_REQUEST && text.contains("--allow-runtime-lora"), "{text}");
    let (status, _) = text_of(&s, "/v1/unload_lora_adapter", &json!({ "lora_name": "r8" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
