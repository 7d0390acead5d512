//! Opening model files: a directory of HF files (config.json + *.safetensors + tokenizer.json)
//! or a single GGUF file. Tensors come out in tandem's layout under their HF names
//! ("model.layers.3.self_attn.q_proj.weight"), whatever the file called them.

pub mod ggml;
pub mod gguf;
#[doc(hidden)]
pub mod gguf_scan;
pub mod names;
pub mod safetensors;
pub mod stream;

use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// The same files as `Files`, already in memory (a browser's inputs).
    Bytes {
        tokenizer_json: Vec<u8>,
        tokenizer_config: Option<Vec<u8>>,
        chat_template: Option<String>,
    },
    /// No tokenizer (synthetic weights); building one fails with this reason.
    None(String),
}

pub struct ModelSource {
    pub path: PathBuf,
    /// "safetensors" or "gguf vN".
    pub format: String,
    pub config: ModelConfig,
    pub tensors: Box<dyn TensorStore>,
    pub tokenizer: TokenizerSource,
}

impl<T: TensorStore + ?Sized> TensorStore for Arc<T> {
    fn infos(&self) -> &[TensorInfo] {
        (**self).infos()
    }
    fn load(&self, name: &str, as_: LoadAs) -> Result<HostTensor> {
        (**self).load(name, as_)
    }
}

/// The bytes of a model file: memory-mapped natively, owned where there is no mmap (wasm) or
/// when the caller already holds the bytes.
pub(crate) enum Blob {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Blob::Mapped(m) => m,
            Blob::Owned(v) => v,
        }
    }
}

impl Blob {
    pub(crate) fn read(path: &Path) -> Result<Blob> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the map is read-only and every offset into it is bounds-checked, so any
            // content is safe to read. Like every mmap-based loader we assume no other process
            // truncates the file while it is open (that would fault, not corrupt memory).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            Ok(Blob::Mapped(map))
        }
        #[cfg(target_arch = "wasm32")]
        {
            std::fs::read(path).map(Blob::Owned).map_err(|e| Error::io(path, e))
        }
    }
}

impl Blob {
    /// Tells the kernel that `bytes` (a slice of this blob) will not be read again soon, so a
    /// mapped file's pages stop counting against the process once a tensor has been copied to
    /// its backend: loading then peaks at one copy of the model, not two. Reading the range
    /// again later still works (the pages come back from the file).
    pub(crate) fn done_with(&self, bytes: &[u8]) {
        #[cfg(unix)]
        if let Blob::Mapped(map) = self {
            const PAGE: usize = 4096;
            let base = map.as_ptr() as usize;
            let start = (bytes.as_ptr() as usize).saturating_sub(base).next_multiple_of(PAGE);
            let end = ((bytes.as_ptr() as usize + bytes.len()).saturating_sub(base) / PAGE) * PAGE;
            if end > start && end <= map.len() {
                // SAFETY: the map is a read-only, file-backed shared mapping; dropping its pages
                // loses nothing (the kernel re-reads them from the file on the next access), and
                // the range lies inside the map.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = bytes;
    }
}

/// Builds a tensor of `dtype` from float values (`dtype` must be a float or quantized type).
pub(crate) fn f32_tensor(shape: Vec<usize>, values: &[f32], dtype: DType) -> HostTensor {
    HostTensor { dtype, shape, bytes: crate::quant::encode(values, dtype) }
}

/// Opens `path`: a directory with config.json + one or more *.safetensors + tokenizer.json,
/// or a .gguf file. Reads headers and metadata only; tensor data is read on `load`.
pub fn open(path: &Path) -> Result<ModelSource> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return open_hf_dir(path);
    }
    let mut magic = [0u8; 4];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        f.read(&mut magic).map_err(|e| Error::io(path, e))?
    };
    if gguf::is_gguf(&magic[..n]) {
        return source_from_gguf(gguf::GgufFile::open(path)?);
    }
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if file_name.ends_with(".safetensors")
        || file_name.ends_with(".safetensors.index.json")
        || file_name == "config.json"
    {
        // A file of an HF checkpoint: the model is its directory.
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return open_hf_dir(dir);
    }
    Err(Error::bad_file(path, "not a GGUF file (no GGUF magic) and not a model directory"))
}

/// A model from a GGUF image already in memory (a browser fetch). `label` names it in errors.
pub fn open_gguf_bytes(label: &str, bytes: Vec<u8>) -> Result<ModelSource> {
    source_from_gguf(gguf::GgufFile::from_bytes(label, bytes)?)
}

fn source_from_gguf(file: gguf::GgufFile) -> Result<ModelSource> {
    let config = file.model_config()?;
    let file = Arc::new(file);
    Ok(ModelSource {
        path: file.path.clone(),
        format: format!("gguf v{}", file.version),
        config,
        tensors: Box::new(file.clone()),
        tokenizer: TokenizerSource::Gguf(file),
    })
}

/// An HF checkpoint already in memory (a browser's File inputs or downloads).
pub struct HfBytes {
    pub config_json: String,
    pub generation_config_json: Option<String>,
    pub tokenizer_json: Vec<u8>,
    pub tokenizer_config_json: Option<Vec<u8>>,
    pub chat_template: Option<String>,
    /// (file name, bytes) of every *.safetensors shard.
    pub shards: Vec<(String, Vec<u8>)>,
}

/// A model from HF files in memory; see [`HfBytes`].
pub fn open_hf_bytes(files: HfBytes) -> Result<ModelSource> {
    let mut config = ModelConfig::from_hf_json(&files.config_json)?;
    if let Some(text) = &files.generation_config_json {
        merge_generation_eos_json(Path::new("generation_config.json"), text, &mut config)?;
    }
    if files.shards.is_empty() {
        return Err(Error::bad_file("model", "no *.safetensors file among the inputs"));
    }
    let store = safetensors::SafetensorsStore::from_shards(files.shards)?;
    Ok(ModelSource {
        path: PathBuf::from("model"),
        format: "safetensors".into(),
        config,
        tensors: Box::new(store),
        tokenizer: TokenizerSource::Bytes {
            tokenizer_json: files.tokenizer_json,
            tokenizer_config: files.tokenizer_config_json,
            chat_template: files.chat_template,
        },
    })
}

fn open_hf_dir(dir: &Path) -> Result<ModelSource> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut config = ModelConfig::from_hf_json(&text)?;
    merge_generation_eos(dir, &mut config)?;
    let tokenizer_json = dir.join("tokenizer.json");
    if !tokenizer_json.is_file() {
        return Err(Error::Tokenizer(format!("missing tokenizer.json in {}", dir.display())));
    }
    let tokenizer_config = Some(dir.join("tokenizer_config.json")).filter(|p| p.is_file());
    let shards = safetensors::find_shards(dir)?;
    let store = safetensors::SafetensorsStore::open(&shards)?;
    Ok(ModelSource {
        path: dir.to_path_buf(),
        format: "safetensors".into(),
        config,
        tensors: Box::new(store),
        tokenizer: TokenizerSource::Files { tokenizer_json, tokenizer_config },
    })
}

/// Chat checkpoints often list extra stop tokens only in generation_config.json (Llama 3's
/// <|eot_id|>); without them generation would run past the end of a turn.
fn merge_generation_eos(dir: &Path, config: &mut ModelConfig) -> Result<()> {
    let path = dir.join("generation_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    merge_generation_eos_json(&path, &text, config)
}

/// generation_config.json's `eos_token_id`s (in `text`) added to `config`'s.
#[doc(hidden)]
pub fn merge_generation_eos_json(path: &Path, text: &str, config: &mut ModelConfig) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::BadConfig(format!("{}: {e}", path.display())))?;
    let ids: Vec<u64> = match v.get("eos_token_id") {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).collect(),
        Some(x) => x.as_u64().into_iter().collect(),
        None => Vec::new(),
    };
    for id in ids {
        match u32::try_from(id) {
            Ok(id) if (id as usize) < config.vocab_size => {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
            _ => {
                return Err(Error::BadConfig(format!(
                    "{}: eos_token_id {id} is outside the vocabulary",
                    path.display()
                )))
            }
        }
    }
    Ok(())
}
