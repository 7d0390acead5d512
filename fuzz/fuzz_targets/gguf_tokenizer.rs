//! The tokenizer builders from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE ("gpt2") and
//! SentencePiece ("llama"), from a small valid vocabulary with hostile additions or from
//! nothing. What builds must encode to ids inside its vocabulary, decode anything, and give a
//! byte-level BPE's text back exactly.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tandem_core::loader::gguf::{GgufMetadata, GgufValue};
use tandem_core::tokenizer::Tokenizer;
use tandem_fuzz::{byte_bpe_metadata, spm_metadata};

#[derive(Arbitrary, Debug)]
enum Model {
    Gpt2,
    Llama,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Pre {
    None,
    Default,
    Smollm,
    LlamaBpe,
    Qwen2,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    model: Model,
    pre: Pre,
    /// Start from the small valid vocabulary of the model's kind.
    base: bool,
    extra: Vec<(String, i8, f32)>,
    merges: Vec<(u16, u16)>,
    raw_merges: Vec<String>,
    drop_types: bool,
    drop_scores: bool,
    bos: Option<i64>,
    eos: Option<i64>,
    eot: Option<u32>,
    add_bos: Option<bool>,
    add_space_prefix: Option<bool>,
    text: String,
    ids: Vec<u32>,
}

fn array(m: &mut GgufMetadata, key: &str) -> Vec<GgufValue> {
    match m.remove(key) {
        Some(GgufValue::Array(a)) => a,
        _ => Vec::new(),
    }
}

fuzz_target!(|input: Input| {
    let mut m = match (&input.model, input.base) {
        (Model::Gpt2, true) => byte_bpe_metadata(),
        (Model::Llama, true) => spm_metadata(),
        _ => GgufMetadata::new(),
    };
    let model = match &input.model {
        Model::Gpt2 => "gpt2".to_string(),
        Model::Llama => "llama".to_string(),
        Model::Other(s) => s.clone(),
    };
    m.insert("tokenizer.ggml.model".into(), GgufValue::String(model.clone()));
    match &input.pre {
        Pre::None => {}
        p => {
            let name = match p {
                Pre::Default => "default",
                Pre::Smollm => "smollm",
                Pre::LlamaBpe => "llama-bpe",
                Pre::Qwen2 => "qwen2",
                Pre::Other(s) => s,
                Pre::None => unreachable!(),
            };
            m.insert("tokenizer.ggml.pre".into(), GgufValue::String(name.into()));
        }
    }
    let mut tokens = array(&mut m, "tokenizer.ggml.tokens");
    let mut types = array(&mut m, "tokenizer.ggml.token_type");
    let mut scores = array(&mut m, "tokenizer.ggml.scores");
    let mut merges = array(&mut m, "tokenizer.ggml.merges");
    for (t, ty, score) in &input.extra {
        tokens.push(GgufValue::String(t.clone()));
        types.push(GgufValue::I32(*ty as i32));
        scores.push(GgufValue::F32(*score));
    }
    let names: Vec<&str> = tokens.iter().filter_map(GgufValue::as_str).collect();
    if !names.is_empty() {
        for &(a, b) in &input.merges {
            let (a, b) = (names[a as usize % names.len()], names[b as usize % names.len()]);
            merges.push(GgufValue::String(format!("{a} {b}")));
        }
    }
    merges.extend(input.raw_merges.iter().cloned().map(GgufValue::String));
    let n_extra = input.extra.len() + input.merges.len() + input.raw_merges.len();
    m.insert("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens));
    if !input.drop_types {
        m.insert("tokenizer.ggml.token_type".into(), GgufValue::Array(types));
    }
    if !input.drop_scores {
        m.insert("tokenizer.ggml.scores".into(), GgufValue::Array(scores));
    }
    m.insert("tokenizer.ggml.merges".into(), GgufValue::Array(merges));
    for (key, v) in
        [("tokenizer.ggml.bos_token_id", input.bos), ("tokenizer.ggml.eos_token_id", input.eos)]
    {
        if let Some(v) = v {
            m.insert(key.into(), GgufValue::I64(v));
        }
    }
    if let Some(v) = input.eot {
        m.insert("tokenizer.ggml.eot_token_id".into(), GgufValue::U32(v));
    }
    if let Some(v) = input.add_bos {
        m.insert("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(v));
    }
    if let Some(v) = input.add_space_prefix {
        m.insert("tokenizer.ggml.add_space_prefix".into(), GgufValue::Bool(v));
    }

    let Ok(tok) = Tokenizer::from_gguf(&m) else { return };
    let vocab = tok.vocab_size();
    for &id in tok.bos_id().iter().chain(tok.eos_ids()) {
        assert!((id as usize) < vocab, "special id {id} outside the vocabulary of {vocab}");
    }
    if let Ok(ids) = tok.encode(&input.text) {
        assert!(ids.iter().all(|&id| (id as usize) < vocab), "{ids:?} outside {vocab}");
        let back = tok.decode(&ids, false).expect("decoding what was encoded");
        // A plain byte-level BPE (no normalizer, every byte in the vocabulary) loses nothing.
        let plain = matches!(input.pre, Pre::None | Pre::Default | Pre::Smollm | Pre::LlamaBpe);
        if matches!(input.model, Model::Gpt2)
            && input.base
            && plain
            && n_extra == 0
            && !input.drop_types
        {
            assert_eq!(back, input.text, "ids {ids:?}");
        }
        let _ = tok.decode(&ids, true);
    }
    let _ = tok.decode(&input.ids, true);
    let _ = tok.decode(&input.ids, false);
    for &id in input.ids.iter().take(16) {
        let _ = tok.token_str(id);
        let _ = tok.is_special(id);
    }
});
