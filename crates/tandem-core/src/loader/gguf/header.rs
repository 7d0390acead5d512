//! The GGUF header's parser: magic, version, metadata and the tensor directory, every count,
//! length and offset checked against the bytes that remain, under limits that also bound the
//! streaming scanner (`loader::gguf_scan`).

use super::{
    ggml_type, GgufFile, GgufMetadata, GgufMetadataExt, GgufTensor, GgufValue, GGUF_MAGIC,
};
use crate::loader::TensorInfo;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub(crate) const MAX_DIMS: u32 = 4;
/// Nested arrays are legal but unused by any model; a small cap stops a stack-exhausting file.
pub(crate) const MAX_ARRAY_DEPTH: u32 = 3;
/// Each parsed value costs ~32 bytes of memory however small it is in the file, so a file with
/// gigabytes of tensor data behind a huge u8 array could demand many times its size. Real
/// models hold ~1-2M array elements (a 256k vocab's tokens, scores, types, merges).
pub(crate) const MAX_ARRAY_ELEMENTS: usize = 1 << 25;
/// Far above any model (large MoE files have tens of thousands of tensors).
pub(crate) const MAX_TENSORS: usize = 1 << 20;
pub(crate) const MAX_KVS: usize = 1 << 20;

/// A bounds-checked little-endian cursor over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata array elements still allowed (see MAX_ARRAY_ELEMENTS).
    array_budget: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: String) -> Error {
        Error::bad_file(self.path, reason)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &dyn std::fmt::Display) -> Result<&'a [u8]> {
        let n_usize =
            usize::try_from(n).ok().filter(|&n| n <= self.remaining()).ok_or_else(|| {
                self.err(format!(
                    "truncated or corrupt: {what} needs {n} bytes at offset {} but only {} remain",
                    self.pos,
                    self.remaining()
                ))
            })?;
        let s = &self.buf[self.pos..self.pos + n_usize];
        self.pos += n_usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn std::fmt::Display) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn std::fmt::Display) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn std::fmt::Display) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn std::fmt::Display) -> Result<String> {
        let len = self.u64(what)?;
        let at = self.pos;
        let bytes = self.take(len, &format_args!("{what} (string of {len} bytes)"))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{what}: string at offset {at} is not UTF-8")))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what remains,
    /// before a loop or an allocation trusts `count`.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &dyn std::fmt::Display,
    ) -> Result<usize> {
        count
            .checked_mul(min_size)
            .filter(|&n| n <= self.remaining() as u64)
            .map(|_| count as usize)
            .ok_or_else(|| {
                self.err(format!(
                    "{what} claims {count} entries, impossible in the {} bytes that remain",
                    self.remaining()
                ))
            })
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue> {
        let what = format_args!("metadata value '{key}'");
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(
                        self.err(format!("metadata '{key}': bool byte {b} is neither 0 nor 1"))
                    )
                }
            },
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "metadata '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem_ty = self.u32(&what)?;
                let count = self.u64(&what)?;
                let min = min_value_size(elem_ty).ok_or_else(|| {
                    self.err(format!("metadata '{key}': unknown array element type {elem_ty}"))
                })?;
                let n = self.check_count(count, min, &format_args!("metadata array '{key}'"))?;
                self.array_budget = self.array_budget.checked_sub(n).ok_or_else(|| {
                    self.err(format!("metadata array '{key}' of {n} elements exceeds {MAX_ARRAY_ELEMENTS} array elements in total"))
                })?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            other => return Err(self.err(format!("metadata '{key}': unknown value type {other}"))),
        })
    }
}

/// The fewest bytes a value of type `ty` can occupy.
pub(crate) fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,  // length prefix
        9 => 12, // element type + count
        10..=12 => 8,
        _ => return None,
    })
}

/// Why a file starting with `magic` and `version` is not one tandem reads, if it is not.
pub(crate) fn check_magic_version(magic: [u8; 4], version: u32) -> std::result::Result<(), String> {
    if &magic != GGUF_MAGIC {
        return Err(format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"));
    }
    match version {
        2 | 3 => Ok(()),
        1 => {
            Err("GGUF v1 is not supported (32-bit counts); re-convert with a current llama.cpp"
                .into())
        }
        v if v.swap_bytes() <= 3 => Err(format!(
            "GGUF version {v}: a big-endian file? tandem reads little-endian GGUF v2/v3"
        )),
        v => Err(format!("unsupported GGUF version {v} (tandem reads v2 and v3)")),
    }
}

impl GgufFile {
    /// Parses the metadata and tensor directory from `header` (the file's first bytes, at
    /// least up to the end of the directory). With `file_len`,
    /// every tensor must lie inside the file; without it (a stream of unknown length) the
    /// stream checks that as the data arrives. The result holds no tensor data.
    pub fn parse_header(path: PathBuf, header: &[u8], file_len: Option<u64>) -> Result<GgufFile> {
        let mut r = Reader { buf: header, pos: 0, path: &path, array_budget: MAX_ARRAY_ELEMENTS };
        let magic = r.array::<4>(&"GGUF magic")?;
        let version = r.u32(&"version")?;
        check_magic_version(magic, version).map_err(|reason| r.err(reason))?;
        let tensor_count = r.u64(&"tensor count")?;
        let kv_count = r.u64(&"metadata count")?;
        // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor entry at
        // least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        let n_kv = r.check_count(kv_count, 13, &"metadata count")?;
        let n_tensors = r.check_count(tensor_count, 24, &"tensor count")?;
        if n_kv > MAX_KVS || n_tensors > MAX_TENSORS {
            return Err(r.err(format!(
                "{n_kv} metadata entries / {n_tensors} tensors: more than any model has"
            )));
        }

        let mut metadata = GgufMetadata::new();
        for i in 0..n_kv {
            let key = r.string(&format_args!("metadata key #{i}"))?;
            let ty = r.u32(&format_args!("type of metadata '{key}'"))?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.err(format!("duplicate metadata key '{key}'")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| r.err(format!("general.alignment = {v:?} is not a power of two")))?,
        };

        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format_args!("name of tensor #{i}"))?;
            let n_dims = r.u32(&format_args!("tensor '{name}'"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.err(format!(
                    "tensor '{name}': {n_dims} dimensions (ggml allows 1..={MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&format_args!("dims of tensor '{name}'"))?);
            }
            let ty = r.u32(&format_args!("type of tensor '{name}'"))?;
            let offset = r.u64(&format_args!("offset of tensor '{name}'"))?;
            raw.push((name, dims, ty, offset));
        }

        let data_offset = (r.pos as u64)
            .checked_next_multiple_of(alignment)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| r.err("data section offset overflows".into()))?;
        let data_len =
            file_len.map(|n| usize::try_from(n).unwrap_or(usize::MAX).saturating_sub(data_offset));

        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen = HashMap::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let bad = |reason: String| Error::bad_file(&path, format!("tensor '{name}': {reason}"));
            let ggml_type = ggml_type(ty).ok_or_else(|| bad(format!("unknown ggml type {ty}")))?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("dims {dims:?} overflow the element count")))?;
            if dims[0] % ggml_type.block as u64 != 0 {
                return Err(bad(format!(
                    "row length {} is not a multiple of the {} block size {}",
                    dims[0], ggml_type.name, ggml_type.block
                )));
            }
            let n_bytes = (n_elements / ggml_type.block)
                .checked_mul(ggml_type.type_size)
                .ok_or_else(|| bad("byte size overflows".into()))?;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let offset = usize::try_from(offset)
                .ok()
                .filter(|&o| o.checked_add(n_bytes).is_some_and(|end| data_len.is_none_or(|len| end <= len)))
                .ok_or_else(|| {
                    let len = data_len.map_or("unknown".into(), |n| n.to_string());
                    bad(format!("data [{offset}, +{n_bytes}) lies past the end of the data section ({len} bytes); truncated file?"))
                })?;
            // Without the file's length (a stream) nothing above bounds the offset: the
            // tensor's absolute end must still be a number.
            if data_offset.checked_add(offset).and_then(|s| s.checked_add(n_bytes)).is_none() {
                return Err(bad(format!("data [{offset}, +{n_bytes}) after the header at {data_offset} overflows the file offsets")));
            }
            if seen.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("appears twice in the tensor directory".into()));
            }
            tensors.push(GgufTensor { name, dims, ggml_type, offset, n_elements, n_bytes });
        }

        let mut infos = Vec::with_capacity(tensors.len());
        let mut by_name = HashMap::with_capacity(tensors.len());
        let arch = metadata.get_str("general.architecture");
        for (i, t) in tensors.iter().enumerate() {
            let hf = crate::loader::names::gguf_to_hf(&t.name, arch);
            if by_name.insert(hf.clone(), i).is_some() {
                return Err(Error::bad_file(&path, format!("two tensors map to the name '{hf}'")));
            }
            infos.push(TensorInfo {
                name: hf,
                file_name: t.name.clone(),
                shape: t.shape(),
                file_dtype: t.ggml_type.name.to_string(),
                bytes: t.n_bytes,
            });
        }
        Ok(GgufFile { version, metadata, path, tensors, data_offset, infos, by_name, blob: None })
    }
}
