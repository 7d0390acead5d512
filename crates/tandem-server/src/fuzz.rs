//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): each endpoint's request, from
//! its body's bytes to what the engine would be handed, through the same functions the routes
//! call, without a socket, an engine thread or a model's weights. Not part of the API.

use std::sync::Arc;

use tandem_core::generate::GenerateParams;
use tandem_core::tokenizer::Tokenizer;

use crate::api::{
    self, ChatRequest, Common, CompletionRequest, DetokenizeRequest, TokenizeRequest,
};
use crate::engine::Ready;
use crate::errors::ApiError;
use crate::logprobs::TokenNames;
use crate::ServerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Tokenize,
    Detokenize,
}

/// What a request became.
#[derive(Debug)]
pub enum Outcome {
    /// A generation: one (prompt, parameters) per choice, as the engine gets them.
    Job(Vec<(Vec<u32>, GenerateParams)>),
    /// `/tokenize`'s ids.
    Tokens(Vec<u32>),
    /// `/detokenize`'s text.
    Text(String),
}

/// A model as the HTTP side sees it (see [`Ready`]), with the default server settings.
pub struct Model {
    ready: Arc<Ready>,
    max_body_bytes: usize,
}

impl Model {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        context: usize,
        pool_tokens: usize,
        vocab: usize,
    ) -> Self {
        let names = Arc::new(TokenNames::new(tokenizer.clone()));
        let ready =
            Ready { tokenizer, context, pool_tokens, vocab, created: 0, names, config: None };
        Model { ready: Arc::new(ready), max_body_bytes: ServerConfig::default().max_body_bytes }
    }

    pub fn context(&self) -> usize {
        self.ready.context
    }

    pub fn pool_tokens(&self) -> usize {
        self.ready.pool_tokens
    }

    pub fn vocab(&self) -> usize {
        self.ready.vocab
    }

    /// `body` sent to `endpoint`: the outcome, or the error's HTTP status and message.
    pub fn request(&self, endpoint: Endpoint, body: &[u8]) -> Result<Outcome, (u16, String)> {
        self.run(endpoint, body).map_err(|e| (e.status.as_u16(), e.message))
    }

    fn run(&self, endpoint: Endpoint, body: &[u8]) -> Result<Outcome, ApiError> {
        if body.len() > self.max_body_bytes {
            return Err(ApiError::body_too_large(self.max_body_bytes));
        }
        let body = api::parse(body)?;
        let ready = &self.ready;
        Ok(match endpoint {
            Endpoint::Chat => {
                let (req, common): (ChatRequest, Common) =
                    (api::fields(&body)?, api::fields(&body)?);
                Outcome::Job(req.job(common, api::fields(&body)?, ready)?.choices)
            }
            Endpoint::Completions => {
                let (req, common): (CompletionRequest, Common) =
                    (api::fields(&body)?, api::fields(&body)?);
                Outcome::Job(req.job(common, api::fields(&body)?, ready)?.choices)
            }
            Endpoint::Tokenize => {
                Outcome::Tokens(api::fields::<TokenizeRequest>(&body)?.tokens(&ready.tokenizer)?)
            }
            Endpoint::Detokenize => {
                Outcome::Text(api::fields::<DetokenizeRequest>(&body)?.text(ready)?)
            }
        })
    }

    /// The bytes `/v1/...` responses give token `id` in their log-probabilities.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.ready.names.bytes(id)
    }
}
