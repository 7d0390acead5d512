//! Log-probabilities in OpenAI's two shapes: the completions API's parallel lists (`tokens`,
//! `token_logprobs`, `top_logprobs`, `text_offset`) and the chat API's `content` entries
//! (`token`, `logprob`, `bytes`, `top_logprobs`). The numbers come from the engine (the raw
//! model's log-softmax, see `tandem_core::sampling::TokenLogprobs`); this module names the
//! tokens and keeps each choice's entries until they are sent.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use tandem_core::scheduler::TokenLogprobs;
use tandem_core::tokenizer::Tokenizer;

use crate::submit::Kind;

/// JSON has no -inf: a token the model gives no probability reads -9999, as in OpenAI's and
/// vLLM's answers.
const NO_PROBABILITY: f32 = -9999.0;

/// How a vocabulary spells bytes in its pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// GPT-2's byte-level pieces: every byte is one printable character ("Ġ" is a space).
    ByteLevel,
    /// SentencePiece's: "▁" is a space, `<0xE2>` a raw byte, anything else its own UTF-8.
    Metaspace,
}

/// Spells token ids as the bytes they stand for, from the raw vocabulary pieces. Decoding a
/// token alone would drop a SentencePiece token's leading space and cannot show the part of a
/// multi-byte character a token holds; OpenAI's `bytes` field exists for the latter.
pub struct TokenNames {
    tokenizer: Arc<Tokenizer>,
    spelling: Spelling,
    /// Byte-level characters U+0100.. back to the bytes GPT-2 moved there, in order.
    moved: Vec<u8>,
}

impl TokenNames {
    /// Tells the vocabulary's spelling from its pieces (a pass over the vocabulary, once per
    /// model).
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        let (mut space, mut g) = (0usize, 0usize);
        for id in 0..tokenizer.vocab_size() as u32 {
            if let Some(p) = tokenizer.token_str(id) {
                space += p.starts_with('▁') as usize;
                g += p.starts_with('Ġ') as usize;
            }
        }
        let spelling = if g > space { Spelling::ByteLevel } else { Spelling::Metaspace };
        let moved = (0..=255u8).filter(|&b| !printable(b)).collect();
        TokenNames { tokenizer, spelling, moved }
    }

    /// The bytes token `id` adds to the text. Special tokens are their piece as written.
    pub fn bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.tokenizer.token_str(id) else { return Vec::new() };
        if self.tokenizer.is_special(id) {
            return piece.into_bytes();
        }
        match self.spelling {
            Spelling::Metaspace => match byte_token(&piece) {
                Some(b) => vec![b],
                None => piece.replace('▁', " ").into_bytes(),
            },
            Spelling::ByteLevel => {
                let mut out = Vec::with_capacity(piece.len());
                for c in piece.chars() {
                    let code = c as u32;
                    match code {
                        0..=255 if printable(code as u8) => out.push(code as u8),
                        256.. if ((code - 256) as usize) < self.moved.len() => {
                            out.push(self.moved[(code - 256) as usize])
                        }
                        // Not a byte-level character (an added token): its own UTF-8.
                        _ => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }
        }
    }
}

/// The bytes GPT-2's byte-level alphabet keeps as their own character.
fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// SentencePiece's byte-fallback pieces: `<0xE2>`.
fn byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A logprob as JSON: the shortest decimal that reads back as the same f32 (not the f64
/// widening's 17 digits), -9999 for -inf.
fn number(l: f32) -> Value {
    let l = if l.is_finite() { l } else { NO_PROBABILITY };
    l.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// One generated token, named.
struct Entry {
    token: String,
    bytes: Vec<u8>,
    logprob: Value,
    /// Where the token starts in the choice's text, in characters (the completions API).
    offset: usize,
    top: Vec<(String, Vec<u8>, Value)>,
}

/// One choice's log-probabilities: the entries not sent yet, and how far its text has come.
#[derive(Default)]
pub struct Pending {
    entries: Vec<Entry>,
    offset: usize,
}

impl Pending {
    pub fn push(&mut self, names: &TokenNames, id: u32, lp: &TokenLogprobs) {
        let name = |id: u32| {
            let bytes = names.bytes(id);
            (String::from_utf8_lossy(&bytes).into_owned(), bytes)
        };
        let (token, bytes) = name(id);
        let offset = self.offset;
        // Offsets count characters of the token strings, as vLLM's `text_offset`.
        self.offset += token.chars().count();
        let top = lp.top.iter().map(|&(t, l)| {
            let (s, b) = name(t);
            (s, b, number(l))
        });
        self.entries.push(Entry {
            token,
            bytes,
            logprob: number(lp.logprob),
            offset,
            top: top.collect(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries so far in `kind`'s shape, which then count as sent.
    pub fn take(&mut self, kind: Kind) -> Value {
        let entries = std::mem::take(&mut self.entries);
        match kind {
            Kind::Chat => {
                let content: Vec<Value> = entries
                    .into_iter()
                    .map(|e| {
                        let top: Vec<Value> = e.top.into_iter().map(|(token, bytes, logprob)| json!({ "token": token, "logprob": logprob, "bytes": bytes })).collect();
                        json!({ "token": e.token, "logprob": e.logprob, "bytes": e.bytes, "top_logprobs": top })
                    })
                    .collect();
                json!({ "content": content })
            }
            Kind::Completion => {
                let (mut tokens, mut logprobs, mut tops, mut offsets) =
                    (vec![], vec![], vec![], vec![]);
                for e in entries {
                    // A map by token text (OpenAI's shape): the most likely of equal spellings
                    // stays, and the chosen token is always there.
                    let mut top = Map::new();
                    for (token, _, logprob) in e.top {
                        top.entry(token).or_insert(logprob);
                    }
                    top.entry(e.token.clone()).or_insert(e.logprob.clone());
                    tokens.push(e.token);
                    logprobs.push(e.logprob);
                    tops.push(Value::Object(top));
                    offsets.push(e.offset);
                }
                json!({ "tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_characters_map_back_to_their_bytes() {
        let moved: Vec<u8> = (0..=255u8).filter(|&b| !printable(b)).collect();
        // GPT-2 moves the 68 bytes it cannot print to U+0100..: space is U+0120 ("Ġ"),
        // newline U+010A ("Ċ").
        assert_eq!(moved.len(), 68);
        assert_eq!(moved[0x20], b' ');
        assert_eq!(moved[0x0A], b'\n');
        assert_eq!(byte_token("<0xE2>"), Some(0xE2));
        assert_eq!(byte_token("<0xE>"), None);
        assert_eq!(byte_token("<s>"), None);
    }

    #[test]
    fn numbers_read_back_as_the_same_f32() {
        for l in [-2.0897658f32, -0.023826856, -1e-8, 0.0, -87.33655] {
            let v = number(l);
            assert_eq!(v.as_f64().unwrap() as f32, l);
            assert!(v.to_string().len() <= 13, "{v}");
        }
        assert_eq!(number(f32::NEG_INFINITY), serde_json::json!(-9999.0));
        assert_eq!(number(f32::NAN), serde_json::json!(-9999.0));
    }
}
