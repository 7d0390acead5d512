//! GGUF v2/v3 reader: metadata, tensor directory, and tensor data through a memory map.
//!
//! Every count, length and offset in the header is checked against the bytes that remain
//! before anything is allocated or sliced, so a hostile header gives `BadModelFile`, not an
//! out-of-memory abort or a panic. The header parses on its own ([`GgufFile::parse_header`]),
//! for a stream that has not seen the tensor data yet (`loader::stream` finds where it ends).
//!
//! The metadata's values (`metadata`), ggml's tensor types (`ggml_types`), and the header's
//! bounds-checked parser with its limits (`header`); the file itself is here.

mod ggml_types;
mod header;
mod metadata;

pub use ggml_types::*;
pub(crate) use header::{
    check_magic_version, min_value_size, MAX_ARRAY_DEPTH, MAX_ARRAY_ELEMENTS, MAX_DIMS, MAX_KVS,
    MAX_TENSORS,
};
pub use metadata::{GgufMetadata, GgufMetadataExt, GgufValue};

use super::{Blob, TensorInfo};
use crate::config::ModelConfig;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// One entry of the tensor directory, as the file states it.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    /// The name inside the file ("blk.0.attn_q.weight").
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: usize,
    pub n_elements: usize,
    pub n_bytes: usize,
}

impl GgufTensor {
    /// Row-major shape, outermost first (HF order: a weight is [out, in]).
    pub fn shape(&self) -> Vec<usize> {
        // dims were checked to fit usize when the directory was read.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

pub struct GgufFile {
    pub version: u32,
    pub metadata: GgufMetadata,
    pub path: PathBuf,
    pub tensors: Vec<GgufTensor>,
    /// Absolute byte offset of the data section.
    pub data_offset: usize,
    pub(crate) infos: Vec<TensorInfo>,
    /// HF name -> index into `tensors`.
    pub(crate) by_name: HashMap<String, usize>,
    /// The whole file; `None` when only the header was parsed (a stream), so metadata, config
    /// and tokenizer work but tensor data must come from elsewhere.
    pub(crate) blob: Option<Blob>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// True if `bytes` starts with the GGUF magic.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(GGUF_MAGIC)
}

impl GgufFile {
    /// Opens and parses a GGUF file (memory-mapped natively). Tensor data is not touched.
    pub fn open(path: &Path) -> Result<GgufFile> {
        Self::parse(path.to_path_buf(), Blob::read(path)?)
    }

    /// Parses a GGUF image already in memory (a browser fetch, a test). `label` names it in errors.
    pub fn from_bytes(label: &str, bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(PathBuf::from(label), Blob::Owned(bytes))
    }

    fn parse(path: PathBuf, blob: Blob) -> Result<GgufFile> {
        let mut file = Self::parse_header(path, &blob, Some(blob.len() as u64))?;
        file.blob = Some(blob);
        Ok(file)
    }

    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata.get_str("general.architecture")
    }

    /// A tensor by its name inside the file.
    pub fn tensor(&self, file_name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == file_name)
    }

    /// The raw ggml bytes of `t` (offsets were checked on open).
    pub fn tensor_data(&self, t: &GgufTensor) -> Result<&[u8]> {
        let blob = self.blob.as_ref().ok_or_else(|| {
            Error::bad_file(
                &self.path,
                format!("tensor '{}': only the header of this file was read", t.name),
            )
        })?;
        self.data_offset
            .checked_add(t.offset)
            .and_then(|start| blob.get(start..start.checked_add(t.n_bytes)?))
            .ok_or_else(|| {
                Error::bad_file(&self.path, format!("tensor '{}': data out of range", t.name))
            })
    }

    /// Llama 3.1+ GGUFs store their rope scaling as per-frequency factors in this tensor, not
    /// in metadata; ignoring it would silently give wrong logits.
    pub const ROPE_FREQS: &'static str = "rope_freqs.weight";

    /// The model config: [`GgufFile::header_config`], with the rope scaling that
    /// [`GgufFile::ROPE_FREQS`] holds when the file has that tensor.
    pub fn model_config(&self) -> Result<ModelConfig> {
        use super::TensorStore;
        let mut cfg = self.header_config()?;
        if self.tensor(Self::ROPE_FREQS).is_some() {
            let t = self.load(Self::ROPE_FREQS, super::LoadAs::F32)?;
            self.apply_rope_freqs(&mut cfg, &t)?;
        }
        // Phi-3's LongRoPE factor lists are tensors.
        if let crate::RopeScaling::LongRope { .. } = cfg.rope_scaling {
            for name in Self::ROPE_FACTORS {
                let t = self.load(name, super::LoadAs::F32)?;
                self.apply_rope_factors(&mut cfg, name, &t)?;
            }
            cfg.validate()?;
        }
        Ok(cfg)
    }

    /// Phi-3's LongRoPE factor lists (short, long), which GGUF stores as tensors, not metadata.
    pub const ROPE_FACTORS: [&'static str; 2] =
        ["rope_factors_short.weight", "rope_factors_long.weight"];

    /// Puts the [`GgufFile::ROPE_FACTORS`] tensor `name` (loaded as F32) into `cfg`'s LongRoPE
    /// list; a config without LongRoPE has no use for it. `cfg` is validated by the caller once
    /// both lists are in.
    pub fn apply_rope_factors(
        &self,
        cfg: &mut ModelConfig,
        name: &str,
        t: &super::HostTensor,
    ) -> Result<()> {
        let crate::RopeScaling::LongRope { short, long, .. } = &mut cfg.rope_scaling else {
            return Ok(());
        };
        if t.dtype != crate::DType::F32 {
            return Err(Error::bad_file(
                &self.path,
                format!("{name}: expected f32 factors, got {}", t.dtype),
            ));
        }
        let list = if name == Self::ROPE_FACTORS[0] { short } else { long };
        *list = crate::quant::decode(&t.bytes, crate::DType::F32, t.shape.iter().product());
        Ok(())
    }

    /// What metadata and the tensor directory alone tell: [`ModelConfig::from_gguf`], tied
    /// embeddings when there is no `output.weight`, q/k/v biases when they exist. Everything
    /// but a [`GgufFile::ROPE_FREQS`] scaling, which a stream applies when that tensor arrives.
    pub fn header_config(&self) -> Result<ModelConfig> {
        let mut cfg = ModelConfig::from_gguf(&self.metadata)?;
        cfg.tie_embeddings = self.tensor("output.weight").is_none();
        cfg.qkv_bias |= self.tensor("blk.0.attn_q.bias").is_some();
        Ok(cfg)
    }

    /// Sets `cfg`'s rope scaling from the [`GgufFile::ROPE_FREQS`] tensor (loaded as F32).
    pub fn apply_rope_freqs(&self, cfg: &mut ModelConfig, t: &super::HostTensor) -> Result<()> {
        if t.dtype != crate::DType::F32 {
            return Err(Error::bad_file(
                &self.path,
                format!("{}: expected f32 factors, got {}", Self::ROPE_FREQS, t.dtype),
            ));
        }
        let factors: Vec<f32> =
            crate::quant::decode(&t.bytes, crate::DType::F32, t.shape.iter().product());
        let orig = self
            .metadata
            .get_u64(&format!(
                "{}.rope.scaling.original_context_length",
                self.architecture().unwrap_or("")
            ))
            .and_then(|n| usize::try_from(n).ok());
        cfg.rope_scaling = super::ggml::rope_scaling_from_factors(cfg, &factors, orig)?;
        cfg.validate()
    }
}
