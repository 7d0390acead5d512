//! Structured output: a request's output held to a JSON schema, any JSON object, a regular
//! expression or a context-free grammar (Lark, or GBNF translated to Lark). llguidance computes
//! each step's allowed tokens from the vocabulary; the engine applies them on the backend before
//! sampling ([`crate::ops::MaskLogits`]), so a constrained request still reads back one token.
//!
//! A [`Grammar`] is compiled once per request into a [`Constraint`] by the tokenizer's
//! [`Constrainer`] (built on first use); compiling has a budget (llguidance's fuel and size
//! limits, tandem's size and depth limits), so a hostile schema is refused, not run forever.

mod gbnf;
mod vocab;

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{TokEnv, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::{Error, Result};

pub use gbnf::{gbnf_to_lark, GbnfError};

/// The largest schema, regex or grammar text a request may give, in bytes.
pub const MAX_GRAMMAR_BYTES: usize = 256 << 10;
/// How deep a JSON schema may nest (objects and arrays, counted as serde_json values).
pub const MAX_SCHEMA_DEPTH: usize = 32;

/// What a request's output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A JSON value valid under this JSON Schema.
    JsonSchema(Value),
    /// Text matching this regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// Text in this Lark grammar's language (llguidance's Lark dialect).
    Lark(String),
    /// Text in this GBNF grammar's language (llama.cpp's format; its `root` rule).
    Gbnf(String),
}

impl Grammar {
    /// What kind of constraint this is, as errors and metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Grammar::JsonObject => "json_object",
            Grammar::JsonSchema(_) => "json_schema",
            Grammar::Regex(_) => "regex",
            Grammar::Lark(_) => "lark",
            Grammar::Gbnf(_) => "gbnf",
        }
    }

    /// llguidance's form, after tandem's own checks (size, depth, GBNF's syntax).
    fn top_level(&self) -> Result<TopLevelGrammar> {
        let bad = |m: String| Err(Error::InvalidParameter(format!("{}: {m}", self.kind())));
        let text_len = match self {
            Grammar::JsonObject => 0,
            Grammar::JsonSchema(v) => serde_json::to_string(v).map_or(usize::MAX, |s| s.len()),
            Grammar::Regex(s) | Grammar::Lark(s) | Grammar::Gbnf(s) => s.len(),
        };
        if text_len > MAX_GRAMMAR_BYTES {
            return bad(format!("{text_len} bytes; at most {MAX_GRAMMAR_BYTES}"));
        }
        Ok(match self {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(with_options(
                serde_json::json!({"type": "object"}),
            )),
            Grammar::JsonSchema(schema) => {
                if depth(schema) > MAX_SCHEMA_DEPTH {
                    return bad(format!("the schema nests deeper than {MAX_SCHEMA_DEPTH} levels"));
                }
                match schema {
                    Value::Object(_) | Value::Bool(_) => {}
                    other => {
                        return bad(format!("a schema is an object or a boolean, not {other}"))
                    }
                }
                TopLevelGrammar::from_json_schema(with_options(schema.clone()))
            }
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            Grammar::Gbnf(src) => match gbnf_to_lark(src) {
                Ok(lark) => TopLevelGrammar::from_lark(lark),
                Err(e) => return bad(e.to_string()),
            },
        })
    }
}

/// A schema with llguidance's options: compact separators (a model cannot pad the output with
/// whitespace forever) and no silently ignored keywords (a keyword it cannot enforce is an
/// error). A schema's own `x-guidance` options win.
pub(crate) fn with_options(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ",
                "key_separator": ": ", "lenient": false})
        });
    }
    schema
}

/// Nesting depth of a JSON value, without recursion (serde_json already bounds what it parses,
/// but a `Value` may be built by hand).
fn depth(v: &Value) -> usize {
    let mut stack = vec![(v, 1)];
    let mut max = 0;
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// Compiles grammars for one tokenizer: llguidance's parser factory over its vocabulary.
/// Shared by every request of a model (cheap to clone).
#[derive(Clone)]
pub struct Constrainer {
    factory: Arc<ParserFactory>,
    /// Tokens that end generation; each is allowed wherever the grammar allows its EOS.
    eos: Arc<[u32]>,
    vocab: usize,
}

impl std::fmt::Debug for Constrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrainer").field("vocab", &self.vocab).finish_non_exhaustive()
    }
}

impl Constrainer {
    /// For `tokenizer`'s vocabulary (`vocab` ids, the model's), with `eos` the tokens that end
    /// generation (the first is the one a finished grammar asks for).
    pub(crate) fn new(
        tokenizer: &tokenizers::Tokenizer,
        vocab: usize,
        special: impl Fn(u32) -> bool,
        eos: &[u32],
    ) -> Result<Self> {
        let first = *eos.first().ok_or_else(|| {
            Error::Tokenizer("structured output needs an end-of-sequence token".into())
        })?;
        let env: TokEnv = Arc::new(vocab::env(tokenizer, vocab, special, first)?);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::Tokenizer(format!("structured output: {e}")))?;
        factory.quiet();
        *factory.limits_mut() = limits();
        Ok(Constrainer { factory: Arc::new(factory), eos: eos.into(), vocab })
    }

    /// The model vocabulary (logits per row) its masks cover.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// `grammar` compiled for one request, or why it cannot be (a message naming the problem,
    /// with llguidance's position where it gives one).
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint> {
        let top = grammar.top_level()?;
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| Error::InvalidParameter(format!("{}: {e}", grammar.kind())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::InvalidParameter(format!("{}: {e}", grammar.kind())));
        }
        Ok(Constraint {
            matcher,
            env: self.factory.tok_env().clone(),
            eos: self.eos.clone(),
            vocab: self.vocab,
            grammar: grammar.kind(),
            waiting: None,
        })
    }
}

/// llguidance's budgets: its defaults bound a mask's work to milliseconds; the compile budget
/// is lowered so that one request's schema costs other requests at most tens of milliseconds.
fn limits() -> ParserLimits {
    ParserLimits {
        initial_lexer_fuel: 200_000,
        max_grammar_size: 200_000,
        max_lexer_states: 50_000,
        ..ParserLimits::default()
    }
}

/// One request's constraint: where its output stands in the grammar.
pub struct Constraint {
    matcher: Matcher,
    /// The vocabulary's bytes: what a dormant constraint reads its trigger in.
    env: TokEnv,
    eos: Arc<[u32]>,
    vocab: usize,
    grammar: &'static str,
    /// A dormant constraint ([`Constraint::after`]): what wakes it.
    waiting: Option<Trigger>,
}

/// The text that wakes a dormant constraint, and the end of the output that may be its start.
#[derive(Clone)]
struct Trigger {
    text: Box<[u8]>,
    /// The output's last bytes, fewer than the trigger's (a miss keeps only those).
    tail: Vec<u8>,
}

impl Trigger {
    /// Takes a token's bytes; when they complete the trigger, the bytes that follow it in them.
    fn take(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.tail.extend_from_slice(bytes);
        let n = self.text.len();
        if let Some(at) = self.tail.windows(n).position(|w| *w == *self.text) {
            let rest = self.tail[at + n..].to_vec();
            self.tail.clear();
            return Some(rest);
        }
        let keep = self.tail.len().min(n - 1);
        self.tail.drain(..self.tail.len() - keep);
        None
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("grammar", &self.grammar).finish_non_exhaustive()
    }
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            env: self.env.clone(),
            eos: self.eos.clone(),
            vocab: self.vocab,
            grammar: self.grammar,
            waiting: self.waiting.clone(),
        }
    }
}

impl Constraint {
    /// This constraint, dormant until the output's text contains `trigger`: the output is free
    /// until then, and held to the grammar from there on (a tool call the model starts in its
    /// own syntax, held to a valid call). The text is read across tokens, so any split of the
    /// trigger wakes it; the bytes after it in the waking token are the grammar's first. An
    /// empty trigger is none.
    pub fn after(mut self, trigger: &str) -> Self {
        self.waiting = (!trigger.is_empty())
            .then(|| Trigger { text: trigger.as_bytes().into(), tail: vec![] });
        self
    }

    /// Whether it waits for its trigger (its output is free meanwhile: no masks).
    pub fn is_dormant(&self) -> bool {
        self.waiting.is_some()
    }

    /// A token's text as the output reads it (a special token by its name, past its marker).
    fn text(env: &TokEnv, token: u32) -> &[u8] {
        match env.tok_trie().token(token) {
            [TokTrie::SPECIAL_TOKEN_MARKER, name @ ..] => name,
            bytes => bytes,
        }
    }

    /// The model vocabulary (logits per row) its masks cover.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// u32 words of one row's mask.
    pub fn words(&self) -> usize {
        self.vocab.div_ceil(32)
    }

    /// The tokens allowed next, as [`crate::ops::MaskLogits`] reads a row ([`Self::words`]
    /// words). Every end-of-sequence token is allowed where the grammar allows its EOS.
    pub fn mask(&mut self) -> Result<Vec<u32>> {
        let v = self.matcher.compute_mask_or_eos().map_err(|e| self.failed(e))?;
        let mut words = v.as_slice().to_vec();
        words.resize(self.words(), 0);
        let allowed =
            |w: &[u32], t: u32| w.get(t as usize / 32).is_some_and(|x| x >> (t % 32) & 1 == 1);
        if allowed(&words, self.eos[0]) {
            for &t in self.eos.iter().filter(|&&t| (t as usize) < self.vocab) {
                words[t as usize / 32] |= 1 << (t % 32);
            }
        }
        // Past the model's vocabulary nothing is allowed (a mask word may run over it).
        if !self.vocab.is_multiple_of(32) {
            let last = self.words() - 1;
            words[last] &= (1u32 << (self.vocab % 32)) - 1;
        }
        if words.iter().all(|&w| w == 0) {
            return Err(Error::InvalidParameter(format!(
                "{}: no token can continue the output",
                self.grammar
            )));
        }
        Ok(words)
    }

    /// Takes a generated token. An end-of-sequence token the grammar allowed finishes it.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        if let Some(w) = &mut self.waiting {
            let Some(rest) = w.take(Self::text(&self.env, token)) else {
                return Ok(());
            };
            // The grammar starts with what followed the trigger in this token. Text it cannot
            // take is not the syntax's call after all: the output stays free, waiting again.
            let tokens = self.env.tokenize_bytes(&rest);
            if self.matcher.validate_tokens(&tokens).ok() == Some(tokens.len()) {
                self.matcher.consume_tokens(&tokens).map_err(|e| self.failed(e))?;
                self.waiting = None;
            }
            return Ok(());
        }
        let t = if self.eos.contains(&token) { self.eos[0] } else { token };
        self.matcher.consume_token(t).map_err(|e| self.failed(e))
    }

    /// Whether the output is complete: the grammar allows nothing more.
    pub fn is_finished(&self) -> bool {
        self.waiting.is_none() && self.matcher.is_stopped()
    }

    /// How many of `draft`'s tokens the grammar accepts in a row from here (a speculative draft
    /// is cut at the first it rejects). Leaves the constraint where it was.
    pub fn accepted_prefix(&mut self, draft: &[u32]) -> usize {
        // Dormant: the draft stops before the token that completes the trigger, so that no
        // row after it is chosen unmasked.
        if let Some(mut trigger) = self.waiting.clone() {
            for (i, &t) in draft.iter().enumerate() {
                if trigger.take(Self::text(&self.env, t)).is_some() {
                    return i;
                }
            }
            return draft.len();
        }
        let mapped: Vec<u32> =
            draft.iter().map(|t| if self.eos.contains(t) { self.eos[0] } else { *t }).collect();
        self.matcher.validate_tokens(&mapped).unwrap_or(0)
    }

    /// The masks of a verification's rows: row i's after `draft[..i]` ([`Self::mask`] for each
    /// of `draft.len() + 1` rows, concatenated). `draft` must be accepted whole
    /// ([`Self::accepted_prefix`]); the constraint is left where it was.
    pub fn masks_along(&mut self, draft: &[u32]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity((draft.len() + 1) * self.words());
        let mut taken = 0;
        let r = (|| {
            for &t in draft {
                out.extend(self.mask()?);
                self.commit(t)?;
                taken += 1;
            }
            out.extend(self.mask()?);
            Ok(())
        })();
        if taken > 0 {
            self.matcher.rollback(taken).map_err(|e| self.failed(e))?;
        }
        r.map(|()| out)
    }

    fn failed(&self, e: impl std::fmt::Display) -> Error {
        Error::InvalidParameter(format!("{}: {e}", self.grammar))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_without_recursion() {
        assert_eq!(depth(&serde_json::json!(1)), 1);
        assert_eq!(depth(&serde_json::json!({"a": [1, {"b": 2}]})), 4);
        let mut deep = serde_json::json!(0);
        for _ in 0..10_000 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(depth(&deep), 10_001);
        // Dropping a value this deep recurses inside serde_json; leak it in the test.
        std::mem::forget(deep);
    }
}
