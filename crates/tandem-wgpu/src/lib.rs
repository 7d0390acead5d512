//! tandem on WebGPU: every op as a WGSL compute shader (`shaders/<op>.wgsl`) run through wgpu,
//! natively (Vulkan, Metal, DX12, lavapipe) and in the browser.
//!
//! A [`Step`] becomes one command encoder and one `queue.submit`: the step's uploads first,
//! then every op as a dispatch in one compute pass, with per-op parameters in a uniform arena
//! (one buffer, 256-byte slots, dynamic offsets) written once per step. The ranges the step
//! names for reading back are copied to mappable memory at its end, in the same submission;
//! [`Backend::read`] of one then only maps. Reads are async and never block in the browser.
//!
//! f16 data (weights, KV caches, quantization scales) is read as packed `u32` words with
//! `unpack2x16float`, which every WebGPU implementation runs; with `shader-f16` and
//! [`WgpuOptions::allow_f16`], f16 weight matrices use a native-f16 kernel instead.

// `is_multiple_of` is newer than the workspace's rust-version.
#![allow(clippy::manual_is_multiple_of)]

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tandem_core::ops::Op;
use tandem_core::{Backend, BufId, BufInfo, DType, Error, Result, Step};

mod buffers;
mod ops;
mod pipelines;

/// Every WGSL module the backend compiles, by shader name, as it compiles them (for the
/// validation test: some modules are two files).
#[doc(hidden)]
pub fn shader_modules() -> Vec<(String, &'static str)> {
    pipelines::Shader::ALL.iter().map(|s| (format!("{s:?}"), s.source())).collect()
}
mod lost;
mod readback;
mod step;

pub use lost::{DeviceWatch, Lost};

use buffers::{Entry, Gpu, Part, Table};
use pipelines::{Cache, PARAM_BYTES};

const NAME: &str = "wgpu";

/// How to pick and drive the adapter.
#[derive(Debug, Clone)]
pub struct WgpuOptions {
    /// Use native `shader-f16` where the adapter has it; `false` forces the packed-u32 path
    /// that browsers without shader-f16 run.
    pub allow_f16: bool,
    pub power_preference: wgpu::PowerPreference,
    /// Split weights (`alloc_weight`) as if storage bindings held at most this many bytes, so
    /// tests can force splitting with small tensors. Other buffers keep the device's limit.
    #[doc(hidden)]
    pub max_binding_override: Option<u64>,
    /// Which matrix-vector kernel decode rows take: `Some(true)` the row-per-invocation one (a
    /// CPU rasterizer's fastest), `Some(false)` the lanes-per-row one (a GPU's), `None` by the
    /// adapter's type. Tests run the GPU's kernel on lavapipe with `Some(false)`.
    #[doc(hidden)]
    pub row_matvec: Option<bool>,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            allow_f16: true,
            power_preference: wgpu::PowerPreference::HighPerformance,
            max_binding_override: None,
            row_matvec: None,
        }
    }
}

/// Counters for benchmarks: what crossed the bus and how often the queue was fed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WgpuStats {
    /// `queue.submit` calls: one per step, plus one per read of a range the step did not
    /// stage (`Step::read_back`).
    pub submissions: u64,
    pub steps: u64,
    pub dispatches: u64,
    pub readback_bytes: u64,
    /// Bytes uploaded by `write` and step writes (uniform arenas not counted).
    pub upload_bytes: u64,
    pub pipelines_created: u64,
    pub bind_groups_created: u64,
}

type ScopeFuture = Pin<Box<dyn Future<Output = Option<wgpu::Error>>>>;

pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    f16: bool,
    /// Largest storage binding (and so buffer) the kernels may see.
    max_binding: u64,
    /// Largest part of a split weight (`max_binding` unless overridden for tests).
    max_weight_part: u64,
    /// `WgpuOptions::row_matvec`.
    row_matvec: Option<bool>,
    table: Table,
    cache: Cache,
    /// The per-step uniform arena.
    arena: Gpu,
    /// Attention-decode partials (sized per step for its largest attention op).
    scratch: Gpu,
    /// Ad-hoc reads (ranges no step staged).
    staging: Option<wgpu::Buffer>,
    /// What the last step staged for reading (`Step::read_back`).
    step_staging: readback::StepStaging,
    align: u64,
    lost: lost::SharedLost,
    uncaptured: Arc<Mutex<Vec<String>>>,
    /// Error scopes that did not resolve at once (the browser resolves them later).
    pending: Vec<ScopeFuture>,
    stats: WgpuStats,
}

fn backend_err(reason: impl Into<String>) -> Error {
    Error::Backend { backend: NAME.into(), reason: reason.into() }
}

impl WgpuBackend {
    /// Picks an adapter and opens a device. No adapter, or one too limited, is an error that
    /// says why.
    pub async fn new(opts: WgpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: opts.power_preference,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(|e| backend_err(format!("no WebGPU adapter: {e}")))?;
        let info = adapter.get_info();
        let al = adapter.limits();
        // WebGPU's defaults (8 storage buffers a stage, 256 invocations, 16 KiB of workgroup
        // memory: what the kernels are written for), with the adapter's buffer sizes.
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: al.max_storage_buffer_binding_size,
            max_buffer_size: al.max_buffer_size,
            ..Default::default()
        };
        if !limits.check_limits(&al) {
            return Err(backend_err(format!(
                "adapter {} lacks WebGPU's default limits: {al:?}",
                info.name
            )));
        }
        let f16 = opts.allow_f16 && adapter.features().contains(wgpu::Features::SHADER_F16);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("tandem"),
                required_features: if f16 {
                    wgpu::Features::SHADER_F16
                } else {
                    wgpu::Features::empty()
                },
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| backend_err(format!("request_device on {}: {e}", info.name)))?;
        let lost = lost::watch_device(&device);
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let u = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            u.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));
        let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let max_weight_part = opts.max_binding_override.map_or(max_binding, |o| o.min(max_binding));
        let align = limits.min_uniform_buffer_offset_alignment.max(PARAM_BYTES as u32) as u64;
        let mut table = Table::default();
        let arena = Gpu {
            uid: table.uid(),
            buffer: Self::raw_buffer(
                &device,
                4096,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            ),
        };
        let scratch =
            Gpu { uid: table.uid(), buffer: Self::raw_buffer(&device, 256, storage_usage()) };
        Ok(WgpuBackend {
            device,
            queue,
            info,
            f16,
            max_binding,
            max_weight_part,
            row_matvec: opts.row_matvec,
            table,
            cache: Cache::default(),
            arena,
            scratch,
            staging: None,
            step_staging: Default::default(),
            align,
            lost,
            uncaptured,
            pending: Vec::new(),
            stats: WgpuStats::default(),
        })
    }

    /// The largest storage buffer one binding takes (the least of the device's
    /// maxStorageBufferBindingSize and maxBufferSize), in bytes.
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// Adapter name and graphics backend, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)".
    pub fn adapter_info(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// A handle that reports this backend's device loss (see [`DeviceWatch`]).
    pub fn watch(&self) -> DeviceWatch {
        DeviceWatch { device: self.device.clone(), state: self.lost.clone() }
    }

    /// Whether f16 weights run through the native shader-f16 kernel.
    pub fn uses_f16(&self) -> bool {
        self.f16
    }

    /// Whether decode rows take the row-per-invocation matrix-vector kernel: on a CPU
    /// rasterizer, unless the options chose (`WgpuOptions::row_matvec`).
    fn row_matvec(&self) -> bool {
        self.row_matvec.unwrap_or_else(|| self.is_software())
    }

    /// Whether the adapter is a CPU rasterizer (lavapipe, SwiftShader, WARP): correct but
    /// slower than tandem's own CPU backend, so `--backend auto` passes it over.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// How many buffers hold `buf` (more than one for a weight split across bindings).
    #[doc(hidden)]
    pub fn parts_of(&self, buf: BufId) -> usize {
        self.table.get(buf).map_or(0, |e| e.parts.len())
    }

    pub fn stats(&self) -> WgpuStats {
        WgpuStats {
            pipelines_created: self.cache.pipelines_created,
            bind_groups_created: self.cache.bind_groups_created,
            ..self.stats
        }
    }

    fn raw_buffer(device: &wgpu::Device, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    /// Device loss, errors outside any scope, and scopes that resolved since the last call.
    fn check_health(&mut self) -> Result<()> {
        if let Some(reason) = lost::reason(&self.lost) {
            return Err(Error::DeviceLost { backend: NAME.into(), reason });
        }
        let mut errors: Vec<String> =
            std::mem::take(&mut *self.uncaptured.lock().unwrap_or_else(|p| p.into_inner()));
        let mut cx = Context::from_waker(Waker::noop());
        self.pending.retain_mut(|f| match f.as_mut().poll(&mut cx) {
            Poll::Ready(Some(e)) => {
                errors.push(e.to_string());
                false
            }
            Poll::Ready(None) => false,
            Poll::Pending => true,
        });
        match errors.is_empty() {
            true => Ok(()),
            false => Err(backend_err(errors.join("; "))),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes. Natively the scopes resolve
    /// at once and an error comes back here; in the browser it comes back from the next call.
    fn scoped<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> Result<R> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f(self);
        let scopes: [ScopeFuture; 2] = [Box::pin(val.pop()), Box::pin(oom.pop())];
        let mut cx = Context::from_waker(Waker::noop());
        let mut errors = Vec::new();
        for mut s in scopes {
            match s.as_mut().poll(&mut cx) {
                Poll::Ready(Some(e)) => errors.push(e.to_string()),
                Poll::Ready(None) => {}
                Poll::Pending => self.pending.push(s),
            }
        }
        match errors.is_empty() {
            true => Ok(r),
            false => Err(backend_err(errors.join("; "))),
        }
    }

    fn create_storage(&mut self, bytes: u64) -> Result<Gpu> {
        if bytes > self.max_binding {
            return Err(backend_err(format!(
                "a buffer of {bytes} bytes exceeds the {} byte storage binding limit",
                self.max_binding
            )));
        }
        // Bindings may not be empty.
        let size = bytes.max(4).next_multiple_of(4);
        let buffer = self.scoped(|s| Self::raw_buffer(&s.device, size, storage_usage()))?;
        Ok(Gpu { uid: self.table.uid(), buffer })
    }

    fn grow_scratch(&mut self, floats: usize) -> Result<()> {
        // Saturating: an impossible size reaches create_storage, which says why it fails.
        let bytes = (floats as u64).saturating_mul(4).max(256);
        if self.scratch.buffer.size() >= bytes {
            return Ok(());
        }
        let grown = bytes.checked_next_power_of_two().unwrap_or(bytes);
        let new = self.create_storage(grown.min(self.max_binding.max(bytes)))?;
        let old = std::mem::replace(&mut self.scratch, new);
        self.cache.forget(&[old.uid]);
        Ok(())
    }

    fn upload(&mut self, id: BufId, offset: usize, bytes: &[u8]) -> Result<()> {
        let e = self
            .table
            .get(id)
            .ok_or_else(|| backend_err(format!("write to unknown buffer {}", id.0)))?;
        if offset.checked_add(bytes.len()).is_none_or(|end| end > e.bytes) {
            return Err(backend_err(format!(
                "write of {} bytes at {offset} into buffer {} of {} bytes",
                bytes.len(),
                id.0,
                e.bytes
            )));
        }
        if !offset.is_multiple_of(4) || (offset > 0 && !bytes.len().is_multiple_of(4)) {
            return Err(backend_err(format!(
                "a write into buffer {} at {offset} of {} bytes: offset and length are multiples of 4",
                id.0,
                bytes.len()
            )));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        // Borrowed where possible: a model's weights pass through here once each, and a copy
        // per tensor would grow the browser's wasm heap by the largest tensor for good.
        let writes: Vec<(wgpu::Buffer, Cow<[u8]>)> = match (e.parts.len(), e.shape) {
            (1, _) => vec![(e.parts[0].gpu.buffer.clone(), pad4(bytes))],
            (_, Some((rows, cols))) => {
                if bytes.len() != e.bytes || offset != 0 {
                    return Err(backend_err(format!(
                        "buffer {} is a weight split across bindings: write it whole ({} bytes), not {} bytes",
                        id.0,
                        e.bytes,
                        bytes.len()
                    )));
                }
                e.parts
                    .iter()
                    .map(|p| {
                        (
                            p.gpu.buffer.clone(),
                            Cow::Owned(buffers::part_bytes(
                                e.dtype,
                                bytes,
                                rows * cols,
                                cols,
                                p.row0,
                                p.rows,
                            )),
                        )
                    })
                    .collect()
            }
            _ => unreachable!("only weights are split"),
        };
        match offset {
            0 => self.table.shadow_write(id, bytes),
            _ => self.table.shadow_forget(id),
        }
        self.step_staging.forget(Some(id));
        self.stats.upload_bytes += bytes.len() as u64;
        for (buf, data) in writes {
            self.queue.write_buffer(&buf, offset as u64, &data);
        }
        Ok(())
    }

    fn alloc_entry(
        &mut self,
        dtype: DType,
        numel: usize,
        shape: Option<(usize, usize)>,
    ) -> Result<BufId> {
        self.check_health()?;
        if dtype.block_layout().is_some() && !is_weight_dtype(dtype) {
            // No kernel reads them yet; refusing here (rather than at the first step) stops a
            // model load before it uploads anything, with the reason.
            return Err(Error::Unsupported { backend: NAME.into(), op: format!("{dtype} weights (WebGPU reads the GGUF block types Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS; others run on the CPU backend)") });
        }
        let bytes = dtype.storage_bytes(numel);
        if bytes == 0 && numel > 0 {
            return Err(Error::InvalidParameter(format!(
                "cannot allocate {numel} elements of {dtype}"
            )));
        }
        let mut parts = Vec::new();
        match shape {
            Some((rows, cols)) if bytes as u64 > self.max_weight_part => {
                let per = buffers::rows_per_part(dtype, rows, cols, self.max_weight_part)
                    .ok_or_else(|| {
                        backend_err(format!(
                            "rows of {cols} {dtype} values do not fit a {} byte binding",
                            self.max_weight_part
                        ))
                    })?;
                let mut row0 = 0;
                while row0 < rows {
                    let r = per.min(rows - row0);
                    let gpu = self.create_storage(dtype.storage_bytes(r * cols) as u64)?;
                    parts.push(Part { gpu, row0, rows: r });
                    row0 += r;
                }
            }
            _ => {
                let gpu = self.create_storage(bytes as u64)?;
                parts.push(Part { gpu, row0: 0, rows: shape.map_or(numel, |s| s.0) });
            }
        }
        Ok(self.table.insert(Entry {
            dtype,
            numel,
            shape,
            parts,
            bytes,
            shadow: Default::default(),
        }))
    }
}

fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

/// write_buffer takes whole words; the tail of a buffer is padding anyway.
fn pad4(bytes: &[u8]) -> Cow<'_, [u8]> {
    if bytes.len() % 4 == 0 {
        return Cow::Borrowed(bytes);
    }
    let mut v = bytes.to_vec();
    v.resize(bytes.len().next_multiple_of(4), 0);
    Cow::Owned(v)
}

/// The weight types the kernels read: every weight type (each has a [`DType::kernel_code`]).
fn is_weight_dtype(d: DType) -> bool {
    d.is_weight()
}

/// The KV cache types kv_write stores and attention reads: f32, f16, q8_0, q4_0 and fp8, in
/// the K/V pairs of `KV_PAIRS`.
fn is_kv_pair(d: tandem_core::KvDtypes) -> bool {
    tandem_core::quant::kv::KV_PAIRS.contains(&d)
}

impl Backend for WgpuBackend {
    fn name(&self) -> String {
        NAME.into()
    }

    fn supports(&self, op: &Op) -> bool {
        match op {
            Op::Embed(o) => is_weight_dtype(o.dtype),
            Op::Matmul(o) => is_weight_dtype(o.wdtype),
            Op::MoeMatmul(o) => is_weight_dtype(o.wdtype),
            // Two f16 share a word: an odd row would need two invocations writing one word.
            // (A quantized row is whole blocks, checked by the engine.)
            Op::KvWrite(o) => {
                let f16 = o.kv_dtypes.k == DType::F16 || o.kv_dtypes.v == DType::F16;
                is_kv_pair(o.kv_dtypes) && (!f16 || (o.kv_heads * o.head_dim) % 2 == 0)
            }
            Op::Attention(o) => is_kv_pair(o.kv_dtypes) && o.head_dim <= ops::attention_hd_max(o),
            Op::RmsNorm(_)
            | Op::Rope(_)
            | Op::Swiglu(_)
            | Op::Geglu(_)
            | Op::Softcap(_)
            | Op::MoeRoute(_)
            | Op::MoeSum(_)
            | Op::Add(_)
            | Op::Argmax(_)
            | Op::Sample(_)
            | Op::MaskLogits(_)
            | Op::CopyRows(_)
            | Op::LoraShrink(_)
            | Op::LoraExpand(_) => true,
            // A run is rotated within one workgroup's tile.
            Op::Hadamard(o) => o.size <= ops::HADAMARD_TILE,
        }
    }

    fn alloc(&mut self, dtype: DType, numel: usize) -> Result<BufId> {
        self.alloc_entry(dtype, numel, None)
    }

    fn alloc_weight(&mut self, dtype: DType, rows: usize, cols: usize) -> Result<BufId> {
        let numel = rows.checked_mul(cols).ok_or_else(|| {
            Error::InvalidParameter(format!("weight [{rows}, {cols}] is too large"))
        })?;
        self.alloc_entry(dtype, numel, Some((rows, cols)))
    }

    fn write_at(&mut self, buf: BufId, offset: usize, bytes: &[u8]) -> Result<()> {
        self.check_health()?;
        self.upload(buf, offset, bytes)
    }

    fn free(&mut self, buf: BufId) {
        self.step_staging.forget(Some(buf));
        let uids = self.table.remove(buf);
        self.cache.forget(&uids);
    }

    fn buffer(&self, buf: BufId) -> Option<BufInfo> {
        self.table.get(buf).map(|e| BufInfo { dtype: e.dtype, numel: e.numel })
    }

    fn run(&mut self, step: &Step) -> Result<()> {
        self.check_health()?;
        self.run_step(step)
    }

    async fn read(&mut self, buf: BufId, offset: usize, len: usize) -> Result<Vec<u8>> {
        self.read_bytes(buf, offset, len).await
    }

    fn allocated_bytes(&self) -> usize {
        self.table.allocated_bytes()
    }
}
