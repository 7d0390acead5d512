//! Structured output and tool calls through the HTTP API on stories260K: `response_format`
//! (json_object, json_schema), `regex`, `grammar` (GBNF and Lark), forced tool calls (`required`
//! and a named function) returned as `message.tool_calls` and streamed as `delta.tool_calls`,
//! the official Python client's `parse()`; and every bad constraint a 400 naming the problem,
//! before anything is queued.

mod common;

use std::process::Command;

use common::{start, stories, Options};
use hyper::StatusCode;
use serde_json::{json, Value};

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "stories", "temperature": 0, "max_tokens": 160,
        "messages": [{"role": "user", "content": "Tell me about a dog."}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"],
            "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
            "additionalProperties": false}}}
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_chat_answers_hold_their_constraints() {
    let Some(dir) = stories() else { return };
    let s = start(&dir, Options::default()).await;
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8}}, "required": ["name", "legs"],
        "additionalProperties": false});
    let (st, r) = s
        .post(
            "/v1/chat/completions",
            &chat(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "dog", "schema": schema, "strict": true}}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
    let v: Value = serde_json::from_str(r["choices"][0]["message"]["content"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {r}"));
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 2, "{v}");
    assert!(v["name"].as_str().unwrap().chars().count() <= 8, "{v}");
    assert!((0..=8).contains(&v["legs"].as_i64().unwrap()), "{v}");

    let (_, r) =
        s.post("/v1/chat/completions", &chat(json!({"regex": "[a-z]{2,5}-[0-9]{3}"}))).await;
    let text = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let (word, num) = text.split_once('-').unwrap_or_else(|| panic!("{r}"));
    assert!(
        (2..=5).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_lowercase()),
        "{text}"
    );
    assert!(num.len() == 3 && num.bytes().all(|b| b.is_ascii_digit()), "{text}");

    let gbnf = "root ::= \"<\" [ab]+ \">\"\n";
    let (_, r) = s
        .post(
            "/v1/completions",
            &json!({"model": "stories", "prompt": "Once", "max_tokens": 40,
        "temperature": 0, "grammar": gbnf}),
        )
        .await;
    let text = r["choices"][0]["text"].as_str().unwrap();
    if r["choices"][0]["finish_reason"] == "stop" {
        let inner = text
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or_else(|| panic!("{r}"));
        assert!(!inner.is_empty() && inner.bytes().all(|b| b == b'a' || b == b'b'), "{text}");
    } else {
        assert!(
            text.starts_with('<') && text[1..].bytes().all(|b| b == b'a' || b == b'b'),
            "{text}"
        );
    }

    // A forced call: to one of the tools, with valid arguments, as tool_calls.
    for choice in [json!("required"), json!({"type": "function", "function": {"name": "get_time"}})]
    {
        // stories260K spells the tools' system text nearly byte by byte: the call gets what
        // room the context leaves (no max_tokens), one call.
        let mut body =
            chat(json!({"tools": tools(), "tool_choice": choice, "parallel_tool_calls": false}));
        body.as_object_mut().unwrap().remove("max_tokens");
        let (st, r) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        let c = &r["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{r}");
        let call = &c["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
        let name = call["function"]["name"].as_str().unwrap();
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        match name {
            "get_weather" => {
                assert!(args["city"].as_str().unwrap().chars().count() <= 10, "{args}")
            }
            "get_time" => {
                assert!(["UTC", "CET"].contains(&args["zone"].as_str().unwrap()), "{args}")
            }
            other => panic!("called {other}"),
        }
        if choice.is_object() {
            assert_eq!(name, "get_time");
        }
        // Streamed: the same call as delta.tool_calls.
        let mut body = body.clone();
        body["stream"] = json!(true);
        let chunks = s.stream("/v1/chat/completions", &body).await;
        let deltas: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .collect();
        assert_eq!(deltas.len(), 1, "{chunks:?}");
        assert_eq!(deltas[0]["function"]["name"], name);
        assert_eq!(deltas[0]["function"]["arguments"], call["function"]["arguments"]);
        let last =
            chunks.iter().rev().find(|c| !c["choices"][0]["finish_reason"].is_null()).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    }
    // `auto` with a question no tool answers: a template without tool syntax answers in
    // tandem's JSON, held to it, so the reply is either text content or valid calls.
    let mut body =
        chat(json!({"tools": tools(), "tool_choice": "auto", "parallel_tool_calls": false}));
    body["messages"][0]["content"] = json!("Tell me a story about a cat.");
    body.as_object_mut().unwrap().remove("max_tokens");
    let (st, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let c = &r["choices"][0];
    match c["finish_reason"].as_str().unwrap() {
        "tool_calls" => {
            let call = &c["message"]["tool_calls"][0]["function"];
            assert!(["get_weather", "get_time"].contains(&call["name"].as_str().unwrap()), "{r}");
            serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap();
        }
        "stop" => assert!(c["message"]["content"].is_string(), "{r}"),
        "length" => {}
        other => panic!("finish_reason {other}: {r}"),
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_constraints_are_400s_naming_the_problem() {
    let Some(dir) = stories() else { return };
    let s = start(&dir, Options::default()).await;
    let cases = [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"type": "array", "uniqueItems": true}}}}),
            "uniqueItems",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "schema",
        ),
        (json!({"response_format": {"type": "xml"}}), "xml"),
        (json!({"regex": "(unclosed"}), "regex"),
        (json!({"grammar": "root ::= \"a\" nope\n"}), "nope"),
        (json!({"grammar": "start: x\n", "grammar_syntax": "lark"}), "lark"),
        (json!({"grammar": "root ::= \"a\"", "grammar_syntax": "ebnf"}), "grammar_syntax"),
        (json!({"regex": "a", "response_format": {"type": "json_object"}}), "at most one"),
        (json!({"response_format": {"type": "json_object"}, "stop": ["x"]}), "stop"),
        (
            json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "nope",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}),
            "parameters",
        ),
        (json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}), "bad name"),
        (json!({"tool_choice": "required"}), "no tools"),
        (json!({"tool_choice": 3}), "tool_choice"),
    ];
    for (extra, needle) in cases {
        let (st, r) = s.post("/v1/chat/completions", &chat(extra.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{extra}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_parses_and_calls() {
    let Some(dir) = stories() else { return };
    if let Err(why) = Command::new("python3")
        .args(["-c", "import openai, pydantic"])
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).to_string())
            }
        })
    {
        return eprintln!("SKIP the_openai_python_client_parses_and_calls: no openai Python package ({why}); pip install openai");
    }
    let s = start(&dir, Options::default()).await;
    let v = common::python_client("structured_client.py", s.url("/v1"), "stories").await;
    assert_eq!(v["parse_finish"], "stop", "{v}");
    let pet = &v["parsed"];
    assert!(pet["name"].as_str().unwrap().chars().count() <= 8, "{pet}");
    assert!(["cat", "dog", "bird"].contains(&pet["kind"].as_str().unwrap()), "{pet}");
    assert_eq!(v["call_finish"], "tool_calls", "{v}");
    // ChatCompletionMessageToolCall, or ChatCompletionMessageFunctionToolCall in newer clients.
    assert!(v["call_class"].as_str().unwrap().contains("ToolCall"), "{v}");
    assert_eq!(v["stream_finish"], "tool_calls", "{v}");
    let calls = v["calls"].as_array().unwrap();
    assert!(!calls.is_empty(), "{v}");
    for (c, sc) in calls.iter().zip(v["stream_calls"].as_array().unwrap()) {
        assert_eq!(c["name"], sc["name"]);
        assert_eq!(c["arguments"], sc["arguments"]);
    }
    assert!(v["after_tool_finish"].is_string(), "{v}");
    s.shutdown().await.unwrap();
}
