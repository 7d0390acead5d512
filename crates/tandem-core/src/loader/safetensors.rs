//! safetensors reader (one or more shards), memory-mapped.
//!
//! The `safetensors` crate validates each header (size, JSON, contiguous offsets that match
//! shape x dtype, and that the data ends exactly at the end of the file); we keep its
//! metadata and slice the mapped bytes on `load`.

use super::{f32_tensor, Blob, HostTensor, LoadAs, TensorInfo, TensorStore};
use crate::dtype::DType;
use crate::{Error, Result};
use ::safetensors::tensor::{Dtype, SafeTensors, TensorInfo as StInfo};
use half::{bf16, f16};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    blob: Blob,
    /// 8 + header length: where tensor data offsets count from.
    data_start: usize,
}

pub struct SafetensorsStore {
    shards: Vec<Shard>,
    infos: Vec<TensorInfo>,
    /// name -> (shard index, the tensor's entry in that shard's header)
    index: HashMap<String, (usize, StInfo)>,
}

/// The safetensors files of an HF checkpoint directory: those named by
/// model.safetensors.index.json if present, else every *.safetensors file (sorted).
pub fn find_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&index_path, format!("bad JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::bad_file(&index_path, "no weight_map object"))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                // A shard name is a plain file name; anything else could point outside the model.
                .filter(|f| !f.is_empty() && !f.contains(['/', '\\']) && *f != "..")
                .ok_or_else(|| {
                    Error::bad_file(
                        &index_path,
                        format!("weight_map['{tensor}'] is not a shard file name"),
                    )
                })?;
            let p = dir.join(file);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(Error::bad_file(&index_path, "weight_map is empty"));
        }
        return Ok(files);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().is_some_and(|e| e == "safetensors") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::bad_file(
            dir,
            "no *.safetensors files (and no model.safetensors.index.json)",
        ));
    }
    Ok(files)
}

impl SafetensorsStore {
    /// Opens and validates the headers of `paths` (memory-mapped natively).
    pub fn open(paths: &[PathBuf]) -> Result<SafetensorsStore> {
        let mut shards = Vec::with_capacity(paths.len());
        for p in paths {
            shards.push((p.clone(), Blob::read(p)?));
        }
        Self::build(shards)
    }

    /// One shard already in memory (a browser fetch, a test). `label` names it in errors.
    pub fn from_bytes(label: &str, bytes: Vec<u8>) -> Result<SafetensorsStore> {
        Self::build(vec![(PathBuf::from(label), Blob::Owned(bytes))])
    }

    /// Several shards already in memory, as (file name, bytes).
    pub fn from_shards(shards: Vec<(String, Vec<u8>)>) -> Result<SafetensorsStore> {
        Self::build(
            shards
                .into_iter()
                .map(|(name, bytes)| (PathBuf::from(name), Blob::Owned(bytes)))
                .collect(),
        )
    }

    fn build(files: Vec<(PathBuf, Blob)>) -> Result<SafetensorsStore> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        let mut infos = Vec::new();
        for (path, blob) in files {
            let (header_len, meta) = SafeTensors::read_metadata(&blob)
                .map_err(|e| Error::bad_file(&path, format!("invalid safetensors: {e}")))?;
            let data_start = header_len
                .checked_add(8)
                .ok_or_else(|| Error::bad_file(&path, "header length overflows"))?;
            // Sorted for a stable `infos` order, whatever the header's JSON order.
            let mut tensors: Vec<(String, &StInfo)> = meta.tensors().into_iter().collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, info) in tensors {
                let bytes = info.data_offsets.1 - info.data_offsets.0;
                infos.push(TensorInfo {
                    name: name.clone(),
                    file_name: name.clone(),
                    shape: info.shape.clone(),
                    file_dtype: format!("{:?}", info.dtype),
                    bytes,
                });
                if index.insert(name.clone(), (shards.len(), info.clone())).is_some() {
                    return Err(Error::bad_file(
                        &path,
                        format!("tensor '{name}' also appears in another shard"),
                    ));
                }
            }
            shards.push(Shard { path, blob, data_start });
        }
        Ok(SafetensorsStore { shards, infos, index })
    }
}

impl TensorStore for SafetensorsStore {
    fn infos(&self) -> &[TensorInfo] {
        &self.infos
    }

    fn load(&self, name: &str, as_: LoadAs) -> Result<HostTensor> {
        let (shard_i, info) =
            self.index.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let shard = &self.shards[*shard_i];
        let bad =
            |reason: String| Error::bad_file(&shard.path, format!("tensor '{name}': {reason}"));
        let (s, e) = info.data_offsets;
        let raw = shard
            .data_start
            .checked_add(s)
            .zip(shard.data_start.checked_add(e))
            .and_then(|(a, b)| shard.blob.get(a..b))
            .ok_or_else(|| bad(format!("data offsets [{s}, {e}) out of range")))?;
        let tensor = convert(name, info, Cow::Borrowed(raw), as_, bad);
        shard.blob.done_with(raw);
        tensor
    }
}

/// The tensor `name` stored as `info` in `raw`, converted as `as_` asks. The one conversion
/// both the memory-mapped store and the stream (`loader::stream`) use.
pub(crate) fn convert(
    name: &str,
    info: &StInfo,
    raw: Cow<'_, [u8]>,
    as_: LoadAs,
    bad: impl Fn(String) -> Error,
) -> Result<HostTensor> {
    let shape = info.shape.clone();
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape overflows".into()))?;
    let elem = match info.dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        other => {
            return Err(bad(format!(
                "dtype {other:?} is not supported (tandem loads F32, F16, BF16)"
            )))
        }
    };
    if numel.checked_mul(elem) != Some(raw.len()) {
        return Err(bad(format!(
            "{} bytes stored, but shape {shape:?} of {:?} needs {numel} x {elem}",
            raw.len(),
            info.dtype
        )));
    }
    let native = if info.dtype == Dtype::F16 { DType::F16 } else { DType::F32 };
    let target = match as_ {
        LoadAs::F32 => DType::F32,
        LoadAs::Native => native,
        LoadAs::Exactly(DType::U32) => {
            return Err(Error::InvalidParameter(format!("cannot load '{name}' as u32")))
        }
        LoadAs::Exactly(d) => match crate::quant::encode_refusal(d, &shape) {
            Some(why) => {
                return Err(Error::InvalidParameter(format!(
                    "cannot quantize '{name}' to {d} at load time: {why}"
                )))
            }
            None => d,
        },
    };
    // Same type on both sides: copy the bytes (little-endian in the file and on the host).
    if (info.dtype, target) == (Dtype::F32, DType::F32) {
        return Ok(HostTensor { dtype: target, shape, bytes: raw.into_owned() });
    }
    if matches!((info.dtype, target), (Dtype::F16, DType::F16) | (Dtype::BF16, DType::BF16)) {
        let mut bytes = raw.into_owned();
        bytes.resize(target.storage_bytes(numel), 0);
        return Ok(HostTensor { dtype: target, shape, bytes });
    }
    let values: Vec<f32> = match info.dtype {
        Dtype::F32 => {
            raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        Dtype::F16 => {
            raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        _ => raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    };
    Ok(f32_tensor(shape, &values, target))
}
