//! Request limits, through the same parsing and validation the routes run (the entry point the
//! fuzz target `server_request` uses): no model, no socket.

use std::sync::Arc;

use serde_json::json;
use tandem_core::tokenizer::Tokenizer;
use tandem_server::fuzz::{Endpoint, Model, Outcome};

fn model() -> Model {
    let tok = Arc::new(Tokenizer::placeholder(64).expect("placeholder"));
    Model::new(tok, 128, 512, 64)
}

fn refused(endpoint: Endpoint, body: &[u8]) -> (u16, String) {
    match model().request(endpoint, body) {
        Ok(o) => panic!("expected an error, got {o:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_10_mb_prompt_is_a_413_naming_the_limit() {
    let body = json!({ "prompt": "<1> ".repeat(10 << 18) }).to_string();
    let (status, message) = refused(Endpoint::Completions, body.as_bytes());
    assert_eq!(status, 413);
    assert!(message.contains("larger than the limit of 8388608 bytes"), "{message}");
}

#[test]
fn a_million_stop_strings_are_a_400_naming_the_limit() {
    let body = json!({ "prompt": "<1>", "stop": vec!["s"; 1_000_000] }).to_string();
    assert!(body.len() < 8 << 20);
    let (status, message) = refused(Endpoint::Completions, body.as_bytes());
    assert_eq!(status, 400);
    assert!(message.contains("at most 32 stop strings, got 1000000"), "{message}");
    let body = json!({ "prompt": "<1>", "stop": "s".repeat(1000) }).to_string();
    let (status, message) = refused(Endpoint::Completions, body.as_bytes());
    assert_eq!(status, 400);
    assert!(message.contains("at most 256 bytes"), "{message}");
}

#[test]
fn prompts_choices_and_ids_past_their_limits_are_4xx() {
    for (endpoint, body, needle) in [
        (
            Endpoint::Completions,
            json!({ "prompt": vec![1; 129] }),
            "129 tokens but the context holds 128",
        ),
        (Endpoint::Completions, json!({ "prompt": "<1>", "n": 129 }), "n must be in 1..=128"),
        (
            Endpoint::Completions,
            json!({ "prompt": vec![vec![1]; 65], "n": 2 }),
            "n x prompts at most 128",
        ),
        (Endpoint::Completions, json!({ "prompt": "<1>", "max_tokens": 0 }), "at least 1"),
        (
            Endpoint::Completions,
            json!({ "prompt": "<1>", "logprobs": 6 }),
            "logprobs must be in 0..=5",
        ),
        (
            Endpoint::Chat,
            json!({ "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 21, "logprobs": true }),
            "0..=20",
        ),
        (Endpoint::Detokenize, json!({ "tokens": [1, 64] }), "outside the vocabulary of 64"),
        (Endpoint::Tokenize, json!({ "prompt": "x", "messages": [] }), "exactly one"),
    ] {
        let (status, message) = refused(endpoint, body.to_string().as_bytes());
        assert_eq!(status, 400, "{body}: {message}");
        assert!(message.contains(needle), "{body}: {message}");
    }
    match model().request(
        Endpoint::Completions,
        json!({ "prompt": [1, 2], "n": 3, "stop": ["a", "b"] }).to_string().as_bytes(),
    ) {
        Ok(Outcome::Job(choices)) => {
            assert_eq!(choices.len(), 3);
            assert!(choices.iter().all(|(p, params)| p == &[1, 2]
                && params.stop == ["a", "b"]
                && params.max_tokens == 126));
        }
        other => panic!("{other:?}"),
    }
}
