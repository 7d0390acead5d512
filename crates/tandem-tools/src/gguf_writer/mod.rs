//! A small GGUF v2/v3 writer, for tests (the loader's and the shared suite's): metadata of every
//! value type, tensors of F32 / F16 / BF16 / Q8_0 / Q4_0 / Q4_1 quantized in ggml's own block
//! format with ggml's reference rounding. Not a general-purpose converter; its one model
//! writer, [`write_llama_gguf`], exists so that synthetic weights (`tandem bench --synthetic
//! --write-gguf`) can be measured by llama.cpp on the same bytes.
//!
//! The container ([`GgufWriter`], here), ggml's block formats (`quantize`), tokenizer
//! vocabularies (`vocab`) and whole Llama models (`llama`).

mod llama;
mod quantize;
mod vocab;

pub use llama::{llama_gguf, permute_rows, write_llama_gguf};
pub use quantize::{ggml_bytes, quantize_ggml};
pub use vocab::{llama2c_vocab, placeholder_vocab, VocabArrays};

use std::io::Write;
use std::path::Path;
use tandem_core::loader::gguf::GgufValue;
use tandem_core::{Error, Result};

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

pub struct GgufWriter {
    pub version: u32,
    alignment: u64,
    kvs: Vec<(String, GgufValue)>,
    tensors: Vec<Tensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter { version: 3, alignment: 32, kvs: Vec::new(), tensors: Vec::new() }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the data alignment and writes `general.alignment`.
    pub fn alignment(&mut self, a: u64) -> &mut Self {
        self.alignment = a;
        self.kv("general.alignment", GgufValue::U32(a as u32))
    }

    pub fn kv(&mut self, key: &str, value: GgufValue) -> &mut Self {
        self.kvs.push((key.to_string(), value));
        self
    }

    /// Adds a tensor of HF `shape` (outermost first), quantized from `values` as ggml would.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ggml_type: u32,
        values: &[f32],
    ) -> &mut Self {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensor_raw(name, dims, ggml_type, quantize_ggml(values, ggml_type))
    }

    /// Adds a tensor with ggml-order `dims` and raw `data`, written as given (even if wrong).
    pub fn tensor_raw(
        &mut self,
        name: &str,
        dims: Vec<u64>,
        ggml_type: u32,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(Tensor { name: name.to_string(), dims, ggml_type, data });
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let entries: Vec<TensorEntry> = self
            .tensors
            .iter()
            .map(|t| TensorEntry {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
                n_bytes: t.data.len(),
            })
            .collect();
        let (mut out, offsets) = self.header(&entries);
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// Everything before the tensor data (magic, metadata, tensor directory, padding), and each
    /// tensor's offset from the data's start.
    fn header(&self, tensors: &[TensorEntry]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            write_string(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            write_value(&mut out, v);
        }
        let align = self.alignment.max(1) as usize;
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in tensors {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.n_bytes).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        (out, offsets)
    }

    /// Writes a file at `path` with this writer's metadata and the tensors of `entries` (not
    /// the ones added with [`GgufWriter::tensor`]), whose data `data(i)` makes when entry `i` is
    /// due, so a model larger than memory is written one tensor at a time. Returns its size.
    pub fn write_streamed(
        &self,
        entries: &[TensorEntry],
        path: &Path,
        mut data: impl FnMut(usize) -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let err = |e: std::io::Error| Error::io(path, e);
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
        let (header, offsets) = self.header(entries);
        out.write_all(&header).map_err(err)?;
        let mut at = 0usize;
        for (i, (t, off)) in entries.iter().zip(offsets).enumerate() {
            let bytes = data(i)?;
            if bytes.len() != t.n_bytes {
                return Err(Error::InvalidParameter(format!(
                    "tensor '{}': {} bytes made, {} announced",
                    t.name,
                    bytes.len(),
                    t.n_bytes
                )));
            }
            out.write_all(&vec![0u8; off - at]).map_err(err)?;
            out.write_all(&bytes).map_err(err)?;
            at = off + bytes.len();
        }
        out.flush().map_err(err)?;
        Ok((header.len() + at) as u64)
    }
}

/// A tensor's directory entry, for [`GgufWriter::write_streamed`].
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    /// ggml order: innermost first.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub n_bytes: usize,
}

/// The GGUF value type code of `v` (an empty array is written as an array of u8).
pub fn value_type(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

pub fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes the payload of `v` (no type code).
pub fn write_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => write_string(out, s),
        GgufValue::Array(items) => {
            let ty = items.first().map(value_type).unwrap_or(0);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                write_value(out, it);
            }
        }
    }
}
