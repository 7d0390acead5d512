//! tandem's engine: everything that is not a backend.

pub mod backend;
#[cfg(not(target_arch = "wasm32"))]
pub mod cache;
pub mod config;
pub mod constraint;
pub mod dtype;
pub mod error;
pub mod generate;
pub mod kv;
pub mod loader;
pub mod lora;
pub mod memory;
pub mod model;
pub mod ops;
pub mod perplexity;
pub mod quant;
pub mod sampling;
pub mod scheduler;
pub mod tokenizer;
pub mod tools;

pub use backend::{check_op, Backend, BackendExt, BufId, BufInfo, Step, U32Shadow};
pub use config::{Arch, ModelConfig, RopeScaling};
pub use dtype::{DType, QuantLayout, QuantView, QBLOCK};
pub use error::{Error, Result};
pub use quant::kv::KvDtypes;
