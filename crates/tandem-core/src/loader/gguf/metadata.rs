//! GGUF metadata values and typed getters on them.

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

impl GgufValue {
    /// Any integer variant, if it fits (converters disagree on u32 vs i32 vs u64 for counts).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Floats, and integers too (a rope base of 10000 is sometimes stored as one).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Typed getters on metadata. `None` when the key is absent or its value does not convert.
pub trait GgufMetadataExt {
    fn get_str(&self, key: &str) -> Option<&str>;
    fn get_u64(&self, key: &str) -> Option<u64>;
    fn get_u32(&self, key: &str) -> Option<u32>;
    fn get_i64(&self, key: &str) -> Option<i64>;
    fn get_f32(&self, key: &str) -> Option<f32>;
    fn get_bool(&self, key: &str) -> Option<bool>;
    /// `None` if any element is not a string.
    fn get_str_array(&self, key: &str) -> Option<Vec<&str>>;
    fn get_f32_array(&self, key: &str) -> Option<Vec<f32>>;
    fn get_i32_array(&self, key: &str) -> Option<Vec<i32>>;
}

impl GgufMetadataExt for GgufMetadata {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
    fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }
    fn get_u32(&self, key: &str) -> Option<u32> {
        self.get_u64(key).and_then(|v| u32::try_from(v).ok())
    }
    fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }
    fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f64().map(|v| v as f32)
    }
    fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            GgufValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        match self.get(key)? {
            GgufValue::Array(a) => a.iter().map(GgufValue::as_str).collect(),
            _ => None,
        }
    }
    fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        match self.get(key)? {
            GgufValue::Array(a) => a.iter().map(|v| v.as_f64().map(|f| f as f32)).collect(),
            _ => None,
        }
    }
    fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        match self.get(key)? {
            GgufValue::Array(a) => {
                a.iter().map(|v| v.as_i64().and_then(|i| i32::try_from(i).ok())).collect()
            }
            _ => None,
        }
    }
}
