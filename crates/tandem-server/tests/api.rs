//! The endpoints against the engine alone: every greedy answer, streamed or not, alone or among
//! 32 concurrent clients, with speculative decoding or without, equals what
//! `tandem_core::generate::generate` gives for the prompt.

mod common;

use common::{start, stories, stream_text, Options, Reference};
use hyper::StatusCode;
use serde_json::json;
use tandem_core::tokenizer::ChatMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_match_generate() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let s = start(&dir, Options::default()).await;
    for (prompt, max) in [("Once upon a time", 40), ("The cat", 7), ("", 64)] {
        let ids = r.text_prompt(prompt);
        let (want, n) = r.greedy(&ids, max);
        let body =
            json!({ "model": "stories", "prompt": prompt, "max_tokens": max, "temperature": 0 });
        let (status, v) = s.post("/v1/completions", &body).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], want.as_str(), "prompt {prompt:?}");
        assert_eq!(v["choices"][0]["finish_reason"], if n == max { "length" } else { "stop" });
        assert_eq!(v["usage"]["prompt_tokens"], ids.len());
        assert_eq!(v["usage"]["completion_tokens"], n);
        assert!(v["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());

        // The same as token ids, streamed with usage.
        let body = json!({ "prompt": ids, "max_tokens": max, "temperature": 0, "stream": true, "stream_options": { "include_usage": true } });
        let chunks = s.stream("/v1/completions", &body).await;
        let got = stream_text(&chunks, false);
        assert_eq!(got[0].0, want);
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["completion_tokens"], n, "{usage}");
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_matches_generate() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let s = start(&dir, Options::default()).await;
    let ids = r.chat_prompt("Tell me a story about a dog.");
    let (want, _) = r.greedy(&ids, 50);
    let messages = json!([{ "role": "user", "content": "Tell me a story about a dog." }]);
    let (status, v) = s
        .post(
            "/v1/chat/completions",
            &json!({ "messages": messages, "max_completion_tokens": 50, "temperature": 0.0 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());

    // Content as a list of text parts, streamed, two choices.
    let parts = json!([{ "role": "user", "content": [{ "type": "text", "text": "Tell me a story " }, { "type": "text", "text": "about a dog." }] }]);
    let chunks = s.stream("/v1/chat/completions", &json!({ "messages": parts, "max_tokens": 50, "temperature": 0, "stream": true, "n": 2 })).await;
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let got = stream_text(&chunks, true);
    assert_eq!(got.len(), 2);
    for (text, reason) in &got {
        assert_eq!(text, &want);
        assert!(reason == "stop" || reason == "length", "{reason}");
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_match_single_requests() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let s = std::sync::Arc::new(start(&dir, Options::default()).await);
    let starts = [
        "Once upon a time",
        "Lily",
        "The sun",
        "One day, a little",
        "Tom and",
        "Sam was",
        "There was a",
        "A big",
    ];
    let mut expected = vec![];
    let mut clients = vec![];
    for i in 0..32 {
        let prompt = format!("{} {}", starts[i % starts.len()], ["", "girl", "dog", "tree"][i / 8]);
        let max = 8 + (i * 13) % 90;
        expected.push(r.greedy(&r.text_prompt(&prompt), max).0);
        let s = s.clone();
        let body = json!({ "prompt": prompt, "max_tokens": max, "temperature": 0, "stream": true });
        clients.push(tokio::spawn(async move {
            stream_text(&s.stream("/v1/completions", &body).await, false).remove(0).0
        }));
    }
    for (i, (c, want)) in clients.into_iter().zip(expected).enumerate() {
        assert_eq!(c.await.unwrap(), want, "client {i}");
    }
    assert_eq!(s.metric("tandem_kv_blocks_used", "stories").await, 0.0);
    std::sync::Arc::into_inner(s).unwrap().shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_serving_matches_generate() {
    // With n-gram drafting and with a draft model (stories260K drafting for itself), 8
    // concurrent greedy streams each equal plain greedy generation; the usage counts the
    // drafts the model accepted and rejected; no KV block stays in use.
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    for (label, speculate) in [("n-gram", None), ("draft model", Some(4))] {
        let s = std::sync::Arc::new(
            start(&dir, Options { speculate: Some(speculate), ..Options::default() }).await,
        );
        let mut clients = vec![];
        for i in 0..8 {
            let prompt = ["Once upon a time", "Lily", "The sun", "One day, a little"][i % 4]
                .to_string()
                + ["", " the"][i / 4];
            let max = 10 + 11 * i;
            let want = r.greedy(&r.text_prompt(&prompt), max).0;
            let s = s.clone();
            let body = json!({ "prompt": prompt, "max_tokens": max, "temperature": 0, "stream": true, "stream_options": { "include_usage": true } });
            clients.push(tokio::spawn(
                async move { (s.stream("/v1/completions", &body).await, want) },
            ));
        }
        let (mut accepted, mut rejected) = (0, 0);
        for (i, c) in clients.into_iter().enumerate() {
            let (chunks, want) = c.await.unwrap();
            assert_eq!(stream_text(&chunks, false)[0].0, want, "{label}: client {i}");
            let details = &chunks.last().unwrap()["usage"]["completion_tokens_details"];
            accepted += details["accepted_prediction_tokens"].as_u64().unwrap();
            rejected += details["rejected_prediction_tokens"].as_u64().unwrap();
        }
        if speculate.is_some() {
            // The model drafting for itself: every greedy draft is accepted.
            assert!(
                accepted > 100 && rejected == 0,
                "{label}: {accepted} accepted, {rejected} rejected"
            );
        }
        assert_eq!(s.metric("tandem_kv_blocks_used", "stories").await, 0.0);
        std::sync::Arc::into_inner(s).unwrap().shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_metrics_tokenize_and_routing() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let s =
        start(&dir, Options { names: vec!["a".into(), "b".into()], ..Options::default() }).await;
    let (status, health) = s.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let (_, models) = s.get("/v1/models").await;
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"]);

    let (want, n) = r.greedy(&r.text_prompt("Once upon a time"), 20);
    for model in ["a", "b"] {
        let (status, v) = s.post("/v1/completions", &json!({ "model": model, "prompt": "Once upon a time", "max_tokens": 20, "temperature": 0 })).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["model"], model);
        assert_eq!(v["choices"][0]["text"], want.as_str());
    }
    // Each model counted its own tokens.
    assert_eq!(s.metric("tandem_generated_tokens_total", "a").await, n as f64);
    assert_eq!(s.metric("tandem_generated_tokens_total", "b").await, n as f64);
    assert!(s.metric("tandem_kv_blocks_total", "a").await > 0.0);
    let (_, text) = s.get("/metrics").await;
    for name in [
        "tandem_time_to_first_token_seconds_bucket",
        "tandem_inter_token_latency_seconds_count",
        "tandem_queue_time_seconds_sum",
        "tandem_e2e_request_latency_seconds_count",
        "tandem_requests_finished_total{model=\"a\",reason=\"length\"} 1",
        "tandem_prefix_cache_hit_tokens_total",
        "tandem_preemptions_total",
        "tandem_kv_usage_ratio",
        "tandem_kv_blocks_cached",
    ] {
        assert!(text.contains(name), "no {name} in /metrics:\n{text}");
    }

    let (status, v) =
        s.post("/tokenize", &json!({ "model": "b", "prompt": "Once upon a time" })).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    assert_eq!(tokens, r.text_prompt("Once upon a time"));
    assert_eq!(v["count"], tokens.len());
    let (status, v) = s.post("/detokenize", &json!({ "tokens": tokens[1..] })).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["prompt"], "Once upon a time");
    let (_, v) =
        s.post("/tokenize", &json!({ "messages": [{ "role": "user", "content": "hi" }] })).await;
    assert_eq!(
        serde_json::from_value::<Vec<u32>>(v["tokens"].clone()).unwrap(),
        r.chat_prompt("hi")
    );
    // chat_template_kwargs reach the template (here overriding a special token's text, as
    // HF's keyword arguments may); the names tandem passes itself are refused.
    let kwargs = json!({ "bos_token": "[B]" });
    let hi = json!([{ "role": "user", "content": "hi" }]);
    let body = json!({ "messages": hi, "chat_template_kwargs": kwargs });
    let (status, v) = s.post("/tokenize", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let user = [ChatMessage::new("user", "hi")];
    let text = r.tok.apply_chat_template_with(&user, true, kwargs.as_object().unwrap()).unwrap();
    assert!(text.starts_with("[B]user: hi"), "{text}");
    assert_eq!(
        serde_json::from_value::<Vec<u32>>(v["tokens"].clone()).unwrap(),
        r.tok.encode(&text).unwrap()
    );
    let body = json!({ "messages": hi, "chat_template_kwargs": { "messages": [] } });
    let (status, v) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    s.shutdown().await.unwrap();
}
