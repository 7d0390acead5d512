//! Structured output end to end, generic over the backend: JSON schemas, any JSON object, a
//! regex, a Lark and a GBNF grammar, each alone and in a batch with unconstrained requests.
//! Every output that finishes with `stop` is checked by oracles tandem did not write
//! (tests/oracle/structured.py: Python's jsonschema, `re`, the lark package); a constrained
//! request's tokens equal its solo run, and an unconstrained one's equal its run without the
//! constrained ones beside it.

use std::path::Path;

use serde_json::{json, Value};
use tandem_core::constraint::Grammar;
use tandem_core::generate::{FinishReason, GenerateParams};
use tandem_core::loader;
use tandem_core::model::{Model, ModelOptions};
use tandem_core::sampling::SamplingParams;
use tandem_core::scheduler::{Scheduler, SchedulerConfig};
use tandem_core::tokenizer::{ChatMessage, Tokenizer};
use tandem_core::tools::{self, Tool, ToolSyntax};
use tandem_core::Backend;

use crate::batch::{run_all, solo, Done, Req};
use crate::e2e::{self, Skip};

/// One constrained case: what the engine gets, and what the oracle checks it with.
pub struct Case {
    pub name: &'static str,
    pub prompt: &'static str,
    pub grammar: Grammar,
    /// (oracle kind, spec) for tests/oracle/structured.py.
    pub oracle: (&'static str, Value),
}

fn schema_case(name: &'static str, prompt: &'static str, schema: Value) -> Case {
    Case {
        name,
        prompt,
        grammar: Grammar::JsonSchema(schema.clone()),
        oracle: ("json_schema", schema),
    }
}

/// The cases: schemas with nested objects, bounded arrays, enum, const, pattern, anyOf,
/// $ref/$defs, bounded numbers, required and optional properties, no additional properties;
/// any JSON object; a regex; a Lark and a GBNF grammar.
pub fn cases() -> Vec<Case> {
    let person = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"},
            "address": {"type": "object",
                "properties": {"city": {"type": "string", "maxLength": 10},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": false}
        },
        "required": ["name", "age", "address"],
        "additionalProperties": false
    });
    let order = json!({
        "$defs": {"item": {"type": "object",
            "properties": {"sku": {"enum": ["A1", "B2", "C3"]}, "qty": {"type": "integer",
                "minimum": 1, "maximum": 9}},
            "required": ["sku", "qty"], "additionalProperties": false}},
        "type": "object",
        "properties": {
            "kind": {"const": "order"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1,
                "maxItems": 3},
            "total": {"type": "number", "minimum": 0, "maximum": 1000},
            "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 16}]}
        },
        "required": ["kind", "items", "total"],
        "additionalProperties": false
    });
    let flags =
        json!({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 4});
    let lark = "start: \"(\" word (\",\" word)* \")\"\nword: /[a-z]{1,6}/\n";
    let gbnf = "root ::= \"[\" num (\";\" num){0,3} \"]\"\nnum ::= [1-9] [0-9]?\n";
    let gbnf_as_lark = "start: \"[\" NUM (\";\" NUM)~0..3 \"]\"\nNUM: /[1-9][0-9]?/\n";
    vec![
        schema_case("person", "Describe a person as JSON.", person),
        schema_case("order", "Write an order as JSON.", order),
        schema_case("flags", "Give some true/false flags as a JSON list.", flags),
        Case {
            name: "json_object",
            prompt: "Answer with a JSON object about the moon.",
            grammar: Grammar::JsonObject,
            oracle: ("json_object", Value::Null),
        },
        Case {
            name: "regex",
            prompt: "What is the date today?",
            grammar: Grammar::Regex("(19|20)[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]".into()),
            oracle: ("regex", json!("(19|20)[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]")),
        },
        Case {
            name: "lark",
            prompt: "List a few words in parentheses.",
            grammar: Grammar::Lark(lark.into()),
            oracle: ("lark", json!(lark)),
        },
        Case {
            name: "gbnf",
            prompt: "List a few numbers in brackets.",
            grammar: Grammar::Gbnf(gbnf.into()),
            oracle: ("lark", json!(gbnf_as_lark)),
        },
    ]
}

/// Runs the cases' outputs through tests/oracle/structured.py: `Err(Skip)` when python3 or an
/// oracle package is missing (a failure under `TANDEM_REQUIRE_MODELS=1`, as CI installs them).
pub fn oracle(checks: &[(&str, &Value, &str)]) -> Result<Vec<Option<String>>, Skip> {
    let items: Vec<Value> = checks
        .iter()
        .map(|(kind, spec, text)| json!({"kind": kind, "spec": spec, "text": text}))
        .collect();
    let path = std::env::temp_dir().join(format!("tandem-structured-{}.json", std::process::id()));
    std::fs::write(&path, Value::Array(items).to_string()).expect("write the oracle's input");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("oracle/structured.py");
    let out = std::process::Command::new("python3").arg(&script).arg(&path).output();
    std::fs::remove_file(&path).ok();
    let missing = |why: String| Skip(tandem_testkit::model_missing(why));
    let out = out.map_err(|e| missing(format!("python3: {e}")))?;
    if out.status.code() == Some(3) {
        return Err(missing(format!(
            "the structured-output oracles (pip install jsonschema lark): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    assert!(out.status.success(), "the oracle failed: {}", String::from_utf8_lossy(&out.stderr));
    let verdicts: Vec<Option<String>> =
        serde_json::from_slice(&out.stdout).expect("the oracle's verdicts");
    Ok(verdicts)
}

/// A chat prompt for `text` (with BOS where the model wants one and there is no template).
fn chat_prompt(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let rendered = tok.apply_chat_template(&[ChatMessage::new("user", text)], true);
    match rendered {
        Ok(t) => tok.encode(&t).expect("encode"),
        Err(_) => {
            let mut ids: Vec<u32> = tok.bos_id().into_iter().collect();
            ids.extend(tok.encode(text).expect("encode"));
            ids
        }
    }
}

/// The battery on the model in `path` (SmolLM2's GGUF, or stories260K's folder): each case
/// greedy and sampled, alone; then all of them together with as many unconstrained requests,
/// whose tokens must not change; every `stop` output validated by the oracles, and at least
/// half of the constrained ones must finish so.
pub fn battery<B: Backend>(backend: B, path: &Path, max_tokens: usize) -> Result<(), Skip> {
    let source = loader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let opts = ModelOptions { context: 1024, ..ModelOptions::default() };
    let mut model: Model<B> = e2e::load(backend, &source, &opts);
    let name = model.backend.name();
    let constrainer = tok.constrainer(model.config.vocab_size).expect("constrainer");
    let cases = cases();
    let mut constrained = vec![];
    for (i, c) in cases.iter().enumerate() {
        for sampled in [false, true] {
            let sampling = if sampled {
                SamplingParams {
                    temperature: 0.8,
                    top_p: 0.95,
                    seed: 7 + i as u64,
                    ..Default::default()
                }
            } else {
                SamplingParams::default()
            };
            let constraint = constrainer
                .compile(&c.grammar)
                .unwrap_or_else(|e| panic!("{}: compiling: {e}", c.name));
            let params = GenerateParams {
                max_tokens,
                sampling,
                constraint: Some(constraint),
                ..Default::default()
            };
            constrained.push((i, Req { prompt: chat_prompt(&tok, c.prompt), params }));
        }
    }
    let free: Vec<Req> = constrained
        .iter()
        .map(|(_, r)| Req {
            prompt: r.prompt.clone(),
            params: GenerateParams { constraint: None, ..r.params.clone() },
        })
        .collect();
    let reqs: Vec<Req> = constrained.iter().map(|(_, r)| r.clone()).collect();
    let alone = solo(&mut model, &tok, &reqs);
    let free_alone = {
        model.kv_blocks_mut().expect("blocks").evict_idle();
        let mut s = Scheduler::new(&mut model, &tok, SchedulerConfig::default()).expect("sched");
        run_all(&mut s, &free, &[])
    };
    // Everything at once: constrained and free requests interleaved in every step.
    let mixed: Vec<Req> =
        reqs.iter().zip(&free).flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
    let together = {
        model.kv_blocks_mut().expect("blocks").evict_idle();
        let config = SchedulerConfig { max_seqs: 64, max_batched_tokens: 256 };
        let mut s = Scheduler::new(&mut model, &tok, config).expect("sched");
        run_all(&mut s, &mixed, &[])
    };
    // With n-gram speculation: drafts are cut where the grammar rejects them, and verified
    // rows are masked along the draft, so the tokens are those of plain decoding.
    let speculated = {
        model.kv_blocks_mut().expect("blocks").evict_idle();
        let mut s = Scheduler::new(&mut model, &tok, SchedulerConfig::default()).expect("sched");
        s.set_speculation(Some(tandem_core::scheduler::Speculation::ngram(4))).expect("spec");
        run_all(&mut s, &reqs, &[])
    };
    for (k, (i, _)) in constrained.iter().enumerate() {
        let c = &cases[*i];
        if reqs[k].params.sampling.temperature == 0.0 {
            assert_eq!(speculated[k].tokens, alone[k].tokens, "{name}: {} #{k} speculated", c.name);
        }
        assert_eq!(
            together[2 * k].tokens,
            alone[k].tokens,
            "{name}: {} #{k} batched vs alone",
            c.name
        );
        assert_eq!(
            together[2 * k + 1].tokens,
            free_alone[k].tokens,
            "{name}: an unconstrained request beside {} changed",
            c.name
        );
    }
    let stopped: Vec<(&Done, &Case)> = alone
        .iter()
        .zip(&constrained)
        .filter(|(d, _)| d.reason == FinishReason::Stop)
        .map(|(d, (i, _))| (d, &cases[*i]))
        .collect();
    let checks: Vec<(&str, &Value, &str)> =
        stopped.iter().map(|(d, c)| (c.oracle.0, &c.oracle.1, d.text.as_str())).collect();
    let verdicts = oracle(&checks)?;
    for ((d, c), v) in stopped.iter().zip(&verdicts) {
        assert!(
            v.is_none(),
            "{name}: {} gave {:?}: {}",
            c.name,
            d.text,
            v.as_deref().unwrap_or("")
        );
    }
    let finished = stopped.len();
    for (d, (i, _)) in alone.iter().zip(&constrained) {
        eprintln!("{name}: {} {:?} {:?}", cases[*i].name, d.reason, d.text);
    }
    assert!(
        2 * finished >= constrained.len(),
        "{name}: only {finished} of {} constrained outputs completed within {max_tokens} tokens",
        constrained.len()
    );
    Ok(())
}

/// [`battery`] on SmolLM2-135M-Instruct (the default model).
pub fn smollm<B: Backend>(backend: B) -> Result<(), Skip> {
    battery(backend, &e2e::smollm_gguf()?, 96)
}

/// [`battery`] on stories260K (a 512-token vocabulary: quick on slow backends).
pub fn stories<B: Backend>(backend: B) -> Result<(), Skip> {
    battery(backend, &e2e::stories_dir()?, 128)
}

/// A dormant constraint ([`tandem_core::constraint::Constraint::after`]) leaves the output free
/// until its trigger's text, then holds the rest: on stories260K the trigger is the text that
/// spans the end of the second token the model picks greedily and the start of the third, and
/// the rest must be what remains of that third token and then three digits. With n-gram
/// speculation the tokens are the same (drafts stop before the trigger).
pub fn lazy_wakes_at_its_trigger<B: Backend>(backend: B) -> Result<(), Skip> {
    let dir = e2e::stories_dir()?;
    let source = loader::open(&dir).expect("stories260K");
    let tok = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let mut model: Model<B> = e2e::load(backend, &source, &ModelOptions::default());
    let prompt = chat_prompt(&tok, "Once upon a time");
    let free = e2e::greedy(&mut model, &tok, &prompt, 5);
    let text = |n: usize| tok.decode(&free[..n], false).expect("decode");
    let (two, three) = (text(2), text(3));
    assert!(three.starts_with(&two) && two.len() > text(1).len(), "{two:?} / {three:?}");
    // Up to two bytes of the second token's text, and all but the last byte of the third's.
    let second = two.len() - text(1).len();
    let from = two.len() - second.min(2);
    let to = three.len() - usize::from(three.len() - two.len() > 1);
    let (trigger, leftover) = (&three[from..to], &three[to..]);
    assert!(!two.contains(trigger), "the trigger {trigger:?} is in {two:?}");
    let lit = serde_json::to_string(leftover).expect("a string");
    let rest = Grammar::Lark(format!("start: {lit} /[0-9]{{3}}/\n"));
    let c = tok.constrainer(model.config.vocab_size).expect("constrainer");
    let lazy = c.compile(&rest).expect("compile").after(trigger);
    let params = GenerateParams { max_tokens: 40, constraint: Some(lazy), ..Default::default() };
    let req = Req { prompt: prompt.clone(), params };
    let mut outs = vec![];
    for speculate in [false, true] {
        model.kv_blocks_mut().expect("blocks").evict_idle();
        let mut s = Scheduler::new(&mut model, &tok, SchedulerConfig::default()).expect("sched");
        if speculate {
            s.set_speculation(Some(tandem_core::scheduler::Speculation::ngram(4))).expect("spec");
        }
        outs.push(run_all(&mut s, std::slice::from_ref(&req), &[]).remove(0));
    }
    let d = &outs[0];
    assert_eq!(d.tokens[..3], free[..3], "free until the trigger");
    let held = tok.decode(&d.tokens[3..], true).expect("decode");
    assert!(held.len() == 3 && held.bytes().all(|b| b.is_ascii_digit()), "{held:?}");
    assert_eq!(d.reason, FinishReason::Stop);
    assert_eq!(outs[1].tokens, d.tokens, "speculation changed the output");
    Ok(())
}

/// `auto` tool calls in Hermes syntax on a tokenizer that spells `<tool_call>` in several
/// tokens (SmolLM2's): the hold wakes on the opening's text however the output splits it, the
/// newline that shares a token with its `>` included, and from there only a valid call of the
/// offered tool follows; text that merely looks like the start of the opening stays free.
pub fn lazy_call_wakes_on_a_split_opening() -> Result<(), Skip> {
    let source = loader::open(&e2e::smollm_gguf()?).expect("SmolLM2");
    let tok = Tokenizer::load(&source.tokenizer).expect("tokenizer");
    let weather = Tool {
        name: "get_weather".into(),
        description: None,
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}),
    };
    let (trigger, rest) =
        tools::lazy_call_grammar(ToolSyntax::Hermes, &[weather], false).expect("Hermes holds");
    assert_eq!(trigger, "<tool_call>");
    assert!(tok.encode(trigger).expect("encode").len() > 1, "one token: nothing to show");
    let constrainer = tok.constrainer(source.config.vocab_size).expect("constrainer");
    let enc = |parts: &[&str]| -> Vec<u32> {
        parts.iter().flat_map(|p| tok.encode(p).expect("encode")).collect()
    };
    let call = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let splits = [
        enc(&["Let me check. <tool_call>\n"]),
        enc(&["Let me check. <", "tool", "_call", ">", "\n"]),
        enc(&["Let me check. <tool_", "call>\n"]),
    ];
    for opening in &splits {
        let mut c = constrainer.compile(&rest).expect("compile").after(trigger);
        let (&last, before) = opening.split_last().expect("tokens");
        for &t in before {
            c.commit(t).expect("free text");
        }
        assert!(c.is_dormant() || tok.decode(&[last], false).unwrap() == "\n", "{opening:?}");
        c.commit(last).expect("the opening's end");
        assert!(!c.is_dormant(), "{opening:?}: the opening did not wake the hold");
        let mask = c.mask().expect("mask");
        let allowed = |t: u32| mask[t as usize / 32] >> (t % 32) & 1 == 1;
        let call = tok.encode(call).expect("encode");
        let word = tok.encode("Sure").expect("encode")[0];
        assert!(allowed(call[0]) && !allowed(word), "{opening:?}: the call is not held");
        for &t in &call {
            c.commit(t).expect("a valid call");
        }
        assert!(c.is_finished(), "{opening:?}: one call ends the output");
    }
    // "<tool" and a different word: free throughout, whatever follows.
    let mut c = constrainer.compile(&rest).expect("compile").after(trigger);
    for t in enc(&["Use <tool", "box> and <tool_calls later."]) {
        c.commit(t).expect("free text");
    }
    assert!(c.is_dormant());
    Ok(())
}
