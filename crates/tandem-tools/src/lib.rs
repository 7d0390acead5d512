//! Tooling around tandem's engine, for the command line, benchmarks and tests (the default
//! model and real tokenizers fetched into the cache, a GGUF writer, synthetic weights); the
//! engine itself (tandem-core) loads and runs models and never needs any of it.

#[cfg(not(target_arch = "wasm32"))]
pub mod default_model;
pub mod gguf_writer;
pub mod synthetic;
#[cfg(not(target_arch = "wasm32"))]
pub mod tokenizer_packages;
