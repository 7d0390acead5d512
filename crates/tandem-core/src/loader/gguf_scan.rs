//! Where a GGUF header ends, found while its bytes are still arriving.
//!
//! GGUF does not state its header's length: the tensor data starts after the last directory
//! entry. A stream therefore walks the header's structure (lengths only, no values) as bytes
//! come in, resuming after the last complete item, and hands exactly the header to
//! [`GgufFile::parse_header`](super::gguf::GgufFile::parse_header) once. Walking is linear in
//! the header however small the chunks are; only an entry being read is ever looked at twice.

use super::gguf::{
    check_magic_version, min_value_size, MAX_ARRAY_DEPTH, MAX_ARRAY_ELEMENTS, MAX_DIMS, MAX_KVS,
    MAX_TENSORS,
};
use crate::{Error, ModelConfig, Result};
use std::path::Path;

/// Why a walk stopped short of the next item boundary.
enum Stop {
    /// The item ends at this many bytes from the start of the file.
    Need(u64),
    Bad(String),
}

type Step = std::result::Result<usize, Stop>;

#[derive(Debug, Clone, Copy)]
enum Stage {
    Preamble,
    /// `kvs` metadata entries to go, then `tensors` directory entries.
    Kvs {
        kvs: u64,
        tensors: u64,
    },
    /// Inside a metadata entry's array: `left` elements of type `elem` to go.
    Array {
        elem: u32,
        left: u64,
        kvs: u64,
        tensors: u64,
    },
    Tensors {
        left: u64,
    },
    Done,
}

/// The resumable walk: `pos` is the end of the last complete item.
pub struct HeaderScan {
    pos: usize,
    stage: Stage,
    file_len: Option<u64>,
    limit: usize,
}

fn take(buf: &[u8], at: usize, n: u64) -> Step {
    let end = (at as u64).saturating_add(n);
    if end <= buf.len() as u64 {
        Ok(end as usize)
    } else {
        Err(Stop::Need(end))
    }
}

fn u32_at(buf: &[u8], at: usize) -> std::result::Result<u32, Stop> {
    take(buf, at, 4)?;
    Ok(u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")))
}

fn u64_at(buf: &[u8], at: usize) -> std::result::Result<u64, Stop> {
    take(buf, at, 8)?;
    Ok(u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes")))
}

fn string(buf: &[u8], at: usize) -> Step {
    let len = u64_at(buf, at)?;
    take(buf, at + 8, len)
}

/// Bytes of a value of a fixed-size type.
fn fixed_size(ty: u32) -> Option<u64> {
    if matches!(ty, 8 | 9) {
        None
    } else {
        min_value_size(ty)
    }
}

/// The end of a value of type `ty` at `at`.
fn value(buf: &[u8], at: usize, ty: u32, depth: u32) -> Step {
    match ty {
        8 => string(buf, at),
        9 => {
            let (elem, count, start) = array_head(buf, at, depth)?;
            elements(buf, start, elem, count, depth + 1)
        }
        _ => match fixed_size(ty) {
            Some(n) => take(buf, at, n),
            None => Err(Stop::Bad(format!("metadata value of unknown type {ty} at offset {at}"))),
        },
    }
}

/// An array's element type, count, and where its elements start.
fn array_head(buf: &[u8], at: usize, depth: u32) -> std::result::Result<(u32, u64, usize), Stop> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(Stop::Bad(format!(
            "metadata arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {at}"
        )));
    }
    let (elem, count) = (u32_at(buf, at)?, u64_at(buf, at + 4)?);
    // The parser refuses as many elements in all arrays together; refusing one here saves a
    // stream of unknown length from buffering up to its header limit first.
    if count > MAX_ARRAY_ELEMENTS as u64 {
        return Err(Stop::Bad(format!("a metadata array of {count} elements at offset {at}, more than the {MAX_ARRAY_ELEMENTS} tandem accepts")));
    }
    Ok((elem, count, at + 12))
}

fn elements(buf: &[u8], mut at: usize, elem: u32, count: u64, depth: u32) -> Step {
    if let Some(size) = fixed_size(elem) {
        return take(buf, at, count.saturating_mul(size));
    }
    for _ in 0..count {
        at = value(buf, at, elem, depth)?;
    }
    Ok(at)
}

impl HeaderScan {
    /// `file_len`: the whole file's size when known; `limit`: the most header bytes to accept.
    pub fn new(file_len: Option<u64>, limit: usize) -> Self {
        HeaderScan { pos: 0, stage: Stage::Preamble, file_len, limit }
    }

    /// Walks on through `buf` (the file's first bytes, all those received so far). `Some(len)`
    /// once the header (the end of the tensor directory) lies within `buf`.
    pub fn advance(&mut self, buf: &[u8], path: &Path) -> Result<Option<usize>> {
        loop {
            if let Stage::Done = self.stage {
                return Ok(Some(self.pos));
            }
            match self.item(buf) {
                Ok((end, stage)) => {
                    self.check_need(end as u64, path)?;
                    self.pos = end;
                    self.stage = stage;
                }
                Err(Stop::Need(end)) => {
                    self.check_need(end, path)?;
                    return Ok(None);
                }
                Err(Stop::Bad(reason)) => return Err(Error::bad_file(path, reason)),
            }
        }
    }

    fn check_need(&self, end: u64, path: &Path) -> Result<()> {
        if let Some(len) = self.file_len.filter(|&len| end > len) {
            return Err(Error::bad_file(
                path,
                format!("truncated or corrupt: the header runs to byte {end} of a {len}-byte file"),
            ));
        }
        if end > self.limit as u64 {
            return Err(Error::bad_file(
                path,
                format!("the GGUF header would be at least {end} bytes, more than the {} tandem accepts (a corrupt file?)", size(self.limit)),
            ));
        }
        Ok(())
    }

    /// The next complete item at `self.pos`: its end and the stage after it.
    fn item(&self, buf: &[u8]) -> std::result::Result<(usize, Stage), Stop> {
        let at = self.pos;
        match self.stage {
            Stage::Preamble => {
                // Magic and version first, so that any other file fails on its first 8 bytes.
                let magic = buf.get(..4).ok_or(Stop::Need(4))?.try_into().expect("4 bytes");
                check_magic_version(magic, u32_at(buf, 4)?).map_err(Stop::Bad)?;
                let end = take(buf, at, 24)?;
                let tensors = u64_at(buf, 8)?;
                let kvs = u64_at(buf, 16)?;
                if kvs > MAX_KVS as u64 || tensors > MAX_TENSORS as u64 {
                    return Err(Stop::Bad(format!(
                        "{kvs} metadata entries / {tensors} tensors: more than any model has"
                    )));
                }
                Ok((end, Stage::Kvs { kvs, tensors }))
            }
            Stage::Kvs { kvs: 0, tensors } => Ok((at, Stage::Tensors { left: tensors })),
            Stage::Kvs { kvs, tensors } => {
                let key_end = string(buf, at)?;
                let ty = u32_at(buf, key_end)?;
                if ty == 9 {
                    let (elem, left, start) = array_head(buf, key_end + 4, 0)?;
                    return Ok((start, Stage::Array { elem, left, kvs: kvs - 1, tensors }));
                }
                Ok((value(buf, key_end + 4, ty, 0)?, Stage::Kvs { kvs: kvs - 1, tensors }))
            }
            Stage::Array { left: 0, kvs, tensors, .. } => Ok((at, Stage::Kvs { kvs, tensors })),
            Stage::Array { elem, left, kvs, tensors } => {
                if let Some(size) = fixed_size(elem) {
                    // As many whole elements as have arrived, at once (a vocabulary's scores).
                    let have = ((buf.len() - at) as u64 / size).min(left);
                    if have == 0 {
                        return Err(Stop::Need(at as u64 + size));
                    }
                    return Ok((
                        at + (have * size) as usize,
                        Stage::Array { elem, left: left - have, kvs, tensors },
                    ));
                }
                Ok((value(buf, at, elem, 1)?, Stage::Array { elem, left: left - 1, kvs, tensors }))
            }
            Stage::Tensors { left: 0 } => Ok((at, Stage::Done)),
            Stage::Tensors { left } => {
                let name_end = string(buf, at)?;
                let n_dims = u32_at(buf, name_end)?;
                if n_dims == 0 || n_dims > MAX_DIMS {
                    return Err(Stop::Bad(format!("a tensor with {n_dims} dimensions at offset {at} (ggml allows 1..={MAX_DIMS})")));
                }
                // dims, then the type (u32) and the data offset (u64).
                Ok((
                    take(buf, name_end + 4, 8 * n_dims as u64 + 12)?,
                    Stage::Tensors { left: left - 1 },
                ))
            }
            Stage::Done => Ok((at, Stage::Done)),
        }
    }
}

/// What a GGUF file's first bytes tell of its config ([`config_from_prefix`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PrefixConfig {
    /// The header lies within the prefix: its config (see [`GgufFile::header_config`]).
    ///
    /// [`GgufFile::header_config`]: super::gguf::GgufFile::header_config
    Config(Box<ModelConfig>),
    /// The header runs on past the prefix: read at least this many bytes from the file's start.
    Need(u64),
}

/// The config of a GGUF file from its first bytes, `prefix`, before its weights (a browser
/// plans memory with it): everything the metadata and tensor directory tell, not a
/// `rope_freqs.weight` scaling, which is tensor data and does not change the memory a model
/// takes. `file_len`: the whole file's size, when known; a header longer than `limit` bytes
/// (or than the file) is an error, as is anything that is not a GGUF header.
pub fn config_from_prefix(
    label: &str,
    prefix: &[u8],
    file_len: Option<u64>,
    limit: usize,
) -> Result<PrefixConfig> {
    let path = Path::new(label);
    let mut scan = HeaderScan::new(file_len, limit);
    let Some(len) = scan.advance(prefix, path)? else {
        // The scan stopped at an item it could not finish: the prefix must reach its end.
        let need = match scan.item(prefix) {
            Err(Stop::Need(end)) => end,
            _ => prefix.len() as u64 + 1,
        };
        return Ok(PrefixConfig::Need(need.max(prefix.len() as u64 + 1)));
    };
    let file = super::gguf::GgufFile::parse_header(path.to_path_buf(), &prefix[..len], file_len)?;
    Ok(PrefixConfig::Config(Box::new(file.header_config()?)))
}

/// "512 MiB", or a byte count below 1 MiB.
pub(crate) fn size(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}
