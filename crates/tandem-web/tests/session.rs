//! The browser engine's logic, natively: stories260K handed over as named files pushed in
//! chunks (as the page's worker does through `Loader`), then requests through `Session` (the
//! engine's one scheduler) on the CPU reference backend, driven as the worker's loop drives it:
//! greedy from BOS gives the 200 reference tokens; concurrent chat requests (greedy and
//! seeded) each equal their solo run, and aborting one leaves the others unchanged; aborts,
//! stop strings, limits and bad requests give the right finish reasons and clear errors; a
//! wrong file set is a clear error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tandem_core::model::{ModelOptions, ModelStream};
use tandem_cpu::CpuBackend;
use tandem_web::{Added, Output, Request, Session, Usage, WebBackend};

fn stories_dir() -> Option<PathBuf> {
    tandem_testkit::shared_model("stories260K", &["model.safetensors"])
}

/// stories260K has no chat template; this one (the BOS token, then the messages' text) lets
/// chat requests run on it, as the browser tests do.
const CHAT_CONFIG: &str = r#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true,
  "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"}"#;

/// Streams `files` (as the worker names them; `(name, Some(bytes))` replaces a file's bytes)
/// in 64 KiB chunks into a CPU session serving `max_seqs` requests per step.
fn stream_with(
    dir: &Path,
    files: &[(&str, Option<&[u8]>)],
    opts: &ModelOptions,
    max_seqs: usize,
) -> tandem_core::Result<Session> {
    let mut s = ModelStream::new(WebBackend::Cpu(CpuBackend::reference()), opts);
    for (name, bytes) in files {
        let bytes = bytes.map_or_else(
            || std::fs::read(dir.join(name)).expect("read model file"),
            <[u8]>::to_vec,
        );
        s.begin_file(&format!("some/dir/{name}"), Some(bytes.len() as u64))?;
        bytes.chunks(64 << 10).try_for_each(|c| s.push(c))?;
        s.end_file()?;
    }
    Session::new(s.finish()?, max_seqs, None)
}

fn stream(dir: &Path, files: &[&str]) -> tandem_core::Result<Session> {
    let files: Vec<_> = files.iter().map(|&f| (f, None)).collect();
    stream_with(dir, &files, &ModelOptions::default(), 4)
}

fn session(dir: &Path) -> Session {
    stream(dir, &["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
        .expect("load")
}

/// With the chat template above, `max_seqs` per step and a KV pool of `kv_blocks` blocks.
fn chat_session(dir: &Path, max_seqs: usize, kv_blocks: Option<usize>) -> Session {
    let files = [
        ("config.json", None),
        ("tokenizer.json", None),
        ("tokenizer_config.json", Some(CHAT_CONFIG.as_bytes())),
        ("model.safetensors", None),
    ];
    stream_with(dir, &files, &ModelOptions { kv_blocks, ..ModelOptions::default() }, max_seqs)
        .expect("load")
}

#[test]
fn wrong_file_sets_are_clear_errors() {
    let Some(dir) = stories_dir() else { return };
    let err = |files: &[&str]| stream(&dir, files).err().expect("an error").to_string();
    let e = err(&["tokenizer.json", "model.safetensors"]);
    assert!(e.contains("config.json must come before"), "{e}");
    let e = err(&["config.json", "model.safetensors"]);
    assert!(
        e.contains("tokenizer.json is missing") && e.contains("config.json, model.safetensors"),
        "{e}"
    );
    let e = err(&["config.json", "tokenizer.json"]);
    assert!(e.contains(".safetensors file is missing"), "{e}");
    assert!(err(&[]).contains("no files"));
}

fn request(json: &str) -> Request {
    serde_json::from_str(json).expect("request JSON")
}

/// A request's streamed text and its usage, or its error.
type Outcome = Result<(String, Usage), String>;

/// Adds `reqs` (a request at index i joins once request i - 1 has produced `join_after`
/// text pieces, so later ones join running batches) and drives `s` until all are done,
/// aborting request a after its k-th text piece for each (a, k) in `aborts`. Returns each
/// request's outcome by index.
fn run(
    s: &mut Session,
    reqs: &[Request],
    join_after: usize,
    aborts: &[(usize, usize)],
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = reqs.iter().map(|_| None).collect();
    let mut texts = vec![(String::new(), 0usize); reqs.len()];
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut added = 0;
    loop {
        while added < reqs.len()
            && (added == 0 || texts[added - 1].1 >= join_after || outcomes[added - 1].is_some())
        {
            match s.add(&reqs[added]) {
                Ok(Added::Queued(id)) => {
                    index.insert(id, added);
                }
                Ok(Added::Done(usage)) => outcomes[added] = Some(Ok((String::new(), usage))),
                Err(e) => outcomes[added] = Some(Err(e.to_string())),
            }
            added += 1;
        }
        if !s.has_work() {
            assert_eq!(added, reqs.len(), "requests left to add, but nothing runs");
            break;
        }
        for (id, out) in pollster::block_on(s.step()) {
            let i = index[&id];
            match out {
                Output::Text(t) => {
                    texts[i].0.push_str(&t);
                    texts[i].1 += 1;
                    if aborts.contains(&(i, texts[i].1)) {
                        assert!(s.abort(id), "request {i} is running");
                    }
                }
                Output::Done(usage) => {
                    outcomes[i] = Some(Ok((std::mem::take(&mut texts[i].0), usage)))
                }
                Output::Failed(e) => outcomes[i] = Some(Err(e.to_string())),
            }
        }
    }
    outcomes.into_iter().map(|o| o.expect("every request ended")).collect()
}

fn run_one(s: &mut Session, json: &str) -> Outcome {
    run(s, &[request(json)], 0, &[]).pop().unwrap()
}

#[test]
fn stories260k_greedy_from_bos_matches_the_reference() {
    let Some(dir) = stories_dir() else { return };
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_greedy.json")).unwrap())
            .unwrap();
    let want: Vec<u32> = reference["greedy_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let mut s = session(&dir);
    // ModelOptions' default pool: one sequence at the (capped) context.
    assert_eq!((s.info.max_seqs, s.info.context, s.info.kv_tokens), (4, 512, 512));
    // Unknown (OpenAI) fields are ignored.
    let (text, usage) = run_one(&mut s, r#"{"prompt": "", "max_tokens": 200, "temperature": 0, "ignore_eos": true, "model": "x", "stream": true}"#).expect("generate");
    assert_eq!(usage.token_ids, want);
    assert_eq!(usage.prompt_tokens, 1);
    assert_eq!((usage.finish_reason, usage.finish_detail), ("length", "max_tokens"));
    assert_eq!(text, reference["text"].as_str().unwrap());

    // Token ids are fed as given: BOS's id alone is the empty text prompt.
    let (ids_text, ids_usage) = run_one(
        &mut s,
        r#"{"prompt": [1], "max_tokens": 200, "temperature": 0, "ignore_eos": true}"#,
    )
    .expect("generate from ids");
    assert_eq!((ids_usage.token_ids, ids_usage.prompt_tokens), (want, 1));
    assert_eq!(ids_text, text);
}

/// Chat requests of different lengths, greedy and seeded in turn.
fn chats(n: usize) -> Vec<Request> {
    let starts = [
        "Once upon a time",
        "Lily and Tom went to the park",
        "The little dog",
        "One day, a big bird",
        "Mom said",
        "The sun was",
    ];
    (0..n)
        .map(|i| {
            let sampling = if i % 2 == 0 { r#""temperature": 0"#.to_string() } else { format!(r#""temperature": 0.9, "top_p": 0.95, "seed": {}"#, 100 + i) };
            let content = starts[i % starts.len()];
            request(&format!(r#"{{"messages": [{{"role": "user", "content": "{content}"}}], "max_tokens": {}, "ignore_eos": true, {sampling}}}"#, 20 + 9 * i))
        })
        .collect()
}

fn solo(s: &mut Session, reqs: &[Request]) -> Vec<Outcome> {
    reqs.iter().map(|r| run(s, std::slice::from_ref(r), 0, &[]).pop().unwrap()).collect()
}

fn tokens_and_text(o: &Outcome) -> (Vec<u32>, String, &'static str) {
    let (text, usage) = o.as_ref().expect("request succeeded");
    (usage.token_ids.clone(), text.clone(), usage.finish_reason)
}

#[test]
fn concurrent_chats_equal_their_solo_runs() {
    let Some(dir) = stories_dir() else { return };
    let reqs = chats(6);
    let want: Vec<_> =
        solo(&mut chat_session(&dir, 1, None), &reqs).iter().map(tokens_and_text).collect();
    assert_eq!(want[1].0.len(), 29, "max_tokens");
    // All at once (4 per step, the rest queued), and joining running batches one by one.
    let mut s = chat_session(&dir, 4, None);
    for join_after in [0, 3] {
        let got = run(&mut s, &reqs, join_after, &[]);
        for (i, (o, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(&tokens_and_text(o), w, "request {i}, joining after {join_after} pieces");
        }
    }
    // A pool of 6 blocks of 16 (96 tokens) for requests of up to 80: they preempt each other,
    // and are recomputed to the same tokens.
    let got = run(&mut chat_session(&dir, 4, Some(6)), &reqs, 0, &[]);
    for (i, (o, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(&tokens_and_text(o), w, "request {i} with a small pool");
    }
    assert!(got.iter().any(|o| o.as_ref().unwrap().1.preemptions > 0), "the small pool preempted");
}

#[test]
fn aborting_one_request_leaves_the_others_unchanged() {
    let Some(dir) = stories_dir() else { return };
    let reqs = chats(4);
    let mut s = chat_session(&dir, 4, None);
    let want: Vec<_> = solo(&mut s, &reqs).iter().map(tokens_and_text).collect();
    let got = run(&mut s, &reqs, 0, &[(2, 5)]);
    for (i, (o, w)) in got.iter().zip(&want).enumerate() {
        let (tokens, text, reason) = tokens_and_text(o);
        if i == 2 {
            assert_eq!(reason, "interrupted");
            assert!(
                tokens.len() >= 5 && tokens.len() < w.0.len() && w.0.starts_with(&tokens),
                "{tokens:?}"
            );
            assert!(w.1.starts_with(&text));
        } else {
            assert_eq!((tokens, text, reason), w.clone(), "request {i}");
        }
    }
    // The aborted request's blocks went back: the engine still runs everything.
    let again = run(&mut s, &reqs, 0, &[]);
    assert_eq!(again.iter().map(tokens_and_text).collect::<Vec<_>>(), want);
}

#[test]
fn aborts_stop_strings_limits_and_bad_requests() {
    let Some(dir) = stories_dir() else { return };
    let mut s = session(&dir);
    let got = run(
        &mut s,
        &[request(r#"{"prompt": "", "max_tokens": 100, "temperature": 0.8, "seed": 7}"#)],
        0,
        &[(0, 3)],
    );
    let (text, usage) = got[0].as_ref().expect("generate");
    assert_eq!((usage.finish_reason, usage.completion_tokens), ("interrupted", 3));
    assert!(!text.is_empty());

    let (text, usage) =
        run_one(&mut s, r#"{"prompt": "", "max_tokens": 200, "temperature": 0, "stop": "Lily"}"#)
            .expect("generate");
    assert_eq!(usage.finish_detail, "stop_string");
    assert_eq!(text, "Once upon a time, there was a little girl named ");

    let (text, usage) =
        run_one(&mut s, r#"{"prompt": "Once", "max_tokens": 0}"#).expect("max_tokens 0");
    assert_eq!(
        (text.as_str(), usage.completion_tokens, usage.finish_detail, usage.prompt_tokens),
        ("", 0, "max_tokens", 2)
    );

    // More than the context (512) holds: it runs until the context is full.
    let (_, usage) = run_one(
        &mut s,
        r#"{"prompt": "", "max_tokens": 600, "temperature": 0, "ignore_eos": true}"#,
    )
    .expect("generate");
    assert_eq!(
        (usage.completion_tokens, usage.finish_reason, usage.finish_detail),
        (511, "length", "context")
    );

    for (json, why) in [
        (r#"{"max_tokens": 3}"#, "neither prompt nor messages"),
        (r#"{"prompt": "a", "messages": []}"#, "not both"),
        (r#"{"messages": [{"role": "user", "content": "hi"}]}"#, "chat template"),
        (r#"{"prompt": "a", "top_p": 0}"#, "top_p"),
        (r#"{"prompt": "a", "max_tokens": 0, "temperature": -1}"#, "temperature"),
        (r#"{"prompt": "a", "stop": ["", "x"]}"#, "stop string is empty"),
        (r#"{"prompt": []}"#, "token ids are empty"),
        (r#"{"prompt": [5, 512]}"#, "outside the vocabulary (size 512)"),
    ] {
        let e = run_one(&mut s, json).expect_err(json);
        assert!(e.contains(why), "{json}: {e}");
    }

    // A KV cache of 4 blocks (64 tokens), smaller than the context: a request may fill it
    // alone; a prompt that leaves no room can never run.
    let mut s = chat_session(&dir, 4, Some(4));
    let (_, usage) = run_one(
        &mut s,
        r#"{"prompt": "", "max_tokens": 100, "temperature": 0, "ignore_eos": true}"#,
    )
    .expect("generate");
    assert_eq!((usage.completion_tokens, usage.finish_detail), (63, "context"));
    let long = "Once upon a time ".repeat(20);
    let e = run_one(&mut s, &format!(r#"{{"prompt": "{long}", "max_tokens": 5}}"#))
        .expect_err("too long");
    assert!(e.contains("the KV cache holds 64"), "{e}");
}

#[test]
fn speculation_keeps_the_models_own_output() {
    // Greedy from BOS: the 200 reference tokens with n-gram drafting and with a draft model
    // (a second session's stories260K: the same weights, so every draft is accepted), and
    // the usage counts drafted and accepted tokens.
    let Some(dir) = stories_dir() else { return };
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_greedy.json")).unwrap())
            .unwrap();
    let want: Vec<u32> = reference["greedy_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let greedy = r#"{"prompt": "", "max_tokens": 200, "temperature": 0, "ignore_eos": true}"#;
    let mut ngram = session(&dir);
    ngram.speculate(None, 4).expect("n-gram speculation");
    let (_, usage) = run_one(&mut ngram, greedy).expect("generate");
    assert_eq!(usage.token_ids, want, "n-gram speculation");
    assert!(usage.draft_tokens >= usage.accepted_tokens);
    let mut drafted = session(&dir);
    drafted.speculate(Some(session(&dir)), 4).expect("draft model");
    let (text, usage) = run_one(&mut drafted, greedy).expect("generate");
    assert_eq!(usage.token_ids, want, "draft model");
    assert_eq!(text, reference["text"].as_str().unwrap());
    assert!(usage.draft_tokens > 100 && usage.accepted_tokens == usage.draft_tokens, "{usage:?}");
    // With the model as its own draft, a seeded sampled request gives the tokens it gives
    // without speculation.
    let sampled =
        r#"{"prompt": "", "max_tokens": 60, "temperature": 0.8, "seed": 7, "ignore_eos": true}"#;
    let plain = run_one(&mut session(&dir), sampled).expect("plain").1.token_ids;
    assert_eq!(run_one(&mut drafted, sampled).expect("drafted").1.token_ids, plain);
    // Bad settings are clear errors: no draft tokens, a draft whose tokenizer ends sequences
    // elsewhere.
    assert!(session(&dir).speculate(None, 0).unwrap_err().to_string().contains("at least 1"));
    let other_eos = r#"{"bos_token": "<s>", "eos_token": "<s>", "add_bos_token": true}"#;
    let files = [
        ("config.json", None),
        ("tokenizer.json", None),
        ("tokenizer_config.json", Some(other_eos.as_bytes())),
        ("model.safetensors", None),
    ];
    let foreign = stream_with(&dir, &files, &ModelOptions::default(), 4).expect("load");
    let e = session(&dir).speculate(Some(foreign), 4).unwrap_err().to_string();
    assert!(e.contains("tokenizer differs"), "{e}");
}

#[test]
fn structured_output_and_tool_calls_in_the_browser_engine() {
    let Some(dir) = stories_dir() else { return };
    let mut s = chat_session(&dir, 4, None);
    let schema = r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8}}, "required": ["name", "legs"],
        "additionalProperties": false}"#;
    let json = format!(
        r#"{{"messages": [{{"role": "user", "content": "A dog."}}], "max_tokens": 120,
        "temperature": 0, "response_format": {{"type": "json_schema",
        "json_schema": {{"name": "dog", "schema": {schema}}}}}}}"#
    );
    let (text, usage) = run_one(&mut s, &json).expect("runs");
    assert_eq!(usage.finish_reason, "stop", "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(v["name"].as_str().unwrap().chars().count() <= 6, "{v}");
    assert!((0..=8).contains(&v["legs"].as_i64().unwrap()), "{v}");

    // A prompt (no chat) under a regex.
    let (text, _) = run_one(
        &mut s,
        r#"{"prompt": "Once", "max_tokens": 30, "temperature": 0, "regex": "[0-9]{3}"}"#,
    )
    .expect("runs");
    assert!(text.len() == 3 && text.bytes().all(|b| b.is_ascii_digit()), "{text}");

    // A forced call: no call text in the content, the call in usage.tool_calls.
    let tools = r#"[{"type": "function", "function": {"name": "get_time", "parameters":
        {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": false}}}]"#;
    let json = format!(
        r#"{{"messages": [{{"role": "user", "content": "Time?"}}], "temperature": 0,
        "max_tokens": 60, "tools": {tools}, "tool_choice": "required", "parallel_tool_calls": false}}"#
    );
    let (text, usage) = run_one(&mut s, &json).expect("runs");
    assert_eq!(usage.finish_reason, "tool_calls", "{text} {:?}", usage.tool_calls);
    assert_eq!(text, "", "the call's text is not content");
    let call = &usage.tool_calls[0];
    assert_eq!(call["function"]["name"], "get_time");
    let args: serde_json::Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(["UTC", "CET"].contains(&args["zone"].as_str().unwrap()), "{args}");

    // Bad constraints are errors before anything runs.
    for (json, needle) in [
        (r#"{"prompt": "a", "regex": "(x"}"#, "regex"),
        (r#"{"prompt": "a", "tools": [], "tool_choice": "required"}"#, "chat API"),
        (
            r#"{"messages": [{"role": "user", "content": "a"}], "tool_choice": "required"}"#,
            "no tools",
        ),
    ] {
        let e = run_one(&mut s, json).expect_err("refused");
        assert!(e.contains(needle), "{json}: {e}");
    }
}
