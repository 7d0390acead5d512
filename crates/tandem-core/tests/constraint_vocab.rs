//! Structured output over real vocabularies: the first mask of a JSON schema allows exactly the
//! tokens whose text starts the object, for a SentencePiece tokenizer with a dummy-prefix space
//! (stories260K: `{` is only a byte token there) as for a byte-level one; and bad grammars are
//! refused with the problem named.

use tandem_core::constraint::Grammar;
use tandem_core::tokenizer::Tokenizer;

fn stories() -> Option<Tokenizer> {
    let dir = match tandem_testkit::find_shared_model("stories260K", &["tokenizer.json"]) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return None;
        }
    };
    Some(
        Tokenizer::from_files(
            &dir.join("tokenizer.json"),
            Some(&dir.join("tokenizer_config.json")),
        )
        .unwrap(),
    )
}

fn allowed(mask: &[u32], vocab: usize) -> Vec<u32> {
    (0..vocab as u32).filter(|&i| mask[i as usize / 32] >> (i % 32) & 1 == 1).collect()
}

#[test]
fn a_schema_starts_with_the_tokens_that_open_an_object() {
    let Some(tok) = stories() else { return };
    let c = tok.constrainer(512).unwrap();
    let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let mut k = c.compile(&Grammar::JsonSchema(schema)).unwrap();
    let first = allowed(&k.mask().unwrap(), 512);
    let texts: Vec<String> = first.iter().map(|&t| tok.decode(&[t], false).unwrap()).collect();
    assert!(!first.is_empty());
    // The byte token <0x7B> is `{`; the dummy-prefix `▁` must not be offered.
    assert!(texts.iter().all(|t| t.starts_with('{')), "{texts:?}");
    k.commit(first[0]).unwrap();
    assert!(!k.is_finished());
}

#[test]
fn bad_grammars_are_refused_with_the_problem_named() {
    let Some(tok) = stories() else { return };
    let c = tok.constrainer(512).unwrap();
    let cases = [
        (Grammar::Regex("(unclosed".into()), "regex"),
        (Grammar::Lark("start: foo\n".into()), "lark"),
        (Grammar::Gbnf("root ::= \"a\" missing\n".into()), "missing"),
        (
            Grammar::JsonSchema(serde_json::json!({"type": "array", "uniqueItems": true})),
            "uniqueItems",
        ),
        (Grammar::JsonSchema(serde_json::json!(3)), "json_schema"),
    ];
    for (g, needle) in cases {
        let e = c.compile(&g).err().unwrap_or_else(|| panic!("{g:?} compiled")).to_string();
        assert!(e.contains(needle), "{g:?}: {e}");
    }
    let mut deep = serde_json::json!({"type": "object"});
    for _ in 0..40 {
        deep = serde_json::json!({"type": "object", "properties": {"x": deep}});
    }
    let e = c.compile(&Grammar::JsonSchema(deep)).expect_err("too deep").to_string();
    assert!(e.contains("nests deeper"), "{e}");
}
