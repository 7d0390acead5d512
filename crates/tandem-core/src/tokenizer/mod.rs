//! Tokenization (through the `tokenizers` crate), chat templates (minijinja) and incremental
//! detokenization for streaming.
//!
//! Every tokenizer, whether read from tokenizer.json or rebuilt from GGUF metadata, ends up as
//! one `tokenizers::Tokenizer`, so encoding and decoding behave the same whatever the file.

mod chat;
mod chat_guard;
mod gguf;
mod stream;

pub use chat::{ChatMessage, ChatTemplateKwargs};
pub use stream::{Detokenizer, StopStrings, TextStream};

use crate::constraint::Constrainer;
use crate::loader::gguf::{GgufMetadata, GgufValue};
use crate::loader::TokenizerSource;
use crate::{Error, Result};
use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;

/// Tokens that end a turn in the common chat formats. llama.cpp treats these as end-of-generation
/// when the vocabulary marks them special, because model files often name only one EOS while
/// the instruct model actually ends its turns with another (SmolLM2 and Qwen end with
/// `<|im_end|>`, Llama 3 Instruct with `<|eot_id|>`).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
];

/// The longest text [`Tokenizer::encode`] takes, in bytes. Far more than any context holds (a
/// 128k-token context is about half a megabyte of text), it bounds what one prompt can cost to
/// tokenize before its length is checked against the context; the server's body limit is the
/// same size.
pub const MAX_TEXT_BYTES: usize = 8 << 20;

/// The most tokens a vocabulary may have (as `ModelConfig`'s `vocab_size`): the largest real
/// ones have about 256k.
pub const MAX_VOCAB: usize = crate::config::MAX_VOCAB;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// One past the largest id: a file may list a piece twice (GGUF vocabularies with several
    /// "" or "[PAD]" entries), which the inner map counts once, yet every position is an id.
    vocab: usize,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
    /// Ids of special (control) tokens: skipped by `decode(.., true)` and by streaming.
    special: HashSet<u32>,
    /// Structured output's grammar compiler over this vocabulary, built on first use (it walks
    /// the whole vocabulary) for the model vocabulary it was asked for.
    constrainer: OnceLock<std::result::Result<Constrainer, String>>,
}

// Generation shares one tokenizer across threads (a server's requests).
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
};

/// What a tokenizer file says beyond the vocabulary itself.
struct Extras {
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// From tokenizer.json, plus tokenizer_config.json for chat_template, bos_token, eos_token
    /// and add_bos_token.
    pub fn from_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let bytes = std::fs::read(tokenizer_json).map_err(|e| Error::io(tokenizer_json, e))?;
        let config = match tokenizer_config {
            Some(p) => Some(std::fs::read(p).map_err(|e| Error::io(p, e))?),
            None => None,
        };
        // Newer HF exports keep the template in its own file beside the config.
        let dir = tokenizer_config.or(Some(tokenizer_json)).and_then(Path::parent);
        let template_file = match dir.map(|d| d.join("chat_template.jinja")).filter(|p| p.is_file())
        {
            Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?),
            None => None,
        };
        let label = tokenizer_json.display().to_string();
        let config_label = tokenizer_config.map(|p| p.display().to_string()).unwrap_or_default();
        Self::from_bytes_labeled(&bytes, config.as_deref(), template_file, (&label, &config_label))
    }

    /// A stand-in for models that come without one (synthetic benchmark weights): token i is
    /// the word "<i>", there is no BOS and no end-of-sequence token, so text and ids round-trip
    /// and generation runs until max_tokens.
    pub fn placeholder(vocab: usize) -> Result<Self> {
        let words: Vec<String> = (0..vocab).map(|i| format!("\"<{i}>\":{i}")).collect();
        let json = format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{{"type":"WhitespaceSplit"}},"post_processor":null,"decoder":null,"model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"<0>"}}}}"#,
            words.join(",")
        );
        Self::from_bytes_labeled(json.as_bytes(), None, None, ("placeholder tokenizer", ""))
    }

    /// The same from bytes already in memory (a browser's files): tokenizer.json, and
    /// tokenizer_config.json and chat_template.jinja when present (the latter is used only when
    /// the config carries no template).
    pub fn from_bytes(
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        Self::from_bytes_labeled(
            tokenizer_json,
            tokenizer_config,
            chat_template,
            ("tokenizer.json", "tokenizer_config.json"),
        )
    }

    fn from_bytes_labeled(
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
        template_file: Option<String>,
        (label, config_label): (&str, &str),
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("{label}: {e}")))?;
        if inner.get_vocab_size(true) > MAX_VOCAB {
            return Err(Error::Tokenizer(format!(
                "{label}: {} tokens, more than the {MAX_VOCAB} tandem accepts",
                inner.get_vocab_size(true)
            )));
        }
        let config = match tokenizer_config {
            Some(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(bytes)
                    .map_err(|e| Error::Tokenizer(format!("{config_label}: {e}")))?;
                Some(v)
            }
            None => None,
        };
        let token_of = |key: &str| -> Option<String> {
            // HF writes these either as a plain string or as an AddedToken object.
            let v = config.as_ref()?.get(key)?;
            v.as_str().or_else(|| v.get("content")?.as_str()).map(str::to_owned)
        };
        let id_of = |t: &str| inner.token_to_id(t);
        let bos = match token_of("bos_token") {
            Some(t) => id_of(&t),
            None => ["<s>", "<|begin_of_text|>"].iter().find_map(|t| id_of(t)),
        };
        let mut eos: Vec<u32> = match token_of("eos_token") {
            Some(t) => id_of(&t).into_iter().collect(),
            None => ["</s>", "<|end_of_text|>", "<|endoftext|>"]
                .iter()
                .find_map(|t| id_of(t))
                .into_iter()
                .collect(),
        };
        let special: HashSet<u32> = special_ids(&inner);
        for t in END_OF_TURN_TOKENS {
            if let Some(id) = id_of(t).filter(|id| special.contains(id)) {
                push_unique(&mut eos, id);
            }
        }
        let add_bos = match config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
        {
            Some(b) => b,
            // No explicit flag (Llama 3): ask the file's own post-processor whether it adds BOS.
            None => bos.is_some_and(|b| {
                inner.encode("a", true).map(|e| e.get_ids().first() == Some(&b)).unwrap_or(false)
            }),
        };
        let chat_template = config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(template_from_json)
            .or(template_file);
        Ok(Self::assemble(inner, Extras { bos, eos, add_bos, chat_template }))
    }

    /// Built from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(meta: &GgufMetadata) -> Result<Self> {
        let (inner, extras) = gguf::build(meta)?;
        let mut t = Self::assemble(inner, extras);
        // Every position of tokenizer.ggml.tokens is an id, duplicates included.
        if let Some(GgufValue::Array(tokens)) = meta.get("tokenizer.ggml.tokens") {
            t.vocab = t.vocab.max(tokens.len());
        }
        Ok(t)
    }

    pub fn load(src: &TokenizerSource) -> Result<Self> {
        match src {
            TokenizerSource::Files { tokenizer_json, tokenizer_config } => {
                Self::from_files(tokenizer_json, tokenizer_config.as_deref())
            }
            TokenizerSource::Bytes { tokenizer_json, tokenizer_config, chat_template } => {
                Self::from_bytes(tokenizer_json, tokenizer_config.as_deref(), chat_template.clone())
            }
            TokenizerSource::Gguf(file) => Self::from_gguf(&file.metadata),
            TokenizerSource::None(why) => Err(Error::Tokenizer(why.clone())),
        }
    }

    fn assemble(inner: tokenizers::Tokenizer, x: Extras) -> Self {
        let special = special_ids(&inner);
        let max_id = inner.get_vocab(true).into_values().max().map_or(0, |i| i as usize + 1);
        Tokenizer {
            vocab: max_id.max(inner.get_vocab_size(true)),
            inner,
            bos_id: x.bos,
            eos_ids: x.eos,
            add_bos: x.add_bos,
            chat_template: x.chat_template,
            special,
            constrainer: OnceLock::new(),
        }
    }

    /// The grammar compiler of structured output for a model of `vocab` logits over this
    /// vocabulary (built once; a second model width is an error, as a tokenizer serves one
    /// model).
    pub fn constrainer(&self, vocab: usize) -> Result<Constrainer> {
        let c = self.constrainer.get_or_init(|| {
            Constrainer::new(&self.inner, vocab, |id| self.special.contains(&id), &self.eos_ids)
                .map_err(|e| e.to_string())
        });
        match c {
            Ok(c) if c.vocab() == vocab => Ok(c.clone()),
            Ok(c) => Err(Error::InvalidParameter(format!(
                "structured output was set up for {} logits, not {vocab}",
                c.vocab()
            ))),
            Err(e) => Err(Error::Tokenizer(e.clone())),
        }
    }

    /// Text -> ids. Special tokens written in the text (e.g. "<|im_start|>") become their ids.
    /// Adds no BOS: the caller decides with [`Tokenizer::add_bos`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(Error::Tokenizer(format!(
                "a text of {} bytes: tandem tokenizes at most {MAX_TEXT_BYTES} bytes ({} MiB) at once",
                text.len(),
                MAX_TEXT_BYTES >> 20
            )));
        }
        let enc =
            self.inner.encode(text, false).map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::Tokenizer(format!("decode: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Every id that ends generation: the file's EOS and the end-of-turn tokens it marks special.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `other` can stand in for this tokenizer in speculative decoding (a draft model's
    /// must): the same vocabulary size, end-of-sequence ids and encoding of a sample text.
    pub fn interchangeable(&self, other: &Tokenizer) -> Result<bool> {
        let sample = "The quick brown fox, 42 times: \"héllo\"!\n";
        Ok(self.vocab == other.vocab
            && self.eos_ids == other.eos_ids
            && self.encode(sample)? == other.encode(sample)?)
    }

    /// Whether a plain prompt should get BOS prepended.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos_id.is_some()
    }

    /// The raw vocabulary piece (byte-level or "▁"-form, not decoded text).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the chat template the way HF `apply_chat_template` does (trim_blocks,
    /// lstrip_blocks, `raise_exception`, the common Python string methods).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.apply_chat_template_with(messages, add_generation_prompt, &ChatTemplateKwargs::new())
    }

    /// [`Tokenizer::apply_chat_template`] with extra template variables, as HF's keyword
    /// arguments (`{"enable_thinking": false}` turns Qwen3's thinking off).
    pub fn apply_chat_template_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &ChatTemplateKwargs,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::ChatTemplate("the model files carry no chat template".into()))?;
        let bos = self.bos_id.and_then(|id| self.token_str(id)).unwrap_or_default();
        let eos = self.eos_ids.first().and_then(|&id| self.token_str(id)).unwrap_or_default();
        chat::render(template, messages, add_generation_prompt, &bos, &eos, kwargs)
    }
}

/// Renders `template` as [`Tokenizer::apply_chat_template`] does, without a tokenizer (the fuzz
/// targets' entry point).
#[doc(hidden)]
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos: &str,
    eos: &str,
) -> Result<String> {
    chat::render(template, messages, add_generation_prompt, bos, eos, &ChatTemplateKwargs::new())
}

fn special_ids(inner: &tokenizers::Tokenizer) -> HashSet<u32> {
    inner
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect()
}

fn push_unique(v: &mut Vec<u32>, id: u32) {
    if !v.contains(&id) {
        v.push(id);
    }
}

/// tokenizer_config.json's chat_template: a string, or (older exports) a list of
/// `{name, template}` of which "default" is the one `apply_chat_template` uses.
fn template_from_json(v: &serde_json::Value) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_owned());
    }
    let list = v.as_array()?;
    let named = |n: &str| list.iter().find(|t| t.get("name").and_then(|x| x.as_str()) == Some(n));
    named("default")
        .or_else(|| list.first())
        .and_then(|t| t.get("template")?.as_str())
        .map(str::to_owned)
}

#[cfg(test)]
mod placeholder_tests {
    #[test]
    fn placeholder_round_trips_and_has_no_eos() {
        let tok = super::Tokenizer::placeholder(100).unwrap();
        assert!(tok.eos_ids().is_empty() && tok.bos_id().is_none());
        assert_eq!(tok.encode("<3> <99>").unwrap(), vec![3, 99]);
        assert_eq!(tok.decode(&[3, 99], true).unwrap(), "<3> <99>");
    }
}
