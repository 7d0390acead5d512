//! tandem's engine: everything that is not a backend.

pub mod backend;
pub mod dtype;
pub mod error;
pub mod ops;
pub mod quant;

pub use backend::{Backend, BackendExt, BufId, Step};
pub use dtype::{DType, QuantLayout, QuantView, QBLOCK};
pub use error::{Error, Result};
