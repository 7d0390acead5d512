//! Request fields that change what is drawn or what is reported with it: presence and frequency
//! penalties, and log-probabilities in both APIs' shapes, streamed and not. Answers are checked
//! against the engine alone (`tandem_core::generate`, and the model's raw logits).

mod common;

use common::{start, stories, Options, Reference, TestServer};
use hyper::StatusCode;
use serde_json::{json, Value};
use tandem_core::generate::GenerateParams;
use tandem_core::sampling::{argmax, logprobs, SamplingParams};

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalties_change_greedy_answers_as_the_engine_does() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let s = start(&dir, Options::default()).await;
    let prompt = "Once upon a time";
    let ids = r.text_prompt(prompt);
    let (plain, _) = r.greedy_with(&ids, 60, true);
    for (presence, frequency) in [(0.0, 2.0), (2.0, 0.0), (0.5, -0.5)] {
        let sampling = SamplingParams {
            presence_penalty: presence,
            frequency_penalty: frequency,
            ..Default::default()
        };
        let want = r
            .generate(
                &ids,
                &GenerateParams {
                    max_tokens: 60,
                    sampling,
                    stop: vec![],
                    ignore_eos: true,
                    constraint: None,
                    adapter: None,
                },
            )
            .text;
        let body = json!({ "prompt": prompt, "max_tokens": 60, "temperature": 0, "ignore_eos": true, "presence_penalty": presence, "frequency_penalty": frequency });
        let (status, v) = s.post("/v1/completions", &body).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(
            v["choices"][0]["text"],
            want.as_str(),
            "presence {presence}, frequency {frequency}"
        );
        if frequency == 2.0 || presence == 2.0 {
            assert_ne!(want, plain, "a strong penalty should change the greedy answer");
        }
    }
    // Chat takes them too.
    let messages = json!([{ "role": "user", "content": "Tell me a story." }]);
    let (status, v) = s.post("/v1/chat/completions", &json!({ "messages": messages, "max_tokens": 5, "frequency_penalty": 1.0, "presence_penalty": -1.0 })).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // Out of OpenAI's range, or not a number: 400 naming the field.
    for (path, body, needle) in [
        ("/v1/completions", json!({ "prompt": "x", "presence_penalty": 2.5 }), "presence_penalty"),
        ("/v1/completions", json!({ "prompt": "x", "frequency_penalty": -3 }), "frequency_penalty"),
        (
            "/v1/completions",
            json!({ "prompt": "x", "frequency_penalty": "high" }),
            "frequency_penalty",
        ),
        (
            "/v1/chat/completions",
            json!({ "messages": messages, "presence_penalty": -2.01 }),
            "presence_penalty",
        ),
    ] {
        let (status, v) = s.post(path, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().unwrap().contains(needle) || e["param"] == needle, "{v}");
    }
    s.shutdown().await.unwrap();
}

/// The ids of the greedy answer to `prompt` and the raw logits before each.
fn greedy_chain(r: &mut Reference, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let params = GenerateParams { max_tokens: n, ignore_eos: true, ..Default::default() };
    let tokens = r.generate(prompt, &params).tokens;
    let logits = r.logits_before(prompt, &tokens);
    (tokens, logits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_logprobs_are_the_models() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let s = start(&dir, Options::default()).await;
    let ids = r.text_prompt("Once upon a time");
    let (want_text, _) = r.greedy_with(&ids, 24, true);
    let (tokens, logits) = greedy_chain(&mut r, &ids, 24);
    let body = json!({ "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "ignore_eos": true, "logprobs": 3 });
    let (status, v) = s.post("/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let choice = &v["choices"][0];
    // Asking for logprobs reads the logits back and draws on the host: the same tokens.
    assert_eq!(choice["text"], want_text.as_str());
    let lp = &choice["logprobs"];
    let names: Vec<&str> =
        lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let token_logprobs = f32s(&lp["token_logprobs"]);
    assert_eq!(names.len(), tokens.len());
    assert_eq!(v["usage"]["completion_tokens"], tokens.len());
    let mut offset = 0;
    for (i, name) in names.iter().enumerate() {
        // The model's own distribution: log_softmax of its logits, exactly.
        let want = logprobs(&logits[i], tokens[i], 3);
        assert_eq!(argmax(&logits[i]), tokens[i]);
        assert_eq!(token_logprobs[i], want.logprob, "token {i}");
        assert!(token_logprobs[i] <= 0.0);
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!((1..=4).contains(&top.len()), "{top:?}");
        // Greedy: the chosen token is the most likely, its logprob the largest.
        assert_eq!(top[*name].as_f64().unwrap() as f32, token_logprobs[i]);
        assert!(top.values().all(|l| l.as_f64().unwrap() as f32 <= token_logprobs[i]), "{top:?}");
        assert_eq!(lp["text_offset"][i], offset);
        offset += name.chars().count();
    }
    assert_eq!(names.concat().trim_start(), want_text.trim_start());

    // Streamed: the chunks' lists, joined, are the same lists.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let chunks = s.stream("/v1/completions", &stream).await;
    let mut joined =
        json!({ "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": [] });
    for c in &chunks {
        let l = &c["choices"][0]["logprobs"];
        if l.is_null() {
            continue;
        }
        for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            let part = l[key].as_array().unwrap().clone();
            joined[key].as_array_mut().unwrap().extend(part);
        }
    }
    assert_eq!(&joined, lp);

    // logprobs 0: the chosen token alone. A sampled answer is the one drawn without logprobs.
    let sampled = json!({ "prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0, "seed": 5, "logprobs": 0 });
    let (_, with) = s.post("/v1/completions", &sampled).await;
    let mut plain = sampled.clone();
    plain.as_object_mut().unwrap().remove("logprobs");
    let (_, without) = s.post("/v1/completions", &plain).await;
    assert_eq!(with["choices"][0]["text"], without["choices"][0]["text"]);
    assert!(without["choices"][0]["logprobs"].is_null());
    let tops = with["choices"][0]["logprobs"]["top_logprobs"].as_array().unwrap();
    assert!(tops.iter().all(|t| t.as_object().unwrap().len() == 1), "{tops:?}");
    assert!(f32s(&with["choices"][0]["logprobs"]["token_logprobs"]).iter().all(|&l| l <= 0.0));

    for bad in [json!(6), json!(-1), json!("many")] {
        let (status, v) =
            s.post("/v1/completions", &json!({ "prompt": "x", "logprobs": bad })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["param"], "logprobs", "{v}");
    }
    s.shutdown().await.unwrap();
}

/// The `logprobs.content` entries of a chat answer, streamed or not.
async fn chat_content(s: &TestServer, body: &Value) -> (String, Vec<Value>, u64) {
    let (status, v) = s.post("/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let c = &v["choices"][0];
    (
        c["message"]["content"].as_str().unwrap().to_string(),
        c["logprobs"]["content"].as_array().unwrap().clone(),
        v["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_name_tokens_and_alternatives() {
    let Some(dir) = stories() else { return };
    let mut r = Reference::new(&dir);
    let s = start(&dir, Options::default()).await;
    let ids = r.chat_prompt("Tell me a story about a dog.");
    let (want_text, _) = r.greedy(&ids, 30);
    let (tokens, logits) = greedy_chain(&mut r, &ids, 30);
    let messages = json!([{ "role": "user", "content": "Tell me a story about a dog." }]);
    let body = json!({ "messages": messages, "max_tokens": 30, "temperature": 0, "logprobs": true, "top_logprobs": 5 });
    let (text, content, n) = chat_content(&s, &body).await;
    assert_eq!(text, want_text);
    assert_eq!(content.len() as u64, n, "one entry per generated token");
    for (i, e) in content.iter().enumerate() {
        let logprob = e["logprob"].as_f64().unwrap() as f32;
        assert_eq!(logprob, logprobs(&logits[i], tokens[i], 0).logprob, "token {i}");
        assert!(logprob <= 0.0);
        let token = e["token"].as_str().unwrap();
        let bytes: Vec<u8> = serde_json::from_value(e["bytes"].clone()).unwrap();
        assert_eq!(String::from_utf8_lossy(&bytes), token);
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        // Greedy: the chosen token heads the list; the list is most likely first.
        assert_eq!(
            (top[0]["token"].as_str().unwrap(), top[0]["logprob"].as_f64().unwrap() as f32),
            (token, logprob),
            "{e}"
        );
        let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
    }

    // Streamed: the chunks' entries, joined, are the same entries.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let chunks = s.stream("/v1/chat/completions", &stream).await;
    let joined: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(joined, content);

    // logprobs alone: no alternatives.
    let (_, content, _) =
        chat_content(&s, &json!({ "messages": messages, "max_tokens": 4, "logprobs": true })).await;
    assert!(content.iter().all(|e| e["top_logprobs"] == json!([])), "{content:?}");
    for (body, needle) in [
        (json!({ "messages": messages, "logprobs": true, "top_logprobs": 21 }), "top_logprobs"),
        (json!({ "messages": messages, "top_logprobs": 2 }), "top_logprobs"),
        (json!({ "messages": messages, "logprobs": 1 }), "logprobs"),
    ] {
        let (status, v) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["param"], needle, "{v}");
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_and_penalties_do_not_depend_on_the_batch() {
    let Some(dir) = stories() else { return };
    let s = std::sync::Arc::new(start(&dir, Options::default()).await);
    let bodies: Vec<Value> = (0..12)
        .map(|i| {
            let mut b = json!({ "prompt": format!("Lily {i}"), "max_tokens": 30 + i * 7, "temperature": if i % 3 == 0 { 0.0 } else { 0.9 }, "seed": i, "ignore_eos": true });
            match i % 4 {
                0 => b["logprobs"] = json!(2),
                1 => b["frequency_penalty"] = json!(1.5),
                2 => (b["logprobs"], b["presence_penalty"]) = (json!(5), json!(-0.5)),
                _ => {}
            }
            b
        })
        .collect();
    // Alone, one after another, then all at once.
    let mut alone = vec![];
    for b in &bodies {
        alone.push(s.post("/v1/completions", b).await.1["choices"][0].clone());
    }
    let together: Vec<_> = bodies
        .iter()
        .map(|b| {
            let (s, b) = (s.clone(), b.clone());
            tokio::spawn(async move { s.post("/v1/completions", &b).await.1["choices"][0].clone() })
        })
        .collect();
    for (i, (t, a)) in together.into_iter().zip(alone).enumerate() {
        assert_eq!(t.await.unwrap(), a, "request {i}: {}", bodies[i]);
    }
    std::sync::Arc::into_inner(s).unwrap().shutdown().await.unwrap();
}
