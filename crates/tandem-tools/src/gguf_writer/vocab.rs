//! `tokenizer.ggml.*` vocabularies: one read from a llama2.c tokenizer file, and a placeholder
//! for weights that come with no tokenizer.

use tandem_core::loader::gguf::GgufValue;

/// `tokenizer.ggml.{tokens, scores, token_type}`: one value per token in each.
pub type VocabArrays = (Vec<GgufValue>, Vec<GgufValue>, Vec<GgufValue>);

/// `tokenizer.ggml.{tokens, scores, token_type}` arrays from a llama2.c tokenizer file (e.g.
/// tok512.bin): i32 max_token_length, then per token an f32 score, an i32 length and the bytes.
/// llama2.c writes "▁" as a plain space and BOS/EOS as "\n<s>\n"/"\n</s>\n"; llama.cpp's
/// converter (working from the .model) has "▁", "<s>", "</s>", so those are restored.
/// For tests: a malformed file is an `Err` naming the token where it broke.
pub fn llama2c_vocab(bytes: &[u8], vocab: usize) -> Result<VocabArrays, String> {
    let mut at = 4;
    let mut take = |n: usize, id: usize| -> Result<&[u8], String> {
        let s = bytes
            .get(at..at + n)
            .ok_or_else(|| format!("llama2c tokenizer: truncated at token {id}"))?;
        at += n;
        Ok(s)
    };
    let (mut tokens, mut scores, mut types) = (vec![], vec![], vec![]);
    for id in 0..vocab {
        let score = f32::from_le_bytes(take(4, id)?.try_into().expect("4 bytes"));
        let len = i32::from_le_bytes(take(4, id)?.try_into().expect("4 bytes")).max(0) as usize;
        let piece = String::from_utf8(take(len, id)?.to_vec())
            .map_err(|e| format!("token {id}: {e}"))?
            .replace(' ', "▁");
        let piece = match id {
            1 => "<s>".to_string(),
            2 => "</s>".to_string(),
            _ => piece,
        };
        let is_byte = piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>');
        types.push(GgufValue::I32(match id {
            0 => 2,
            1 | 2 => 3,
            _ if is_byte => 6,
            _ => 1,
        }));
        tokens.push(GgufValue::String(piece));
        scores.push(GgufValue::F32(score));
    }
    Ok((tokens, scores, types))
}

/// A SentencePiece ("llama") vocabulary of `n` made-up tokens, for weights that come with no
/// tokenizer: `<unk>`, `<s>`, `</s>`, the 256 byte tokens (as many as fit), `▁` and `▁t<id>`
/// for the rest, with no merges, so any text encodes (as bytes) and every id decodes. llama.cpp
/// and tandem both load it; llama.cpp's "none" tokenizer model would leave tandem without one.
pub fn placeholder_vocab(n: usize) -> Vec<(&'static str, GgufValue)> {
    let (mut tokens, mut scores, mut types) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for id in 0..n {
        let (piece, ty) = match id {
            0 => ("<unk>".to_string(), 2),
            1 => ("<s>".to_string(), 3),
            2 => ("</s>".to_string(), 3),
            3..=258 => (format!("<0x{:02X}>", id - 3), 6),
            // SentencePiece's word boundary: without it a space would only decode as its bytes.
            259 => ("\u{2581}".to_string(), 1),
            _ => (format!("\u{2581}t{id}"), 1),
        };
        tokens.push(GgufValue::String(piece));
        scores.push(GgufValue::F32(if ty == 1 { -(id as f32) } else { 0.0 }));
        types.push(GgufValue::I32(ty));
    }
    vec![
        ("tokenizer.ggml.model", GgufValue::String("llama".into())),
        ("tokenizer.ggml.tokens", GgufValue::Array(tokens)),
        ("tokenizer.ggml.scores", GgufValue::Array(scores)),
        ("tokenizer.ggml.token_type", GgufValue::Array(types)),
        ("tokenizer.ggml.unknown_token_id", GgufValue::U32(0)),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
    ]
}
