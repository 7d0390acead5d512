//! The vocabulary as llguidance sees it: every token's bytes (special tokens behind its marker
//! byte, so grammar text never matches them) and a way to tokenize forced text.

use std::collections::HashMap;

use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::{Error, Result};

/// A tokenizer for llguidance: the trie of token bytes and the tokenizer itself.
pub(super) struct Env {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Forced text is grammar text, never a special token. The tokenizer's own split when
        // its tokens spell exactly these bytes; otherwise (a SentencePiece tokenizer adds its
        // dummy-prefix space, invalid UTF-8 was replaced) the trie's greedy split, which does.
        let text = String::from_utf8_lossy(s);
        if let Ok(e) = self.tokenizer.encode(text.as_ref(), false) {
            let ids = e.get_ids();
            if ids.iter().all(|&t| (t as usize) < self.trie.vocab_size())
                && self.trie.decode_ext(ids, false) == s
            {
                return ids.to_vec();
            }
        }
        self.trie.greedy_tokenize(s)
    }
}

/// How a vocabulary spells bytes in its pieces.
#[derive(Clone, Copy, PartialEq)]
enum Spelling {
    /// GPT-2's byte-level alphabet: each byte one printable character.
    ByteLevel,
    /// SentencePiece: `▁` for a space, `<0xHH>` pieces for bytes outside the vocabulary.
    ByteFallback,
}

/// The environment of `tokenizer`: `vocab` ids (the model's; ids past the tokenizer's are never
/// allowed), `special` ids behind the marker, `eos` the id a finished grammar allows.
pub(super) fn env(
    tokenizer: &tokenizers::Tokenizer,
    vocab: usize,
    special: impl Fn(u32) -> bool,
    eos: u32,
) -> Result<Env> {
    let decoder = serde_json::to_value(tokenizer.get_decoder())
        .map_err(|e| Error::Tokenizer(format!("structured output: the decoder: {e}")))?;
    let spelling = spelling(&decoder).ok_or_else(|| {
        Error::Tokenizer(
            "structured output needs a byte-level (GPT-2) or byte-fallback (SentencePiece) \
             tokenizer"
                .into(),
        )
    })?;
    let added = tokenizer.get_added_tokens_decoder();
    let chars = byte_level_chars();
    let words: Vec<Vec<u8>> = (0..vocab as u32)
        .map(|id| {
            if let Some(t) = added.get(&id) {
                let mut b = t.content.as_bytes().to_vec();
                if t.special || special(id) {
                    b.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
                }
                return b;
            }
            let Some(piece) = tokenizer.id_to_token(id) else { return vec![] };
            if special(id) {
                return [&[TokTrie::SPECIAL_TOKEN_MARKER], piece.as_bytes()].concat();
            }
            match spelling {
                // A character outside the alphabet makes the piece unreachable, not an error.
                Spelling::ByteLevel => {
                    piece.chars().map(|c| chars.get(&c).copied()).collect::<Option<Vec<u8>>>()
                }
                Spelling::ByteFallback => Some(byte_fallback(&piece)),
            }
            .unwrap_or_default()
        })
        .collect();
    let mut info = TokRxInfo::new(vocab as u32, eos);
    info.tok_end_of_turn = None;
    Ok(Env { trie: TokTrie::from(&info, &words), tokenizer: tokenizer.clone() })
}

fn spelling(decoder: &serde_json::Value) -> Option<Spelling> {
    let kind = |d: &serde_json::Value| d["type"].as_str().map(str::to_owned);
    match kind(decoder).as_deref() {
        Some("ByteLevel") => Some(Spelling::ByteLevel),
        Some("ByteFallback") => Some(Spelling::ByteFallback),
        Some("Sequence") => {
            let parts = decoder["decoders"].as_array()?;
            if parts.iter().any(|d| kind(d).as_deref() == Some("ByteLevel")) {
                Some(Spelling::ByteLevel)
            } else if parts.iter().any(|d| kind(d).as_deref() == Some("ByteFallback")) {
                Some(Spelling::ByteFallback)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// A SentencePiece piece's bytes: `<0xHH>` is that byte, `▁` a space.
fn byte_fallback(piece: &str) -> Vec<u8> {
    if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')) {
        if let (2, Ok(b)) = (hex.len(), u8::from_str_radix(hex, 16)) {
            return vec![b];
        }
    }
    piece.replace('\u{2581}', " ").into_bytes()
}

/// GPT-2's byte-level alphabet, character to byte: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes are U+0100.. in byte order.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b as char, b)
            } else {
                next += 1;
                (char::from_u32(next - 1).expect("below U+0200"), b)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_level_alphabet_covers_every_byte_once() {
        let m = byte_level_chars();
        assert_eq!(m.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
        assert_eq!(m[&'a'], b'a');
    }

    #[test]
    fn byte_fallback_pieces() {
        assert_eq!(byte_fallback("<0x0A>"), b"\n");
        assert_eq!(byte_fallback("\u{2581}the"), b" the");
        assert_eq!(byte_fallback("<0xZZ>"), b"<0xZZ>");
        assert_eq!(byte_fallback("<0x1"), b"<0x1");
    }
}
