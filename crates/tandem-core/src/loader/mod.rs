//! Opening model files: a directory of HF files (config.json + *.safetensors + tokenizer.json)
//! or a single GGUF file. Tensors come out in tandem's layout under their HF names
//! ("model.layers.3.self_attn.q_proj.weight"), whatever the file called them.

pub mod gguf;
pub mod safetensors;

use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::Result;
use std::path::{Path, PathBuf};

/// A tensor converted to tandem's layout (see [`crate::dtype`]), ready to upload.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub dtype: DType,
    /// Row-major, outermost first (a linear layer's weight is [out, in]).
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// What the file holds, before any conversion (for `tandem inspect`).
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The HF name the engine uses.
    pub name: String,
    /// The name inside the file (equal to `name` for safetensors).
    pub file_name: String,
    pub shape: Vec<usize>,
    /// The file's type name: "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1".
    pub file_dtype: String,
    pub bytes: usize,
}

/// How to convert a tensor while loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadAs {
    /// Always f32 (norm weights, biases).
    F32,
    /// Keep the file's type: F32 stays F32, F16 stays F16, BF16 becomes F32, GGUF Q8_0, Q4_0
    /// and Q4_1 are repacked into tandem's blocks of the same type.
    Native,
    /// Convert to this type (dequantizing and requantizing if the file is quantized).
    Exactly(DType),
}

pub trait TensorStore {
    fn infos(&self) -> &[TensorInfo];
    /// Loads `name` (an HF name), converted as asked. Errors name the tensor: missing, bad
    /// offsets, truncated data, unsupported file dtype.
    fn load(&self, name: &str, as_: LoadAs) -> Result<HostTensor>;
}

/// Where the tokenizer comes from.
pub enum TokenizerSource {
    /// tokenizer.json, with tokenizer_config.json beside it when present.
    Files { tokenizer_json: PathBuf, tokenizer_config: Option<PathBuf> },
    /// Built from GGUF metadata.
    Gguf(std::sync::Arc<gguf::GgufFile>),
}

pub struct ModelSource {
    pub path: PathBuf,
    /// "safetensors" or "gguf vN".
    pub format: String,
    pub config: ModelConfig,
    pub tensors: Box<dyn TensorStore>,
    pub tokenizer: TokenizerSource,
}

/// Opens `path`: a directory with config.json + one or more *.safetensors + tokenizer.json,
/// or a .gguf file. Reads headers and metadata only; tensor data is read on `load`.
pub fn open(path: &Path) -> Result<ModelSource> {
    let _ = path;
    todo!("loader helper")
}
