//! Push loaders: a model file's bytes arrive in chunks of any size (a network download, a
//! browser `File`), and each tensor is converted and handed to a [`TensorSink`] as soon as its
//! last byte has arrived, in file order.
//!
//! A stream holds the file's header while it is incomplete, then at most the one tensor being
//! assembled (a tensor that lies whole inside one chunk is converted straight from it), never
//! the file. So a model larger than any one buffer the platform allows (a browser's 2 GiB
//! ArrayBuffer) still loads, and its weights go to the backend as they come. Tensors the sink
//! does not want are skipped without being kept.

use super::gguf::GgufFile;
use super::gguf_scan::{size, HeaderScan};
use super::{safetensors, HostTensor, LoadAs, TensorInfo};
use crate::{Error, Result};
use ::safetensors::tensor::{Metadata, TensorInfo as StInfo};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most header bytes a stream buffers before it calls the file corrupt: far above any
/// real model's metadata (a 256k-token vocabulary with its merges is tens of MiB).
pub const DEFAULT_HEADER_LIMIT: usize = 512 << 20;

/// A file's header, once it has been read (before any of its tensors).
pub enum FileHeader {
    /// Metadata and tensor directory; no tensor data.
    Gguf(Arc<GgufFile>),
    /// The tensors of one safetensors shard, in file order.
    Safetensors(Vec<TensorInfo>),
}

/// Where a stream's tensors go.
pub trait TensorSink {
    /// Called once per file when its header is complete, before any of its tensors.
    fn begin(&mut self, _header: &FileHeader) -> Result<()> {
        Ok(())
    }
    /// Whether to assemble the tensor `name` (an HF name), and how to convert it. `None`
    /// skips its bytes.
    fn wants(&self, name: &str) -> Option<LoadAs>;
    /// A wanted tensor, complete and converted.
    fn put(&mut self, name: &str, tensor: HostTensor) -> Result<()>;
}

/// Where one tensor's bytes lie in the file, as absolute offsets.
struct Span {
    start: u64,
    end: u64,
    /// Index into the format's own tensor list.
    id: usize,
    /// The HF name the sink sees.
    name: String,
}

/// Converts the raw bytes of the format's tensor `id` as asked.
type Convert<'a> = dyn Fn(usize, Cow<'_, [u8]>, LoadAs) -> Result<HostTensor> + 'a;

enum Current {
    Skip,
    Take(LoadAs, Vec<u8>),
}

/// Walks the data section of a file as chunks pass, assembling wanted tensors.
struct Walker {
    path: PathBuf,
    spans: Vec<Span>,
    next: usize,
    /// Absolute offset of the next byte to arrive.
    pos: u64,
    current: Option<Current>,
    peak: usize,
    /// Whether the caller told the file's length (every span was checked to lie inside it).
    len_known: bool,
}

/// The first reservation for a tensor assembled from a stream of unknown length.
const GROW_FROM: usize = 1 << 20;

impl Walker {
    /// `spans` in any order; they must not overlap.
    fn new(mut spans: Vec<Span>, pos: u64, path: &Path, len_known: bool) -> Result<Walker> {
        spans.sort_by_key(|s| (s.start, s.end));
        for w in spans.windows(2) {
            if w[1].start < w[0].end {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "tensors '{}' and '{}' overlap in the file ([{}, {}) and [{}, {}))",
                        w[0].name, w[1].name, w[0].start, w[0].end, w[1].start, w[1].end
                    ),
                ));
            }
        }
        if let Some(first) = spans.first().filter(|s| s.start < pos) {
            return Err(Error::bad_file(
                path,
                format!("tensor '{}' starts inside the header", first.name),
            ));
        }
        Ok(Walker {
            path: path.to_path_buf(),
            spans,
            next: 0,
            pos,
            current: None,
            peak: 0,
            len_known,
        })
    }

    fn push(
        &mut self,
        mut chunk: &[u8],
        sink: &mut dyn TensorSink,
        convert: &Convert<'_>,
    ) -> Result<()> {
        loop {
            let Some(span) = self.spans.get(self.next) else {
                // Past the last tensor: padding or trailing bytes nobody reads.
                self.pos += chunk.len() as u64;
                return Ok(());
            };
            let (start, end, id) = (span.start, span.end, span.id);
            if self.pos < start {
                if chunk.is_empty() {
                    return Ok(());
                }
                let n = (start - self.pos).min(chunk.len() as u64) as usize;
                chunk = &chunk[n..];
                self.pos += n as u64;
                continue;
            }
            let len = (end - start) as usize;
            let need = (end - self.pos) as usize;
            let current = self.current.get_or_insert_with(|| match sink.wants(&span.name) {
                Some(as_) => Current::Take(as_, Vec::new()),
                None => Current::Skip,
            });
            if let Current::Take(as_, buf) = current {
                if buf.is_empty() && need == len && chunk.len() >= len {
                    // The whole tensor is in this chunk: convert it from there, no copy kept.
                    let t = convert(id, Cow::Borrowed(&chunk[..len]), *as_)?;
                    chunk = &chunk[len..];
                    self.pos += len as u64;
                    self.complete(sink, Some(t))?;
                    continue;
                }
                let add = need.min(chunk.len());
                if buf.capacity() < buf.len() + add {
                    // With the file's length known, the header was checked against it and the
                    // tensor's bytes are due: reserve them at once. Otherwise a corrupt size
                    // could claim terabytes, so grow with what arrives (doubling, capped at the
                    // size), and a lie costs only the bytes really sent.
                    let want = if self.len_known {
                        len
                    } else {
                        (buf.len() + add)
                            .max(buf.capacity().saturating_mul(2))
                            .max(GROW_FROM)
                            .min(len)
                    };
                    buf.try_reserve_exact(want - buf.len()).map_err(|_| {
                        Error::bad_file(
                            &self.path,
                            format!(
                                "tensor '{}' needs {len} bytes: out of memory (a corrupt file?)",
                                span.name
                            ),
                        )
                    })?;
                    self.peak = self.peak.max(buf.capacity());
                }
                buf.extend_from_slice(&chunk[..add]);
            }
            let n = need.min(chunk.len());
            chunk = &chunk[n..];
            self.pos += n as u64;
            if self.pos < end {
                return Ok(());
            }
            let t = match self.current.take() {
                Some(Current::Take(as_, buf)) => Some(convert(id, Cow::Owned(buf), as_)?),
                _ => None,
            };
            self.complete(sink, t)?;
        }
    }

    fn complete(&mut self, sink: &mut dyn TensorSink, t: Option<HostTensor>) -> Result<()> {
        let name = std::mem::take(&mut self.spans[self.next].name);
        self.current = None;
        self.next += 1;
        match t {
            Some(t) => sink.put(&name, t),
            None => Ok(()),
        }
    }

    /// Every tensor must have arrived whole.
    fn finish(&self, path: &Path) -> Result<()> {
        match self.spans.get(self.next) {
            None => Ok(()),
            Some(s) => Err(Error::bad_file(
                path,
                format!(
                    "truncated: the file ended at byte {} but tensor '{}' needs bytes [{}, {}) ({} of {} tensors complete)",
                    self.pos, s.name, s.start, s.end, self.next, self.spans.len()
                ),
            )),
        }
    }

    fn buffered(&self) -> usize {
        match &self.current {
            Some(Current::Take(_, buf)) => buf.capacity(),
            _ => 0,
        }
    }
}

/// What every stream does around its format: the declared length, failure, and peak memory.
struct Common {
    path: PathBuf,
    /// The file's size when the caller knows it; checked against what arrives.
    len: Option<u64>,
    received: u64,
    failed: bool,
    peak: usize,
}

impl Common {
    fn new(label: &str, len: Option<u64>) -> Common {
        Common { path: PathBuf::from(label), len, received: 0, failed: false, peak: 0 }
    }

    fn accept(&mut self, chunk: &[u8]) -> Result<()> {
        if self.failed {
            return Err(Error::bad_file(&self.path, "an earlier error stopped loading this file"));
        }
        self.received += chunk.len() as u64;
        match self.len {
            Some(len) if self.received > len => {
                self.failed = true;
                Err(Error::bad_file(
                    &self.path,
                    format!("more than the {len} bytes the file was said to have arrived"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn end(&self) -> Result<()> {
        match self.len {
            Some(len) if self.received < len => Err(Error::bad_file(
                &self.path,
                format!("truncated: the stream ended after {} of {len} bytes", self.received),
            )),
            _ => Ok(()),
        }
    }

    /// Runs `f`, remembering a failure so later pushes are refused.
    fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        self.failed |= r.is_err();
        r
    }
}

/// While a GGUF header is incomplete, a chunk goes into its buffer in pieces of at least this
/// size (or the buffer's size), so a large chunk is not copied whole into the header buffer.
const HEADER_PIECE: usize = 64 << 10;

enum GgufState {
    Header { buf: Vec<u8>, scan: HeaderScan },
    Data { file: Arc<GgufFile>, walker: Walker },
}

/// A GGUF file, pushed in chunks. See the module docs.
pub struct GgufStream {
    common: Common,
    state: GgufState,
}

impl GgufStream {
    /// `label` names the file in errors; `len` is its size if known.
    pub fn new(label: &str, len: Option<u64>) -> GgufStream {
        Self::with_header_limit(label, len, DEFAULT_HEADER_LIMIT)
    }

    /// As [`GgufStream::new`], refusing headers larger than `limit` bytes.
    pub fn with_header_limit(label: &str, len: Option<u64>, limit: usize) -> GgufStream {
        GgufStream {
            common: Common::new(label, len),
            state: GgufState::Header { buf: Vec::new(), scan: HeaderScan::new(len, limit) },
        }
    }

    /// The parsed header, once it has arrived.
    pub fn header(&self) -> Option<&Arc<GgufFile>> {
        match &self.state {
            GgufState::Data { file, .. } => Some(file),
            GgufState::Header { .. } => None,
        }
    }

    /// Feeds the next bytes of the file. Complete tensors go to `sink` before this returns.
    pub fn push(&mut self, chunk: &[u8], sink: &mut dyn TensorSink) -> Result<()> {
        self.common.accept(chunk)?;
        let r = self.push_inner(chunk, sink);
        self.common.guard(r)
    }

    fn push_inner(&mut self, mut chunk: &[u8], sink: &mut dyn TensorSink) -> Result<()> {
        while let GgufState::Header { buf, scan } = &mut self.state {
            if chunk.is_empty() {
                return Ok(());
            }
            // Pieces that grow with the buffer keep copying linear, and the buffer never holds
            // more than the header and the one chunk that completes it.
            let n = chunk.len().min(HEADER_PIECE.max(buf.len()));
            grow(buf, n, usize::MAX);
            buf.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            self.common.peak = self.common.peak.max(buf.capacity());
            let Some(header_len) = scan.advance(buf, &self.common.path)? else { continue };
            let file = GgufFile::parse_header(
                self.common.path.clone(),
                &buf[..header_len],
                self.common.len,
            )?;
            let file = Arc::new(file);
            let spans = file
                .tensors
                .iter()
                .enumerate()
                .map(|(id, t)| {
                    let start = (file.data_offset + t.offset) as u64;
                    Span {
                        start,
                        end: start + t.n_bytes as u64,
                        id,
                        name: file.infos[id].name.clone(),
                    }
                })
                .collect();
            let walker = Walker::new(
                spans,
                header_len as u64,
                &self.common.path,
                self.common.len.is_some(),
            )?;
            sink.begin(&FileHeader::Gguf(file.clone()))?;
            let rest = std::mem::take(buf);
            self.state = GgufState::Data { file, walker };
            self.push_data(&rest[header_len..], sink)?;
        }
        self.push_data(chunk, sink)
    }

    fn push_data(&mut self, chunk: &[u8], sink: &mut dyn TensorSink) -> Result<()> {
        let GgufState::Data { file, walker } = &mut self.state else { return Ok(()) };
        let convert = |id: usize, raw: Cow<'_, [u8]>, as_: LoadAs| {
            let t = &file.tensors[id];
            file.convert(t, &file.infos[id].name, raw, as_)
        };
        let r = walker.push(chunk, sink, &convert);
        self.common.peak = self.common.peak.max(walker.peak);
        r
    }

    /// The end of the file: every tensor must have arrived.
    pub fn finish(&self) -> Result<()> {
        self.common.end()?;
        match &self.state {
            GgufState::Header { buf, .. } => Err(Error::bad_file(
                &self.common.path,
                format!("truncated: the file ended after {} bytes, inside its header", buf.len()),
            )),
            GgufState::Data { walker, .. } => walker.finish(&self.common.path),
        }
    }

    /// The most bytes this stream has held at once (header buffer or tensor being assembled).
    pub fn peak_buffered(&self) -> usize {
        self.common.peak
    }

    /// Bytes held right now.
    pub fn buffered(&self) -> usize {
        match &self.state {
            GgufState::Header { buf, .. } => buf.capacity(),
            GgufState::Data { walker, .. } => walker.buffered(),
        }
    }
}

enum StState {
    /// The 8-byte little-endian header length, then the JSON header.
    Header { buf: Vec<u8> },
    /// `end`: where the header's data ends, which must be the end of the file.
    Data { tensors: Vec<(String, StInfo)>, walker: Walker, end: u64 },
}

/// One safetensors file (a shard), pushed in chunks. See the module docs.
pub struct SafetensorsStream {
    common: Common,
    limit: usize,
    state: StState,
}

impl SafetensorsStream {
    /// `label` names the file in errors; `len` is its size if known.
    pub fn new(label: &str, len: Option<u64>) -> SafetensorsStream {
        Self::with_header_limit(label, len, DEFAULT_HEADER_LIMIT)
    }

    /// As [`SafetensorsStream::new`], refusing headers larger than `limit` bytes.
    pub fn with_header_limit(label: &str, len: Option<u64>, limit: usize) -> SafetensorsStream {
        SafetensorsStream {
            common: Common::new(label, len),
            limit,
            state: StState::Header { buf: Vec::new() },
        }
    }

    /// Feeds the next bytes of the file. Complete tensors go to `sink` before this returns.
    pub fn push(&mut self, chunk: &[u8], sink: &mut dyn TensorSink) -> Result<()> {
        self.common.accept(chunk)?;
        let r = self.push_inner(chunk, sink);
        self.common.guard(r)
    }

    fn push_inner(&mut self, mut chunk: &[u8], sink: &mut dyn TensorSink) -> Result<()> {
        if let StState::Header { buf } = &mut self.state {
            let path = &self.common.path;
            let length_known = buf.len() >= 8;
            let want = if !length_known {
                8
            } else {
                let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                if n > self.limit as u64 {
                    return Err(Error::bad_file(
                        path,
                        format!("invalid safetensors: a {n}-byte header, more than the {} tandem accepts", size(self.limit)),
                    ));
                }
                if let Some(len) = self.common.len.filter(|&len| n + 8 > len) {
                    return Err(Error::bad_file(
                        path,
                        format!("invalid safetensors: a {n}-byte header in a {len}-byte file"),
                    ));
                }
                8 + n as usize
            };
            let n = (want - buf.len()).min(chunk.len());
            grow(buf, n, want);
            buf.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            self.common.peak = self.common.peak.max(buf.capacity());
            if buf.len() < want {
                return Ok(());
            }
            if !length_known {
                // The length is in: read on for the JSON. (Not `want == 8`: a header of length
                // 0 wants 8 bytes too, and looped here forever instead of failing to parse.)
                return self.push_inner(chunk, sink);
            }
            let (tensors, walker, end) = parse_st_header(&self.common, buf)?;
            sink.begin(&FileHeader::Safetensors(infos(&tensors)))?;
            self.state = StState::Data { tensors, walker, end };
        }
        let StState::Data { tensors, walker, .. } = &mut self.state else { return Ok(()) };
        let path = &self.common.path;
        let convert = |id: usize, raw: Cow<'_, [u8]>, as_: LoadAs| {
            let (name, info) = &tensors[id];
            safetensors::convert(name, info, raw, as_, |reason| {
                Error::bad_file(path, format!("tensor '{name}': {reason}"))
            })
        };
        let r = walker.push(chunk, sink, &convert);
        self.common.peak = self.common.peak.max(walker.peak);
        r
    }

    /// The end of the file: every tensor must have arrived.
    pub fn finish(&self) -> Result<()> {
        self.common.end()?;
        match &self.state {
            StState::Header { buf } => Err(Error::bad_file(
                &self.common.path,
                format!("truncated: the file ended after {} bytes, inside its header", buf.len()),
            )),
            StState::Data { walker, end, .. } => {
                walker.finish(&self.common.path)?;
                // Told the length, the header was checked against it; otherwise check here,
                // as the safetensors crate does for a whole file: bytes past the data are a
                // file this loader would refuse whole, not padding to ignore.
                if self.common.received != *end {
                    return Err(Error::bad_file(
                        &self.common.path,
                        format!("invalid safetensors: the data ends at byte {end} but the file has {} bytes", self.common.received),
                    ));
                }
                Ok(())
            }
        }
    }

    /// The most bytes this stream has held at once (header or tensor being assembled).
    pub fn peak_buffered(&self) -> usize {
        self.common.peak
    }
}

/// The tensors a safetensors header names, the walk over its data, and where the data starts.
type StHeader = (Vec<(String, StInfo)>, Walker, u64);

/// The JSON header (validated by the `safetensors` crate: known dtypes, contiguous offsets
/// that match each shape) and the walk over the data after it.
fn parse_st_header(common: &Common, buf: &[u8]) -> Result<StHeader> {
    let path = &common.path;
    let bad = |reason: String| Error::bad_file(path, format!("invalid safetensors: {reason}"));
    let text =
        std::str::from_utf8(&buf[8..]).map_err(|e| bad(format!("the header is not UTF-8: {e}")))?;
    let meta: Metadata = serde_json::from_str(text).map_err(|e| bad(format!("bad header: {e}")))?;
    let data_start = buf.len() as u64;
    if let Some(len) = common.len.filter(|&len| data_start + meta.data_len() as u64 != len) {
        return Err(bad(format!(
            "the header describes {} bytes of data but the file has {}",
            meta.data_len(),
            len - data_start
        )));
    }
    let tensors: Vec<(String, StInfo)> = meta
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = meta.info(&name).expect("a name from the same metadata").clone();
            (name, info)
        })
        .collect();
    let spans = tensors
        .iter()
        .enumerate()
        .map(|(id, (name, info))| Span {
            start: data_start + info.data_offsets.0 as u64,
            end: data_start + info.data_offsets.1 as u64,
            id,
            name: name.clone(),
        })
        .collect();
    let end = data_start + meta.data_len() as u64;
    Ok((tensors, Walker::new(spans, data_start, path, common.len.is_some())?, end))
}

fn infos(tensors: &[(String, StInfo)]) -> Vec<TensorInfo> {
    tensors
        .iter()
        .map(|(name, info)| TensorInfo {
            name: name.clone(),
            file_name: name.clone(),
            shape: info.shape.clone(),
            file_dtype: format!("{:?}", info.dtype),
            bytes: info.data_offsets.1 - info.data_offsets.0,
        })
        .collect()
}

/// Room for `add` more bytes in a header buffer: at least double the capacity (at most `cap`
/// in all) whenever it runs out. Growing by exactly each chunk reallocated on every push, so
/// a header trickling in a few bytes at a time copied itself quadratically (found by the
/// safetensors_stream fuzz target; tests/fuzz_regressions.rs keeps the case).
fn grow(buf: &mut Vec<u8>, add: usize, cap: usize) {
    if buf.capacity() - buf.len() < add {
        let target = (buf.len() + add).max(buf.capacity().saturating_mul(2).min(cap));
        buf.reserve_exact(target - buf.len());
    }
}
