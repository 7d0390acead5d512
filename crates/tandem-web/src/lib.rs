//! tandem in the browser: the engine compiled to WebAssembly, running on the page's WebGPU
//! (wgpu's browser backend) or, when there is none, on tandem's CPU backend compiled to wasm.
//!
//! The JS-facing [`wasm::Loader`] and [`wasm::Engine`] exist only in the wasm32 build;
//! everything they rely on (streaming a file set into the backend: `tandem_core::model::
//! ModelStream`; the requests of one engine batched through its scheduler, usage, the backend
//! enum) builds and is tested natively too. The npm package's JS layer (`js/`) wraps the
//! engine in a Web Worker and an OpenAI-shaped API; [`digest::Sha256`] is exported for its
//! checks of downloaded files.

pub mod backend;
#[cfg(all(target_arch = "wasm32", feature = "conformance"))]
pub mod conformance;
pub mod digest;
#[cfg(target_arch = "wasm32")]
mod lost;
pub mod plan;
pub mod session;
pub mod warm;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use backend::WebBackend;
pub use session::{Added, MemoryStats, ModelInfo, Output, Request, Session, Usage};
