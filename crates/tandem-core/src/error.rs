//! The engine's error type. Anything a user can feed in (files, configs, prompts, parameters)
//! ends up as one of these variants, never as a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad model file {path}: {reason}")]
    BadModelFile { path: PathBuf, reason: String },
    #[error("bad config: {0}")]
    BadConfig(String),
    #[error(
        "unsupported architecture '{0}' (tandem runs the Llama family: llama, mistral, qwen2)"
    )]
    UnknownArchitecture(String),
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {got:?}, expected {expected:?}")]
    TensorShape { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("prompt has {prompt} tokens but the context holds {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("{op}: shape mismatch: expected {expected}, got {got}")]
    ShapeMismatch { op: &'static str, expected: String, got: String },
    #[error("backend {backend} does not support {op}")]
    Unsupported { backend: String, op: String },
    #[error("the request needs {tokens} tokens of context (prompt {prompt} + max_tokens {max_tokens}) but {what} holds {limit}")]
    RequestTooLarge {
        tokens: usize,
        prompt: usize,
        max_tokens: usize,
        limit: usize,
        what: &'static str,
    },
    #[error("out of KV cache blocks: need {need}, {free} free")]
    OutOfKvBlocks { need: usize, free: usize },
    #[error("backend {backend}: {reason}")]
    Backend { backend: String, reason: String },
    /// The GPU device is gone for good (a driver reset, `device.destroy()`): everything on it
    /// is lost, and only a new device with the model loaded again can run anything.
    #[error("backend {backend}: the GPU device was lost ({reason})")]
    DeviceLost { backend: String, reason: String },
    #[error("default model: {0}")]
    DefaultModel(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadModelFile { path: path.into(), reason: reason.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
