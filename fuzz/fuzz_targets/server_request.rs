//! The server's request bodies for every endpoint, through the same parsing and validation the
//! routes run (no network): a 4xx with a message, or engine requests inside every limit.
//!
//! Input: [endpoint, model] then the body.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tandem_core::sampling::MAX_LOGPROBS;
use tandem_fuzz::tokenizers;
use tandem_server::fuzz::{Endpoint, Model, Outcome};

/// The byte-level tokenizer with a small context, the SentencePiece one with a larger one and
/// a KV pool smaller than that context.
fn models() -> &'static [Model; 2] {
    static MODELS: OnceLock<[Model; 2]> = OnceLock::new();
    MODELS.get_or_init(|| {
        let [a, b] = tokenizers();
        let model = |t: &Arc<_>, ctx, pool| {
            Model::new(Arc::clone(t), ctx, pool, tandem_core::tokenizer::Tokenizer::vocab_size(t))
        };
        [model(a, 64, 256), model(b, 4096, 1000)]
    })
}

fuzz_target!(|data: &[u8]| {
    let [e, m, body @ ..] = data else { return };
    let endpoint =
        [Endpoint::Chat, Endpoint::Completions, Endpoint::Tokenize, Endpoint::Detokenize]
            [*e as usize % 4];
    let model = &models()[*m as usize % 2];
    match model.request(endpoint, body) {
        Err((status, message)) => {
            assert!((400..500).contains(&status), "{status}: {message}");
            assert!(!message.is_empty());
        }
        Ok(Outcome::Job(choices)) => {
            assert!(!choices.is_empty() && choices.len() <= 128, "{} choices", choices.len());
            for (prompt, params) in &choices {
                assert!(prompt.len() <= model.context(), "a prompt of {} tokens", prompt.len());
                assert!(params.max_tokens >= 1);
                params.validate().expect("the server hands the engine valid parameters");
                assert!(params.sampling.logprobs.is_none_or(|n| n <= MAX_LOGPROBS));
            }
        }
        Ok(Outcome::Tokens(ids)) => {
            assert!(ids.iter().all(|&t| (t as usize) < model.vocab()), "{ids:?}");
            for &t in ids.iter().take(64) {
                let _ = model.token_bytes(t);
            }
        }
        Ok(Outcome::Text(_)) => {}
    }
});
