//! GGUF v2/v3 reader: metadata, tensor directory, and tensor data through a memory map.
//!
//! Every count, length and offset in the header is checked against the bytes that remain
//! before anything is allocated or sliced, so a hostile header gives `BadModelFile`, not an
//! out-of-memory abort or a panic. The header parses on its own ([`GgufFile::parse_header`]),
//! for a stream that has not seen the tensor data yet (`loader::stream` finds where it ends).

use super::{Blob, TensorInfo};
use crate::config::ModelConfig;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

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

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
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

/// A ggml tensor type: `block` elements take `type_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    pub block: usize,
    pub type_size: usize,
}

pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_Q4_0: u32 = 2;
pub const GGML_Q4_1: u32 = 3;
pub const GGML_Q5_0: u32 = 6;
pub const GGML_Q5_1: u32 = 7;
pub const GGML_Q8_0: u32 = 8;
pub const GGML_Q2_K: u32 = 10;
pub const GGML_Q3_K: u32 = 11;
pub const GGML_Q4_K: u32 = 12;
pub const GGML_Q5_K: u32 = 13;
pub const GGML_Q6_K: u32 = 14;
pub const GGML_IQ4_NL: u32 = 20;
pub const GGML_IQ4_XS: u32 = 23;
pub const GGML_BF16: u32 = 30;

/// Every type ggml defines, so files with types tandem cannot load still open (for
/// `tandem inspect`) and their sizes can be bounds-checked; loading them is refused later.
pub fn ggml_type(id: u32) -> Option<GgmlType> {
    let (name, block, type_size) = match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    };
    Some(GgmlType { id, name, block, type_size })
}

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
        for (i, t) in tensors.iter().enumerate() {
            let hf = super::names::gguf_to_hf(&t.name);
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
        let mut cfg = self.header_config()?;
        if self.tensor(Self::ROPE_FREQS).is_some() {
            use super::TensorStore;
            let t = self.load(Self::ROPE_FREQS, super::LoadAs::F32)?;
            self.apply_rope_freqs(&mut cfg, &t)?;
        }
        Ok(cfg)
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
