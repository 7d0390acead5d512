//! safetensors reader (one or more shards), memory-mapped.
