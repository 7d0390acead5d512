//! tandem's engine: everything that is not a backend.

pub mod backend;
pub mod config;
pub mod dtype;
pub mod error;
pub mod loader;
pub mod ops;
pub mod quant;
pub mod tokenizer;

pub use backend::{Backend, BackendExt, BufId, Step};
pub use config::{Arch, ModelConfig, RopeScaling};
pub use dtype::{DType, QuantLayout, QuantView, QBLOCK};
pub use error::{Error, Result};
