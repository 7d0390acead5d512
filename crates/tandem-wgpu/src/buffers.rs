//! Backend-owned buffers: one `wgpu::Buffer` per tensor, or several of whole rows for a weight
//! larger than one storage binding may be.
//!
//! Small u32 buffers (token ids, slots, block tables, positions, sampling parameters) keep a
//! host copy of what was last uploaded, so ops can check indices and parameters before encoding
//! (the CPU backend reports a bad id as an error; a GPU would silently read a clamped address).

use std::collections::HashMap;

use tandem_core::{BufId, DType, Error, Result, U32Shadow};

/// One wgpu buffer with an id unique for the backend's life (bind group cache keys).
#[derive(Clone)]
pub(crate) struct Gpu {
    pub uid: u64,
    pub buffer: wgpu::Buffer,
}

/// Rows row0..row0 + rows of a weight, in their own tandem layout of rows * cols elements.
pub(crate) struct Part {
    pub gpu: Gpu,
    pub row0: usize,
    pub rows: usize,
}

pub(crate) struct Entry {
    pub dtype: DType,
    pub numel: usize,
    /// [rows, cols] for weights from `alloc_weight`.
    pub shape: Option<(usize, usize)>,
    /// A single part (row0 0, all rows) unless the weight was split.
    pub parts: Vec<Part>,
    /// Bytes of the tensor in tandem's layout (what `write` and `read` address).
    pub bytes: usize,
    pub shadow: Shadow,
}

/// Host copies of small index uploads (see [`U32Shadow`]).
pub(crate) type Shadow = U32Shadow;

impl Entry {
    /// The one buffer of an unsplit tensor.
    pub fn whole(&self) -> Option<&Gpu> {
        match self.parts.as_slice() {
            [p] => Some(&p.gpu),
            _ => None,
        }
    }
}

#[derive(Default)]
pub(crate) struct Table {
    entries: HashMap<BufId, Entry>,
    next: u32,
    next_uid: u64,
    bytes: usize,
}

impl Table {
    pub fn uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    pub fn insert(&mut self, e: Entry) -> BufId {
        let id = BufId(self.next);
        self.next = self.next.wrapping_add(1);
        self.bytes += e.parts.iter().map(|p| p.gpu.buffer.size() as usize).sum::<usize>();
        self.entries.insert(id, e);
        id
    }

    /// Removes the entry; returns the uids of its wgpu buffers (to purge cached bind groups).
    pub fn remove(&mut self, id: BufId) -> Vec<u64> {
        match self.entries.remove(&id) {
            Some(e) => {
                self.bytes -= e.parts.iter().map(|p| p.gpu.buffer.size() as usize).sum::<usize>();
                e.parts.iter().map(|p| p.gpu.uid).collect()
            }
            None => vec![],
        }
    }

    pub fn get(&self, id: BufId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn allocated_bytes(&self) -> usize {
        self.bytes
    }

    /// Records an upload of `bytes` at the start of `id` in its host copy.
    pub fn shadow_write(&mut self, id: BufId, bytes: &[u8]) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.shadow.write(e.dtype, e.numel, bytes);
        }
    }

    /// The host copy is stale once a kernel writes the buffer.
    pub fn shadow_forget(&mut self, id: BufId) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.shadow.forget();
        }
    }

    /// A buffer of an op that `Backend::execute` checked (allocated, of its dtype, large
    /// enough), in one wgpu buffer unless `op` reads split weights (matmul, moe_matmul, embed).
    pub fn entry(&self, op: &'static str, role: &str, id: BufId) -> Result<&Entry> {
        let e = self.entries.get(&id).ok_or_else(|| {
            Error::InvalidParameter(format!(
                "{op}: {role} is buffer {}, which is not allocated",
                id.0
            ))
        })?;
        if e.parts.len() != 1 && !matches!(op, "matmul" | "moe_matmul" | "embed") {
            return Err(Error::ShapeMismatch {
                op,
                expected: format!("{role} in one buffer"),
                got: format!("a weight split into {} buffers", e.parts.len()),
            });
        }
        Ok(e)
    }
}

/// Rows per part for a [rows, cols] weight of `dtype` whose parts may hold at most `max_bytes`:
/// the most rows that fit, such that rows * cols is a multiple of 32 (each part then starts on
/// a quantization block and an f16 pair). `None` when not even that many rows fit.
pub(crate) fn rows_per_part(
    dtype: DType,
    rows: usize,
    cols: usize,
    max_bytes: u64,
) -> Option<usize> {
    if (dtype.storage_bytes(rows * cols) as u64) <= max_bytes {
        return Some(rows.max(1));
    }
    // Whole quantization blocks per part (32 elements, 256 for K-quants).
    let block = dtype.block_layout().map_or(32, |l| l.elems);
    let step = block / gcd(cols, block);
    let bytes_per_step = dtype.storage_bytes(step * cols) as u64;
    if bytes_per_step == 0 || bytes_per_step > max_bytes {
        return None;
    }
    // An estimate (section alignment makes storage_bytes slightly sub-linear), then exact steps.
    let fits = |r: usize| dtype.storage_bytes(r * cols) as u64 <= max_bytes;
    let mut r = ((max_bytes / bytes_per_step) as usize * step).max(step);
    while r > step && !fits(r) {
        r -= step;
    }
    while r + step <= rows && fits(r + step) {
        r += step;
    }
    Some(r.min(rows))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The bytes of part rows row0..row0 + rows, cut out of a whole [_, cols] tensor in tandem's
/// layout (`whole` holds all `numel` elements). row0 * cols is a multiple of 32.
pub(crate) fn part_bytes(
    dtype: DType,
    whole: &[u8],
    numel: usize,
    cols: usize,
    row0: usize,
    rows: usize,
) -> Vec<u8> {
    let e0 = row0 * cols;
    let cnt = rows * cols;
    let mut out = vec![0u8; dtype.storage_bytes(cnt)];
    match dtype {
        DType::F32 | DType::U32 => out[..cnt * 4].copy_from_slice(&whole[e0 * 4..(e0 + cnt) * 4]),
        DType::F16 | DType::BF16 => out[..cnt * 2].copy_from_slice(&whole[e0 * 2..(e0 + cnt) * 2]),
        q => {
            let src = q.quant_layout(numel).expect("quantized");
            let dst = q.quant_layout(cnt).expect("quantized");
            let (b0, nb) = (e0 / 32, dst.blocks);
            let qs_per_block = if q == DType::Q8_0 { 32 } else { 16 };
            let qs = nb * qs_per_block;
            out[..qs].copy_from_slice(&whole[b0 * qs_per_block..b0 * qs_per_block + qs]);
            out[dst.d_offset..dst.d_offset + nb * 2]
                .copy_from_slice(&whole[src.d_offset + b0 * 2..src.d_offset + (b0 + nb) * 2]);
            if q == DType::Q4_1 {
                out[dst.m_offset..dst.m_offset + nb * 2]
                    .copy_from_slice(&whole[src.m_offset + b0 * 2..src.m_offset + (b0 + nb) * 2]);
            }
        }
    }
    out
}
