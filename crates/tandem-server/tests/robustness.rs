//! What clients can do to a server: leave mid-stream, send malformed requests, crowd a tiny
//! KV pool or a full queue, and shut it down. Nothing may panic, stall the others, or leak KV.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{start, stories, stream_text, Options, Reference, TestServer};
use hyper::StatusCode;
use serde_json::{json, Value};
use tandem_core::scheduler::SchedulerConfig;
use tandem_server::ServerConfig;

/// Waits (up to 30 s) until no request holds a KV block, runs or waits.
async fn wait_idle(s: &TestServer) {
    for _ in 0..1500 {
        let used = s.metric("tandem_kv_blocks_used", "stories").await;
        let busy = s.metric("tandem_requests_running", "stories").await
            + s.metric("tandem_requests_waiting", "stories").await;
        if used == 0.0 && busy == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, m) = s.get("/metrics").await;
    panic!("requests still hold KV blocks:\n{m}");
}

fn long_stream(max_tokens: usize) -> Value {
    json!({ "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true, "stream": true })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_storm_frees_every_block() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let s = Arc::new(start(&dir, Options::default()).await);
    let mut storm = vec![];
    for i in 0..40 {
        let s = s.clone();
        storm.push(tokio::spawn(async move {
            let body = json!({ "prompt": format!("Lily {i}"), "max_tokens": 400, "temperature": 0.5, "ignore_eos": true, "stream": true });
            let mut events = s.open_stream("/v1/completions", &body).await;
            // Some leave at once, some after a few tokens; dropping the body closes the socket.
            for _ in 0..i % 4 {
                events.next().await;
            }
        }));
    }
    for t in storm {
        t.await.unwrap();
    }
    // Non-streaming clients that give up while their requests run.
    for i in 0..8 {
        let body = json!({ "prompt": format!("Tom {i}"), "max_tokens": 400, "ignore_eos": true });
        let _ =
            tokio::time::timeout(Duration::from_millis(5), s.post("/v1/completions", &body)).await;
    }
    wait_idle(&s).await;
    let aborted =
        s.series("tandem_requests_finished_total{model=\"stories\",reason=\"abort\"}").await;
    assert!(aborted >= 40.0, "{aborted} requests aborted, expected every stream's");
    // Still serving, with the same answers.
    let (want, _) = r.greedy(&r.text_prompt("Once upon a time"), 30);
    let (status, v) = s
        .post(
            "/v1/completions",
            &json!({ "prompt": "Once upon a time", "max_tokens": 30, "temperature": 0 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["text"], want.as_str());
    Arc::into_inner(s).unwrap().shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_kv_pool_completes_every_request() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    // 12 blocks of 16: room for 192 tokens, far less than the requests together need.
    let s = Arc::new(start(&dir, Options { kv_blocks: Some(12), ..Options::default() }).await);
    let names = ["Lily", "Tom", "Sue", "Ben", "Max", "Amy"];
    let prompts: Vec<String> = names.iter().map(|n| format!("{n} went to the")).collect();
    // Several prompts in one request are queued together, so they must share the pool.
    let body =
        json!({ "prompt": prompts, "max_tokens": 150, "temperature": 0, "ignore_eos": true });
    let (status, v) = s.post("/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    for (i, p) in prompts.iter().enumerate() {
        let want = r.greedy_with(&r.text_prompt(p), 150, true).0;
        assert_eq!(v["choices"][i]["text"], want.as_str(), "prompt {i}");
        assert_eq!(v["choices"][i]["index"], i);
    }
    assert!(
        s.metric("tandem_preemptions_total", "stories").await > 0.0,
        "the pool was meant to run out"
    );
    // And clients arriving on their own, streaming or not.
    let mut clients = vec![];
    let mut expected = vec![];
    for i in 0..10 {
        let prompt = format!("{} went to the", names[i % names.len()]);
        let max = 60 + i * 12;
        expected.push(r.greedy_with(&r.text_prompt(&prompt), max, true).0);
        let s = s.clone();
        let body = json!({ "prompt": prompt, "max_tokens": max, "temperature": 0, "ignore_eos": true, "stream": i % 2 == 0 });
        clients.push(tokio::spawn(async move {
            if i % 2 == 0 {
                stream_text(&s.stream("/v1/completions", &body).await, false).remove(0).0
            } else {
                let (status, v) = s.post("/v1/completions", &body).await;
                assert_eq!(status, StatusCode::OK, "{v}");
                v["choices"][0]["text"].as_str().unwrap().to_string()
            }
        }));
    }
    for (i, (c, want)) in clients.into_iter().zip(expected).enumerate() {
        assert_eq!(c.await.unwrap(), want, "request {i}");
    }
    wait_idle(&s).await;
    Arc::into_inner(s).unwrap().shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_while_a_stream_goes_on() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let config = ServerConfig { port: 0, max_body_bytes: 64 << 10, ..ServerConfig::default() };
    let s = Arc::new(start(&dir, Options { config, ..Options::default() }).await);
    let (want, _) = r.greedy_with(&r.text_prompt("Once upon a time"), 480, true);
    let mut events = s.open_stream("/v1/completions", &long_stream(480)).await;
    let first = events.next().await.unwrap();

    let msgs = json!([{ "role": "user", "content": "hi" }]);
    let long_prompt: Vec<u32> = (0..600).map(|i| 3 + i % 500).collect();
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "/v1/completions",
            json!({ "prompt": "x", "temperature": "hot" }),
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "top_p": 1.5 }),
            StatusCode::BAD_REQUEST,
            "top_p",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "temperature": -1 }),
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "top_k": -5 }),
            StatusCode::BAD_REQUEST,
            "top_k",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "max_tokens": -1 }),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "max_tokens": 0 }),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        ("/v1/completions", json!({ "prompt": "x", "n": 0 }), StatusCode::BAD_REQUEST, "n must be"),
        ("/v1/completions", json!({ "prompt": "x", "stop": 5 }), StatusCode::BAD_REQUEST, "stop"),
        ("/v1/completions", json!({ "max_tokens": 3 }), StatusCode::BAD_REQUEST, "prompt"),
        (
            "/v1/completions",
            json!({ "prompt": [1, 99999] }),
            StatusCode::BAD_REQUEST,
            "outside the vocabulary",
        ),
        ("/v1/completions", json!({ "prompt": [] }), StatusCode::BAD_REQUEST, "prompt"),
        (
            "/v1/completions",
            json!({ "prompt": long_prompt }),
            StatusCode::BAD_REQUEST,
            "600 tokens",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "max_tokens": 100000 }),
            StatusCode::BAD_REQUEST,
            "max_tokens 100000",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "presence_penalty": 2.5 }),
            StatusCode::BAD_REQUEST,
            "presence_penalty",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "frequency_penalty": -3 }),
            StatusCode::BAD_REQUEST,
            "frequency_penalty",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "logprobs": 6 }),
            StatusCode::BAD_REQUEST,
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({ "prompt": "x", "echo": true }),
            StatusCode::BAD_REQUEST,
            "echo",
        ),
        (
            "/v1/completions",
            json!({ "model": "nope", "prompt": "x" }),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        ("/v1/chat/completions", json!({ "messages": [] }), StatusCode::BAD_REQUEST, "messages"),
        ("/v1/chat/completions", json!({ "messages": "hi" }), StatusCode::BAD_REQUEST, "messages"),
        (
            "/v1/chat/completions",
            json!({ "messages": [{ "content": "hi" }] }),
            StatusCode::BAD_REQUEST,
            "role",
        ),
        (
            "/v1/chat/completions",
            json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": {} }] }] }),
            StatusCode::BAD_REQUEST,
            "image_url",
        ),
        (
            "/v1/chat/completions",
            json!({ "messages": msgs, "logprobs": true, "top_logprobs": 21 }),
            StatusCode::BAD_REQUEST,
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({ "messages": msgs, "tools": [{ "type": "function" }] }),
            StatusCode::BAD_REQUEST,
            "tools",
        ),
        (
            "/v1/chat/completions",
            json!({ "messages": msgs, "model": 7 }),
            StatusCode::BAD_REQUEST,
            "model",
        ),
        ("/detokenize", json!({ "tokens": [1, 4000] }), StatusCode::BAD_REQUEST, "4000"),
        ("/tokenize", json!({}), StatusCode::BAD_REQUEST, "prompt"),
    ];
    for (path, body, status, needle) in cases {
        let (got, v) = s.post(path, &body).await;
        assert_eq!(got, status, "{path} {body}: {v}");
        check_error(&v, needle);
    }
    for (body, status, needle) in [
        (b"{".to_vec(), StatusCode::BAD_REQUEST, "not valid JSON"),
        (b"[1, 2]".to_vec(), StatusCode::BAD_REQUEST, "JSON object"),
        (vec![0xff, 0xfe], StatusCode::BAD_REQUEST, "not valid JSON"),
        (vec![b' '; 100 << 10], StatusCode::PAYLOAD_TOO_LARGE, "limit"),
    ] {
        let (got, v) = s.post_raw("/v1/chat/completions", body, &[]).await;
        assert_eq!(got, status, "{v}");
        check_error(&v, needle);
    }
    let res = s.send("GET", "/v1/nothing", "", &[]).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = s.send("GET", "/v1/completions", "", &[]).await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Unknown fields are ignored.
    let (got, v) = s
        .post(
            "/v1/completions",
            &json!({ "prompt": "x", "max_tokens": 2, "user": "me", "frobnicate": [1] }),
        )
        .await;
    assert_eq!(got, StatusCode::OK, "{v}");

    // The stream went on untouched.
    let mut chunks = vec![serde_json::from_str::<Value>(&first).unwrap()];
    while let Some(data) = events.next().await {
        if data == "[DONE]" {
            break;
        }
        chunks.push(serde_json::from_str(&data).unwrap());
    }
    let got = stream_text(&chunks, false);
    assert_eq!(got[0], (want, "length".to_string()));
    Arc::into_inner(s).unwrap().shutdown().await.unwrap();
}

/// OpenAI's error shape, with `needle` in the message or the param.
fn check_error(v: &Value, needle: &str) {
    let e = &v["error"];
    let message = e["message"].as_str().unwrap_or_else(|| panic!("no error.message: {v}"));
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    let param = e["param"].as_str().unwrap_or("");
    assert!(message.contains(needle) || param.contains(needle), "expected '{needle}' in {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_and_api_key_is_checked() {
    let Some(dir) = stories() else { return };
    let config = ServerConfig {
        port: 0,
        max_waiting: 1,
        api_key: Some("sekrit".into()),
        ..ServerConfig::default()
    };
    let sched = SchedulerConfig { max_seqs: 1, max_batched_tokens: 64 };
    let s = start(&dir, Options { config, sched, ..Options::default() }).await;
    let key = [("authorization", "Bearer sekrit")];
    let body = json!({ "prompt": "x", "max_tokens": 2 }).to_string();
    for headers in
        [&[][..], &[("authorization", "Bearer wrong")][..], &[("authorization", "sekrit")][..]]
    {
        let (status, v) = s.post_raw("/v1/completions", body.clone(), headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
        check_error(&v, "API key");
    }
    assert_eq!(s.get("/health").await.0, StatusCode::OK, "health needs no key");

    // One running (max_seqs 1), one waiting (max_waiting 1): the next is refused.
    let open = |body: Value| s.send("POST", "/v1/completions", body.to_string(), &key);
    let running = open(long_stream(480)).await;
    assert_eq!(running.status(), StatusCode::OK);
    let mut running = common::SseReader::new(running);
    running.next().await.unwrap();
    let waiting = open(long_stream(480)).await;
    assert_eq!(waiting.status(), StatusCode::OK);
    let (status, v) = s.post_raw("/v1/completions", body.clone(), &key).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    check_error(&v, "waiting");
    drop((running, waiting));
    for _ in 0..1500 {
        let (status, v) = s.post_raw("/v1/completions", body.clone(), &key).await;
        if status == StatusCode::OK {
            s.shutdown().await.unwrap();
            return;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the queue never drained after its clients left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_streams_finish() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let (want, _) = r.greedy_with(&r.text_prompt("Once upon a time"), 300, true);
    let mut s = start(&dir, Options::default()).await;
    let mut events = s.open_stream("/v1/completions", &long_stream(300)).await;
    let first = events.next().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut chunks = vec![serde_json::from_str::<Value>(&first).unwrap()];
        while let Some(data) = events.next().await {
            if data == "[DONE]" {
                return stream_text(&chunks, false).remove(0);
            }
            chunks.push(serde_json::from_str(&data).unwrap());
        }
        panic!("no [DONE]");
    });
    s.signal_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Nothing new is admitted: the listener is closed (or, on a kept-alive connection, 503).
    let req = hyper::Request::post(s.url("/v1/completions"))
        .body(http_body_util::Full::new(json!({ "prompt": "x" }).to_string().into()))
        .unwrap();
    if let Ok(res) = s.client.request(req).await {
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(reader.await.unwrap(), (want, "length".to_string()));
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_aborts_long_streams() {
    let Some(dir) = stories() else { return };
    let config =
        ServerConfig { port: 0, shutdown_timeout: Duration::ZERO, ..ServerConfig::default() };
    let mut s = start(&dir, Options { config, ..Options::default() }).await;
    let mut events = s.open_stream("/v1/completions", &long_stream(480)).await;
    let first = events.next().await.unwrap();
    s.signal_shutdown();
    let mut chunks = vec![serde_json::from_str::<Value>(&first).unwrap()];
    while let Some(data) = events.next().await {
        if data == "[DONE]" {
            break;
        }
        chunks.push(serde_json::from_str(&data).unwrap());
    }
    assert_eq!(stream_text(&chunks, false)[0].1, "abort");
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_the_queue_is_dropped_at_once() {
    let Some(dir) = stories() else { return };
    let sched = SchedulerConfig { max_seqs: 1, max_batched_tokens: 64 };
    let s = Arc::new(start(&dir, Options { sched, ..Options::default() }).await);
    // One sequence at a time: 48 long choices keep everyone else waiting for seconds.
    let blocker = {
        let s = s.clone();
        let body = json!({ "prompt": "Once upon a time", "n": 48, "max_tokens": 480, "temperature": 0.8, "ignore_eos": true });
        tokio::spawn(async move { s.post("/v1/completions", &body).await })
    };
    while s.metric("tandem_requests_running", "stories").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let aborted = || s.series("tandem_requests_finished_total{model=\"stories\",reason=\"abort\"}");
    let until_aborted = |n: f64, t0: std::time::Instant| async move {
        loop {
            let gone = aborted().await;
            if gone == n {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "{gone} waiting requests aborted after {:?}, expected {n}",
                t0.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let body = |stream: bool| json!({ "prompt": "Lily", "max_tokens": 20, "stream": stream });
    // A streaming client leaves while its request waits (its headers are sent already).
    let waiting = s.metric("tandem_requests_waiting", "stories").await;
    let stream = s.open_stream("/v1/completions", &body(true)).await;
    // Seen in the queue (unless a blocker choice finished meanwhile).
    for _ in 0..40 {
        if s.metric("tandem_requests_waiting", "stories").await > waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = std::time::Instant::now();
    drop(stream);
    let streamed = until_aborted(1.0, t0).await;
    assert!(s.metric("tandem_requests_waiting", "stories").await <= waiting);
    // A non-streaming one gives up (its handler future is dropped with the connection).
    let _ =
        tokio::time::timeout(Duration::from_millis(100), s.post("/v1/completions", &body(false)))
            .await;
    let plain = until_aborted(2.0, std::time::Instant::now()).await;
    eprintln!(
        "aborted {streamed:?} after the stream closed, {plain:?} after the plain request gave up"
    );
    assert!(!blocker.is_finished(), "the queue was meant to stay full");
    blocker.abort();
    wait_idle(&s).await;
    Arc::into_inner(s).unwrap().shutdown().await.unwrap();
}
