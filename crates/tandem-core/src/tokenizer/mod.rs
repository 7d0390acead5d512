//! Tokenization (through the `tokenizers` crate), chat templates (minijinja) and incremental
//! detokenization for streaming.
