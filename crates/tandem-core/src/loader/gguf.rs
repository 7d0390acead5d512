//! GGUF v2/v3 reader: metadata, tensor directory, and tensor data through a memory map.

use std::collections::BTreeMap;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

pub type GgufMetadata = BTreeMap<String, GgufValue>;

pub struct GgufFile {
    pub version: u32,
    pub metadata: GgufMetadata,
    // loader helper: tensor directory, data offset, mmap
}
