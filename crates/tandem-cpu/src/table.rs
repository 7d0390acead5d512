//! Buffer storage and the checks every op runs before it touches data.
//!
//! Each buffer is a `Vec<u32>`, so every view (f32, u32, f16, bytes, quantized sections) is
//! 4-byte aligned and bytemuck can cast it without copies.

use std::collections::HashMap;

use half::f16;
use tandem_core::dtype::bf16_to_f32;
use tandem_core::quant::BlockView;
use tandem_core::{BufId, DType, Error, QuantView, Result, QBLOCK};

pub(crate) struct Buffer {
    pub dtype: DType,
    pub numel: usize,
    pub data: Vec<u32>,
    /// A Q8_0 / Q4 weight whose scales were all finite when last written (see
    /// [`Buffer::check_scales`]): the wasm kernels then convert them without the infinity and
    /// NaN cases. False until checked, and whenever the data may have changed since.
    finite_scales: bool,
}

impl Buffer {
    pub fn new(dtype: DType, numel: usize, data: Vec<u32>) -> Self {
        Buffer { dtype, numel, data, finite_scales: false }
    }

    /// Notes whether a Q8_0 / Q4 weight's scales are all finite, as the data is now.
    pub fn check_scales(&mut self) {
        self.finite_scales = matches!(self.dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
            && QuantView::new(self.dtype, self.numel, self.bytes()).scales_are_finite();
    }

    pub fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.data)
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.finite_scales = false;
        bytemuck::cast_slice_mut(&mut self.data)
    }
    /// The first `numel` elements as f32 (the caller checked the dtype).
    pub fn f32(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.data)[..self.numel]
    }
    pub fn f32_mut(&mut self) -> &mut [f32] {
        self.finite_scales = false;
        let n = self.numel;
        &mut bytemuck::cast_slice_mut(&mut self.data)[..n]
    }
    pub fn u32(&self) -> &[u32] {
        &self.data[..self.numel]
    }
    pub fn u32_mut(&mut self) -> &mut [u32] {
        self.finite_scales = false;
        let n = self.numel;
        &mut self.data[..n]
    }
    pub fn f16(&self) -> &[f16] {
        &bytemuck::cast_slice(&self.data)[..self.numel]
    }
    pub fn f16_mut(&mut self) -> &mut [f16] {
        self.finite_scales = false;
        let n = self.numel;
        &mut bytemuck::cast_slice_mut(&mut self.data)[..n]
    }
    /// A weight of any float or quantized dtype.
    pub fn weight(&self) -> Weight<'_> {
        match self.dtype {
            DType::F32 => Weight::F32(self.f32()),
            DType::F16 => Weight::F16(self.f16()),
            DType::BF16 => Weight::BF16(&bytemuck::cast_slice(&self.data)[..self.numel]),
            // The buffer holds exactly `storage_bytes(numel)` bytes, so the sections fit.
            q if q.block_layout().is_some() => {
                Weight::Blocks(BlockView::new(q, self.numel, self.bytes()))
            }
            q => Weight::Q(QuantView {
                finite_scales: self.finite_scales,
                ..QuantView::new(q, self.numel, self.bytes())
            }),
        }
    }
}

/// A read-only weight tensor; element `e` is its flat row-major index.
#[derive(Clone, Copy)]
pub(crate) enum Weight<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Raw bf16 bit patterns.
    BF16(&'a [u16]),
    Q(QuantView<'a>),
    /// A GGUF block type (Q4_K, Q6_K, ...).
    Blocks(BlockView<'a>),
}

impl<'a> Weight<'a> {
    /// Rows r0..r0 + rows of a [.., k] weight whose rows hold whole blocks (k a multiple of
    /// the dtype's `block_elems`): a weight of its own, as if stored alone.
    pub fn rows(self, r0: usize, rows: usize, k: usize) -> Weight<'a> {
        let (e0, e1) = (r0 * k, (r0 + rows) * k);
        match self {
            Weight::F32(w) => Weight::F32(&w[e0..e1]),
            Weight::F16(w) => Weight::F16(&w[e0..e1]),
            Weight::BF16(w) => Weight::BF16(&w[e0..e1]),
            Weight::Blocks(b) => {
                let (per, s) = (b.layout.elems, b.layout.stride);
                Weight::Blocks(BlockView { bytes: &b.bytes[e0 / per * s..e1 / per * s], ..b })
            }
            Weight::Q(q) => {
                let (b0, b1) = (e0 / QBLOCK, e1 / QBLOCK);
                let qs = match q.dtype {
                    DType::Q8_0 => &q.qs[e0..e1],
                    _ => &q.qs[e0 / 2..e1 / 2],
                };
                let m = if q.m.is_empty() { q.m } else { &q.m[b0..b1] };
                Weight::Q(QuantView { qs, d: &q.d[b0..b1], m, ..q })
            }
        }
    }

    /// The value of flat element `e`, as the reference computes it.
    #[inline]
    pub fn get(&self, e: usize) -> f32 {
        match self {
            Weight::F32(w) => w[e],
            Weight::F16(w) => w[e].to_f32(),
            Weight::BF16(w) => bf16_to_f32(w[e]),
            Weight::Q(q) => q.get(e),
            Weight::Blocks(b) => b.get(e),
        }
    }
}

#[derive(Default)]
pub(crate) struct Table {
    bufs: HashMap<BufId, Buffer>,
    next: u32,
    bytes: usize,
}

impl Table {
    pub fn insert(&mut self, b: Buffer) -> BufId {
        let id = BufId(self.next);
        self.next = self.next.wrapping_add(1);
        self.bytes += b.data.len() * 4;
        self.bufs.insert(id, b);
        id
    }
    pub fn remove(&mut self, id: BufId) {
        if let Some(b) = self.bufs.remove(&id) {
            self.bytes -= b.data.len() * 4;
        }
    }
    /// Checks buffer `id`'s scales after a write (see [`Buffer::check_scales`]).
    pub fn check_scales(&mut self, id: BufId) {
        if let Some(b) = self.bufs.get_mut(&id) {
            b.check_scales();
        }
    }
    pub fn get(&self, id: BufId) -> Option<&Buffer> {
        self.bufs.get(&id)
    }
    pub fn get_mut(&mut self, id: BufId) -> Option<&mut Buffer> {
        self.bufs.get_mut(&id)
    }
    pub fn allocated_bytes(&self) -> usize {
        self.bytes
    }

    /// Input `id` of an op that `Backend::execute` checked (allocated, of its dtype, large
    /// enough, not the op's output). An op's output is out of the table while the op runs, so
    /// an input aliasing it would show up here as missing.
    pub fn arg(&self, op: &'static str, role: &str, id: BufId) -> Result<&Buffer> {
        self.bufs.get(&id).ok_or_else(|| missing(op, role, id))
    }

    /// Takes output `id` of a checked op out of the table so it can be written while inputs
    /// are borrowed. The caller must [`Table::put`] it back, error or not.
    pub fn take_out(&mut self, op: &'static str, role: &str, id: BufId) -> Result<Buffer> {
        self.bufs.remove(&id).ok_or_else(|| missing(op, role, id))
    }

    pub fn put(&mut self, id: BufId, b: Buffer) {
        self.bufs.insert(id, b);
    }

    /// Runs `f` with output `id` of a checked op taken out of the table, putting it back
    /// whatever happens.
    pub fn with_out<R>(
        &mut self,
        op: &'static str,
        role: &str,
        id: BufId,
        f: impl FnOnce(&Table, &mut Buffer) -> Result<R>,
    ) -> Result<R> {
        let mut out = self.take_out(op, role, id)?;
        let r = f(self, &mut out);
        self.put(id, out);
        r
    }
}

fn missing(op: &'static str, role: &str, id: BufId) -> Error {
    Error::InvalidParameter(format!(
        "{op}: {role} is buffer {}, which is not allocated or is also this op's output",
        id.0
    ))
}
