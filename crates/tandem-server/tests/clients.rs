//! The server through the clients operators point at it: the official `openai` Python client
//! (completions and chat, streamed and not) and `curl` reading server-sent events. Their greedy
//! answers equal `tandem_core::generate`'s. A missing client is a printed SKIP: `.ci/run`
//! installs the Python package into tandem's cache (`$PYTHONPATH`).

mod common;

use std::process::Command;

use common::{start, stories, Options, Reference};
use serde_json::Value;

/// Why `program args` cannot run here, or None.
fn missing(program: &str, args: &[&str]) -> Option<String> {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("failed")
                .to_string(),
        ),
        Err(e) => Some(format!("{program}: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_gets_tandems_answers() {
    let Some(dir) = stories() else { return };
    if let Some(why) = missing("python3", &["-c", "import openai"]) {
        return eprintln!("SKIP the_openai_python_client_gets_tandems_answers: no openai Python package ({why}); pip install openai");
    }
    let mut r = Reference::new(&dir);
    let (text, chat_ids) =
        (r.text_prompt("Once upon a time"), r.chat_prompt("Tell me a story about a dog."));
    let (completion, completion_n) = r.greedy(&text, 40);
    let (chat, chat_n) = r.greedy(&chat_ids, 50);
    let s = start(&dir, Options::default()).await;
    let v = common::python_client("openai_client.py", s.url("/v1"), "stories").await;
    assert_eq!(v["models"], serde_json::json!(["stories"]));
    assert_eq!(v["completion"], completion.as_str());
    assert_eq!(v["completion_usage"], completion_n);
    assert_eq!(v["completion_stream"], completion.as_str());
    assert_eq!(v["chat"], chat.as_str());
    assert_eq!(v["chat_finish"], if chat_n == 50 { "length" } else { "stop" });
    assert_eq!(v["chat_stream"], chat.as_str());
    assert_eq!(v["chat_stream_usage"], chat_n);
    // Logprobs through the client's own types: greedy picks the top entry, streamed equals not.
    let lp = &v["completion_logprobs"];
    assert_eq!(v["completion_logprobs_text"], r.greedy(&text, 12).0.as_str());
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 12, "{lp}");
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let (token, logprob) =
            (lp["tokens"][i].as_str().unwrap(), lp["token_logprobs"][i].as_f64().unwrap());
        assert!(logprob <= 0.0);
        assert_eq!(top[token].as_f64(), Some(logprob), "{top}");
        assert!(top.as_object().unwrap().values().all(|l| l.as_f64().unwrap() <= logprob), "{top}");
    }
    assert_eq!(v["completion_logprobs_stream"], *lp);
    let content = v["chat_logprobs"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["chat_logprobs_usage"].as_u64().unwrap());
    for e in content {
        assert!(e["logprob"].as_f64().unwrap() <= 0.0, "{e}");
        assert_eq!(e["top"].as_array().unwrap().len(), 3, "{e}");
        assert_eq!(e["top"][0], serde_json::json!([e["token"], e["logprob"]]), "{e}");
        assert!(e["bytes"].is_array(), "{e}");
    }
    assert_eq!(v["chat_logprobs_stream"], v["chat_logprobs"]);
    eprintln!("openai client: completions and chat, streamed and not, with logprobs, equal tandem's greedy answers");
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_the_event_stream() {
    let Some(dir) = stories() else { return };
    if let Some(why) = missing("curl", &["--version"]) {
        return eprintln!("SKIP curl_reads_the_event_stream: {why}");
    }
    let mut r = Reference::new(&dir);
    let prompt = r.text_prompt("The cat");
    let (want, _) = r.greedy(&prompt, 30);
    let s = start(&dir, Options::default()).await;
    let url = s.url("/v1/completions");
    let body = r#"{"prompt": "The cat", "max_tokens": 30, "temperature": 0, "stream": true}"#;
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-sN",
                "--max-time",
                "60",
                "-H",
                "content-type: application/json",
                "-d",
                body,
                &url,
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.trim().is_empty()).collect();
    assert_eq!(events.last().map(|e| e.trim()), Some("data: [DONE]"), "{text}");
    let mut got = String::new();
    for e in &events[..events.len() - 1] {
        let data =
            e.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {e:?}"));
        let v: Value = serde_json::from_str(data).unwrap();
        got.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
    }
    assert_eq!(got, want);
    s.shutdown().await.unwrap();
}
