//! Hostile schemas, regexes and grammars through structured output's compiler (tandem's checks,
//! GBNF's translation, llguidance's budgets) and then through decoding: a grammar is refused with
//! a message, or every mask it gives allows a token, committing an allowed token never fails,
//! and nothing panics, hangs or runs away with memory.
//!
//! Input: [kind (schema, regex, Lark, GBNF), tokenizer, then one byte per step choosing among
//! the allowed tokens] then the text (the choices end at the first 0xff).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tandem_core::constraint::{Constrainer, Grammar};
use tandem_fuzz::tokenizers;

/// The byte-level and the SentencePiece fuzz tokenizers' grammar compilers.
fn constrainers() -> &'static [Constrainer; 2] {
    static C: OnceLock<[Constrainer; 2]> = OnceLock::new();
    C.get_or_init(|| {
        let [a, b] = tokenizers();
        [a, b].map(|t| t.constrainer(t.vocab_size()).expect("the fuzz tokenizers constrain"))
    })
}

fuzz_target!(|data: &[u8]| {
    let [kind, tok, rest @ ..] = data else { return };
    let split = rest.iter().position(|&b| b == 0xff).unwrap_or(rest.len().min(1));
    let (choices, text) = rest.split_at(split);
    let Ok(text) = std::str::from_utf8(text.get(1..).unwrap_or_default()) else { return };
    let grammar = match kind % 4 {
        0 => match serde_json::from_str(text) {
            Ok(v) => Grammar::JsonSchema(v),
            Err(_) => return,
        },
        1 => Grammar::Regex(text.into()),
        2 => Grammar::Lark(text.into()),
        _ => Grammar::Gbnf(text.into()),
    };
    let c = &constrainers()[*tok as usize % 2];
    let mut k = match c.compile(&grammar) {
        Ok(k) => k,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    for &choice in choices.iter().take(32) {
        if k.is_finished() {
            break;
        }
        let Ok(mask) = k.mask() else { break };
        assert_eq!(mask.len(), k.words());
        let allowed: Vec<u32> =
            (0..c.vocab() as u32).filter(|&t| mask[t as usize / 32] >> (t % 32) & 1 == 1).collect();
        assert!(!allowed.is_empty(), "a mask must allow a token");
        let t = allowed[choice as usize % allowed.len()];
        k.commit(t).expect("an allowed token is accepted");
    }
});
