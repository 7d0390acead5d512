//! The browser engine's memory options and what the worker learns of a model before its
//! weights arrive (config.json, each weight file's size), turned into a
//! [`tandem_core::memory::PlanRequest`]. The arithmetic is [`tandem_core::memory`]'s.
use serde::Deserialize;
use tandem_core::memory::{parse_size, KvSize};

/// A size option: bytes as a number, or a string like "64MiB" ([`parse_size`]).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum Size {
    Bytes(f64),
    Text(String),
}

impl Size {
    /// Bytes, or an error that names `option`.
    pub fn bytes(&self, option: &str) -> Result<u64, String> {
        match self {
            Size::Bytes(n) if n.is_finite() && *n >= 1.0 => Ok(*n as u64),
            Size::Bytes(n) => Err(format!("{option} must be a positive number of bytes, not {n}")),
            Size::Text(s) => parse_size(s).map_err(|e| format!("{option}: {e}")),
        }
    }
}

/// TESTING ONLY: smaller GPU limits than the adapter's, to exercise the plans around them.
#[derive(Deserialize, Debug, Default, Clone, Copy)]
#[serde(default)]
pub struct DebugLimits {
    pub max_storage_buffer_binding_size: Option<u64>,
    pub max_buffer_size: Option<u64>,
}

impl DebugLimits {
    /// The largest binding under these limits, given the device's.
    pub fn cap(&self, device: u64) -> u64 {
        [self.max_storage_buffer_binding_size, self.max_buffer_size]
            .into_iter()
            .flatten()
            .fold(device, u64::min)
    }

    pub fn is_set(&self) -> bool {
        self.max_storage_buffer_binding_size.is_some() || self.max_buffer_size.is_some()
    }
}

/// What the worker knows before the weights (JSON to `Loader.plan`).
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Metadata {
    /// config.json's text; none for a GGUF file (its config is in its header).
    pub config: Option<String>,
    /// Every weight file (`*.safetensors`, `*.gguf`) with its size in bytes.
    pub files: Vec<FileSize>,
    /// What the worker could not learn and why (a GGUF header it could not read ahead), kept
    /// in the plan's notes.
    pub notes: Vec<String>,
}

#[derive(Deserialize, Debug)]
pub struct FileSize {
    pub name: String,
    pub size: Option<f64>,
}

impl Metadata {
    /// The weight files' bytes; an error names a file of unknown size.
    pub fn weights_bytes(&self) -> Result<u64, String> {
        self.files.iter().try_fold(0u64, |sum, f| match f.size {
            Some(n) if n.is_finite() && n >= 0.0 => Ok(sum + n as u64),
            _ => Err(format!(
                "the size of '{}' is unknown (its server sent no Content-Length), so the model's memory cannot be planned before it loads",
                f.name
            )),
        })
    }
}

/// How the options size the KV pool: `kvTokens` or `kvCacheMemory` (not both), else the
/// context's worth.
pub fn kv_size(kv_tokens: Option<usize>, kv_cache_memory: Option<&Size>) -> Result<KvSize, String> {
    match (kv_tokens, kv_cache_memory) {
        (Some(_), Some(_)) => Err("give kvTokens or kvCacheMemory, not both".into()),
        (Some(0), None) => Err("kvTokens must be at least 1".into()),
        (Some(n), None) => Ok(KvSize::Tokens(n)),
        (None, Some(m)) => Ok(KvSize::Bytes(m.bytes("kvCacheMemory")?)),
        (None, None) => Ok(KvSize::Default),
    }
}

/// `contextLength`, or its older name `context`; both must agree when both are given.
pub fn context(
    context: Option<usize>,
    context_length: Option<usize>,
) -> Result<Option<usize>, String> {
    match (context, context_length) {
        (Some(a), Some(b)) if a != b => {
            Err(format!("context ({a}) and contextLength ({b}) are one option: give one"))
        }
        (Some(0), _) | (_, Some(0)) => Err("contextLength must be at least 1".into()),
        (a, b) => Ok(b.or(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_numbers_or_strings() {
        let s: Size = serde_json::from_str("\"1MiB\"").unwrap();
        assert_eq!(s.bytes("kvCacheMemory"), Ok(1 << 20));
        let n: Size = serde_json::from_str("65536").unwrap();
        assert_eq!(n.bytes("memoryBudget"), Ok(65536));
        let bad: Size = serde_json::from_str("-3").unwrap();
        assert!(bad.bytes("memoryBudget").unwrap_err().contains("memoryBudget"));
    }

    #[test]
    fn kv_options_exclude_each_other() {
        assert_eq!(kv_size(None, None), Ok(KvSize::Default));
        assert_eq!(kv_size(Some(64), None), Ok(KvSize::Tokens(64)));
        assert_eq!(kv_size(None, Some(&Size::Text("2K".into()))), Ok(KvSize::Bytes(2048)));
        assert!(kv_size(Some(64), Some(&Size::Bytes(1e6))).is_err());
    }

    #[test]
    fn context_length_is_an_alias() {
        assert_eq!(context(Some(256), None), Ok(Some(256)));
        assert_eq!(context(None, Some(128)), Ok(Some(128)));
        assert_eq!(context(Some(128), Some(128)), Ok(Some(128)));
        assert!(context(Some(256), Some(128)).is_err());
    }

    #[test]
    fn weights_bytes_need_every_size() {
        let m: Metadata = serde_json::from_str(
            r#"{"files":[{"name":"a.safetensors","size":10},{"name":"b.safetensors","size":5}]}"#,
        )
        .unwrap();
        assert_eq!(m.weights_bytes(), Ok(15));
        assert!(m.notes.is_empty());
        let m: Metadata = serde_json::from_str(
            r#"{"files":[{"name":"a.gguf","size":7}],"notes":["no Range: size only"]}"#,
        )
        .unwrap();
        assert_eq!(
            (m.weights_bytes(), m.notes.as_slice()),
            (Ok(7), &["no Range: size only".to_string()][..])
        );
        let m: Metadata =
            serde_json::from_str(r#"{"files":[{"name":"a.gguf","size":null}]}"#).unwrap();
        assert!(m.weights_bytes().unwrap_err().contains("a.gguf"));
        assert_eq!(
            DebugLimits { max_storage_buffer_binding_size: Some(100), max_buffer_size: None }
                .cap(1000),
            100
        );
    }
}
