//! Rebuilding a `tokenizers::Tokenizer` from GGUF metadata (`tokenizer.ggml.*`).
//!
//! The tokenizer is described as the tokenizer.json HF would have written for the same model
//! and deserialized by the `tokenizers` crate, so the GGUF path and the tokenizer.json path run
//! the same code and give the same ids.

use super::{push_unique, Extras, END_OF_TURN_TOKENS, MAX_VOCAB};
use crate::loader::gguf::{GgufMetadata, GgufValue};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// Rebuilding SentencePiece merges looks up both halves of every split of every piece, so a
/// piece of n bytes costs about n² bytes hashed (and as many of merges kept). This bounds the
/// sum over the vocabulary: real ones stay under 2^25 (256k pieces of a few bytes; sentencepiece
/// trains pieces of at most 16 characters by default), a hostile one could ask for 2^50.
pub(crate) const MAX_SPM_SPLIT_WORK: usize = 1 << 27;

/// Llama 3's split regex (from its tokenizer.json); Qwen2 differs only in splitting digits one by one.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn build(meta: &GgufMetadata) -> Result<(tokenizers::Tokenizer, Extras)> {
    let model = get_str(meta, "tokenizer.ggml.model")?.unwrap_or("llama");
    let tokens = match meta.get("tokenizer.ggml.tokens") {
        Some(v) => str_array(v, "tokenizer.ggml.tokens")?,
        None => return Err(Error::Tokenizer("GGUF metadata has no tokenizer.ggml.tokens".into())),
    };
    if tokens.is_empty() {
        return Err(Error::Tokenizer("GGUF tokenizer.ggml.tokens is empty".into()));
    }
    if tokens.len() > MAX_VOCAB {
        return Err(Error::Tokenizer(format!(
            "GGUF has {} tokens, more than the {MAX_VOCAB} tandem accepts",
            tokens.len()
        )));
    }
    let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type") {
        Some(v) => int_array(v, "tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(Error::Tokenizer(format!(
            "GGUF has {} tokens but {} token types",
            tokens.len(),
            types.len()
        )));
    }

    let (json, default_add_bos) = match model {
        "gpt2" => (gpt2_json(meta, &tokens, &types)?, false),
        "llama" => (spm_json(meta, &tokens, &types)?, true),
        other => {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer model '{other}' is not supported (tandem reads 'llama' and 'gpt2')"
            )))
        }
    };
    let inner: tokenizers::Tokenizer = serde_json::from_value(json)
        .map_err(|e| Error::Tokenizer(format!("building the GGUF {model} tokenizer: {e}")))?;

    let n = tokens.len();
    let id = |key: &str| -> Result<Option<u32>> {
        Ok(get_u32(meta, key)?.filter(|&i| (i as usize) < n))
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let mut eos: Vec<u32> = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(i) = id(key)? {
            push_unique(&mut eos, i);
        }
    }
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty == TYPE_CONTROL && END_OF_TURN_TOKENS.contains(&t.as_str()) {
            push_unique(&mut eos, i as u32);
        }
    }
    let add_bos = get_bool(meta, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
    let chat_template = get_str(meta, "tokenizer.chat_template")?.map(str::to_owned);
    Ok((inner, Extras { bos, eos, add_bos, chat_template }))
}

/// Control and user-defined tokens are matched whole in the text, before the model sees it.
/// Control tokens are special (skipped when decoding with `skip_special`); user-defined ones
/// are ordinary text that must not be split, as llama.cpp and HF treat them.
fn added_tokens(tokens: &[String], types: &[i64], also: &[usize]) -> Vec<Value> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(i, (_, &ty))| ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED || also.contains(i))
        .map(|(i, (t, &ty))| {
            json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty != TYPE_USER_DEFINED,
            })
        })
        .collect()
}

/// First id wins when a piece appears twice, so encoding is deterministic; the later id can
/// still be decoded only through its added-token entry, if it has one.
fn vocab_map(tokens: &[String]) -> serde_json::Map<String, Value> {
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(json!(i));
    }
    vocab
}

/// Byte-level BPE (GPT-2 style: SmolLM, Llama 3, Qwen2).
fn gpt2_json(meta: &GgufMetadata, tokens: &[String], types: &[i64]) -> Result<Value> {
    let merges = match meta.get("tokenizer.ggml.merges") {
        Some(v) => str_array(v, "tokenizer.ggml.merges")?,
        None => {
            return Err(Error::Tokenizer("GGUF gpt2 tokenizer has no tokenizer.ggml.merges".into()))
        }
    };
    // Byte-level pieces never contain a real space, so the first space (after the first char,
    // as llama.cpp splits) separates the pair. Both halves and what they merge into must be in
    // the vocabulary: checked here, since the `tokenizers` crate panics on a merge longer than
    // its longest token instead of reporting it.
    let known: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let start = m.chars().next().map_or(0, char::len_utf8);
            let Some(p) = m[start..].find(' ') else {
                return Err(Error::Tokenizer(format!("GGUF merge '{m}' has no space")));
            };
            let (a, b) = (&m[..start + p], &m[start + p + 1..]);
            if let Some(missing) = [a, b].into_iter().find(|t| !known.contains(t)) {
                return Err(Error::Tokenizer(format!(
                    "GGUF merge '{m}': '{missing}' is not in the vocabulary"
                )));
            }
            if !known.contains(format!("{a}{b}").as_str()) {
                return Err(Error::Tokenizer(format!(
                    "GGUF merge '{m}': '{a}{b}' is not in the vocabulary"
                )));
            }
            Ok(json!([a, b]))
        })
        .collect::<Result<_>>()?;

    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let pre = get_str(meta, "tokenizer.ggml.pre")?.unwrap_or("default");
    // Llama 3's tokenizer.json sets ignore_merges: a word that is itself in the vocabulary is
    // one token even when the merges would not build it.
    let (pre_tokenizer, ignore_merges) = match pre {
        "llama-bpe" | "llama3" | "smaug-bpe" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            true,
        ),
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            false,
        ),
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "gpt2" | "default" => (byte_level(true), false),
        other => {
            eprintln!("warning: GGUF pre-tokenizer '{other}' is unknown to tandem; using GPT-2's");
            (byte_level(true), false)
        }
    };
    // Qwen2's tokenizer.json composes text to NFC before splitting; without it a decomposed
    // "é" would tokenize differently from HF.
    let normalizer = if pre == "qwen2" { json!({"type": "NFC"}) } else { Value::Null };
    Ok(json!({
        "version": "1.0",
        "added_tokens": added_tokens(tokens, types, &[]),
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab_map(tokens), "merges": merges,
        },
    }))
}

/// SentencePiece BPE (Llama 1/2, Mistral, TinyStories) as HF's LlamaConverter writes it.
fn spm_json(meta: &GgufMetadata, tokens: &[String], types: &[i64]) -> Result<Value> {
    let scores: Vec<f32> = match meta.get("tokenizer.ggml.scores") {
        Some(GgufValue::Array(a)) => a
            .iter()
            .map(|v| match v {
                GgufValue::F32(x) => Ok(*x),
                GgufValue::F64(x) => Ok(*x as f32),
                _ => Err(Error::Tokenizer("GGUF tokenizer.ggml.scores holds non-floats".into())),
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(Error::Tokenizer("GGUF tokenizer.ggml.scores is not an array".into()))
        }
        None => {
            return Err(Error::Tokenizer(
                "GGUF llama tokenizer has no tokenizer.ggml.scores".into(),
            ))
        }
    };
    if scores.len() != tokens.len() {
        return Err(Error::Tokenizer(format!(
            "GGUF has {} tokens but {} scores",
            tokens.len(),
            scores.len()
        )));
    }
    let unk = types
        .iter()
        .position(|&t| t == TYPE_UNKNOWN)
        .or_else(|| tokens.iter().position(|t| t == "<unk>"));

    // HF's SentencePieceExtractor: every split of a piece into two vocabulary pieces is a merge,
    // ranked by the merged piece's score (highest first); ties keep vocabulary order, and a
    // piece's own splits are ordered by (left id, right id). Sorting is stable, as Python's is.
    let ids: HashMap<&str, usize> = {
        let mut m = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            m.entry(t.as_str()).or_insert(i);
        }
        m
    };
    let work = tokens
        .iter()
        .zip(types)
        .filter(|(_, &ty)| ty != TYPE_BYTE)
        .fold(0usize, |w, (t, _)| w.saturating_add(t.len().saturating_mul(t.len())));
    if work > MAX_SPM_SPLIT_WORK {
        let longest = tokens.iter().map(String::len).max().unwrap_or(0);
        return Err(Error::Tokenizer(format!(
            "GGUF SentencePiece vocabulary too costly to rebuild its merges from: its pieces' squared lengths sum to {work}, \
             over the limit of {MAX_SPM_SPLIT_WORK} (the longest piece has {longest} bytes)"
        )));
    }
    let mut merges: Vec<(usize, usize, f32)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types[i] == TYPE_BYTE {
            continue; // "<0x41>" is a byte, not text to build from smaller pieces.
        }
        let mut local: Vec<(usize, usize, f32)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                Some((*ids.get(&piece[..at])?, *ids.get(&piece[at..])?, scores[i]))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    let merges: Vec<Value> =
        merges.iter().map(|&(l, r, _)| json!([tokens[l], tokens[r]])).collect();

    // SentencePiece adds a "▁" before the text unless the model was trained without it.
    let add_space_prefix = get_bool(meta, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0",
        "added_tokens": added_tokens(tokens, types, unk.as_slice()),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk.map(|u| tokens[u].clone()),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false, "vocab": vocab_map(tokens), "merges": merges,
        },
    }))
}

// Metadata accessors: a key that is absent is None; a key of the wrong type is an error that
// names it, because a model file that lies about its tokenizer should not load silently.

fn get_str<'m>(meta: &'m GgufMetadata, key: &str) -> Result<Option<&'m str>> {
    match meta.get(key) {
        None => Ok(None),
        Some(GgufValue::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(key, "a string", v)),
    }
}

fn get_bool(meta: &GgufMetadata, key: &str) -> Result<Option<bool>> {
    match meta.get(key) {
        None => Ok(None),
        Some(GgufValue::Bool(b)) => Ok(Some(*b)),
        Some(v) => as_int(v).map(|i| Some(i != 0)).ok_or_else(|| wrong_type(key, "a bool", v)),
    }
}

/// Token ids are u32 in llama.cpp's writer, but other writers use other integer types.
fn get_u32(meta: &GgufMetadata, key: &str) -> Result<Option<u32>> {
    match meta.get(key) {
        None => Ok(None),
        Some(v) => match as_int(v) {
            Some(i) => Ok(u32::try_from(i).ok()),
            None => Err(wrong_type(key, "an integer", v)),
        },
    }
}

fn as_int(v: &GgufValue) -> Option<i64> {
    Some(match *v {
        GgufValue::U8(x) => x as i64,
        GgufValue::I8(x) => x as i64,
        GgufValue::U16(x) => x as i64,
        GgufValue::I16(x) => x as i64,
        GgufValue::U32(x) => x as i64,
        GgufValue::I32(x) => x as i64,
        GgufValue::U64(x) => i64::try_from(x).ok()?,
        GgufValue::I64(x) => x,
        _ => return None,
    })
}

fn str_array(v: &GgufValue, key: &str) -> Result<Vec<String>> {
    match v {
        GgufValue::Array(a) => a
            .iter()
            .map(|x| match x {
                GgufValue::String(s) => Ok(s.clone()),
                other => Err(wrong_type(key, "an array of strings", other)),
            })
            .collect(),
        other => Err(wrong_type(key, "an array of strings", other)),
    }
}

fn int_array(v: &GgufValue, key: &str) -> Result<Vec<i64>> {
    match v {
        GgufValue::Array(a) => a
            .iter()
            .map(|x| as_int(x).ok_or_else(|| wrong_type(key, "an array of integers", x)))
            .collect(),
        other => Err(wrong_type(key, "an array of integers", other)),
    }
}

fn wrong_type(key: &str, expected: &str, got: &GgufValue) -> Error {
    let kind = match got {
        GgufValue::String(_) => "a string".to_string(),
        GgufValue::Array(a) => format!("an array of {} values", a.len()),
        other => format!("{other:?}"),
    };
    Error::Tokenizer(format!("GGUF metadata {key} should be {expected}, found {kind}"))
}
