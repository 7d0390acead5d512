//! tandem on NVIDIA GPUs: every op as a CUDA kernel (`kernels/<op>.cu`), compiled at run time
//! by NVRTC for the device's architecture, driven through cudarc with the driver library
//! loaded dynamically, so the crate builds and its callers run (reporting "CUDA not
//! available") on machines with no toolkit and no GPU.
//!
//! A [`Step`] runs on one stream with no synchronization inside it: the step's uploads are
//! copied from pinned staging memory, then its kernels are launched in order, then the
//! ranges it names for reading back are copied to pinned memory. A decode step (what changes
//! between tokens is data in the buffers it uploads, which the kernels read from device
//! memory) is captured as a CUDA graph once and replayed with a single launch while its kernel
//! launches stay the same (see graph.rs). [`Backend::read`] waits for the stream.

// `is_multiple_of` is newer than the workspace's rust-version.
#![allow(clippy::manual_is_multiple_of)]

use cudarc::driver::{result, sys};
use tandem_core::ops::Op;
use tandem_core::{Backend, BufId, BufInfo, DType, Error, Result, Step};

mod blas;
mod buffers;
mod device;
#[doc(hidden)]
pub mod emu;
mod graph;
pub mod kernels;
mod launch;
mod ops;
mod profile;
#[cfg(test)]
mod tests;

use buffers::{Entry, Table};
use device::{backend_err, driver_err, Device, Event, Pinned, NAME};
use graph::Graphs;
use launch::{Launch, Modules, Recorder};

/// Which GPU, and whether to use graphs.
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// The CUDA device ordinal.
    pub device: usize,
    /// Capture repeating steps as CUDA graphs (`TANDEM_CUDA_GRAPHS=0` turns the default off).
    pub graphs: bool,
    /// The prompt rows' products of bf16 and quantized weights on tensor cores through cuBLAS,
    /// where it is found (`TANDEM_CUDA_TENSOR_CORES=0` turns the default off).
    pub tensor_cores: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        let on = |var: &str| std::env::var(var).map_or(true, |v| v != "0");
        CudaOptions {
            device: 0,
            graphs: on("TANDEM_CUDA_GRAPHS"),
            tensor_cores: on("TANDEM_CUDA_TENSOR_CORES"),
        }
    }
}

/// Counters for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CudaStats {
    pub steps: u64,
    /// Kernels launched one by one (not through a graph).
    pub kernel_launches: u64,
    pub graph_captures: u64,
    pub graph_launches: u64,
    /// Bytes uploaded by `write` and step writes.
    pub upload_bytes: u64,
    pub readback_bytes: u64,
}

/// Whether CUDA can be used on this machine; `Err` says why not. Never panics.
pub fn available() -> std::result::Result<(), String> {
    device::probe().map_err(|e| e.to_string())
}

/// A range a step copied into pinned memory for reading back.
#[derive(Clone, Copy)]
struct Staged {
    buf: BufId,
    offset: usize,
    len: usize,
    at: usize,
}

/// The backend owns its context's handles and binds the context on every call, and driver
/// handles may be used from any thread, so it may move between threads.
// SAFETY: see above; nothing is shared between threads (every method takes &mut self).
unsafe impl Send for CudaBackend {}

pub struct CudaBackend {
    table: Table,
    modules: Modules,
    /// Reused per step: the recorded launches, kernel-written u32 buffers.
    launches: Vec<Launch>,
    written_u32: Vec<BufId>,
    /// Attention-decode partials and tensor-core operands (0 until a step needs them).
    scratch: sys::CUdeviceptr,
    scratch_bytes: usize,
    /// Pinned staging of step uploads, and the event after the last step's copies from it.
    upload: Pinned,
    upload_done: Event,
    /// Pinned staging of the last step's read-back ranges.
    readback: Pinned,
    staged: Vec<Staged>,
    graphs: Graphs,
    stats: CudaStats,
    profile: Option<profile::Profile>,
    /// cuBLAS for tensor-core products, or why there is none.
    blas: std::result::Result<blas::Blas, String>,
    /// Last: the context outlives everything above.
    dev: Device,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl CudaBackend {
    /// Opens a GPU. No driver, no GPU, an architecture older than sm_70 or no NVRTC is an
    /// error that says which.
    pub fn new(opts: CudaOptions) -> Result<Self> {
        let dev = Device::open(opts.device)?;
        let mut backend = CudaBackend {
            table: Table::default(),
            modules: Modules::default(),
            launches: Vec::new(),
            written_u32: Vec::new(),
            scratch: 0,
            scratch_bytes: 0,
            upload: Pinned::new(1 << 16)?,
            upload_done: Event::new()?,
            readback: Pinned::new(1 << 16)?,
            staged: Vec::new(),
            graphs: Graphs::new(opts.graphs && !profile::Profile::wanted()),
            stats: CudaStats::default(),
            profile: profile::Profile::wanted().then(Default::default),
            blas: Err("tensor cores not enabled".into()),
            dev,
        };
        if opts.tensor_cores {
            backend.blas = blas::Blas::open(&backend.dev)?;
        }
        // Compile (or load from the disk cache) the kernels every model step uses, so that a
        // broken toolchain fails here rather than at the first token.
        backend.warm_up()?;
        Ok(backend)
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn device_name(&self) -> String {
        let how = if self.dev.arch.cubin { "" } else { " as PTX" };
        let tc = match &self.blas {
            Ok(_) => "prompt products on tensor cores (cuBLAS)".to_string(),
            Err(why) => why.clone(),
        };
        format!(
            "{} (sm_{}{}, kernels for {}{how}; {tc})",
            self.dev.name, self.dev.cc.0, self.dev.cc.1, self.dev.arch.name
        )
    }

    pub fn stats(&self) -> CudaStats {
        self.stats
    }

    /// Graphs currently kept, and why capture was turned off if it was.
    pub fn graph_status(&self) -> (usize, Option<String>) {
        (self.graphs.len(), self.graphs.disabled.clone())
    }

    fn warm_up(&mut self) -> Result<()> {
        use kernels::KernelFile as K;
        for (file, entry) in [
            (K::Embed, "embed_f32"),
            (K::RmsNorm, "rms_norm"),
            (K::MatmulDecode, "matmul_decode_f32"),
            (K::Add, "add"),
        ] {
            self.modules.func(&self.dev.arch, file, entry)?;
        }
        Ok(())
    }

    fn entry(&self, id: BufId, what: &str) -> Result<&Entry> {
        self.table.get(id).ok_or_else(|| backend_err(format!("{what} unknown buffer {}", id.0)))
    }

    /// Grows the scratch for a step; moving it invalidates graphs.
    fn ensure_scratch(&mut self, scratch_bytes: usize) -> Result<()> {
        if scratch_bytes > self.scratch_bytes {
            let n = scratch_bytes.next_power_of_two();
            let new = self.dev.alloc_zeroed(n)?;
            if self.scratch != 0 {
                self.dev.free(self.scratch);
            }
            self.graphs.clear();
            (self.scratch, self.scratch_bytes) = (new, n);
        }
        Ok(())
    }

    fn run_step(&mut self, step: &Step) -> Result<()> {
        for (id, bytes) in &step.writes {
            let e = self.entry(*id, "step write to")?;
            if bytes.len() > e.bytes {
                return Err(backend_err(format!(
                    "write of {} bytes into buffer {} of {} bytes",
                    bytes.len(),
                    id.0,
                    e.bytes
                )));
            }
        }
        self.ensure_scratch(ops::scratch_bytes(&step.ops, self.blas.is_ok()))?;
        // Index checks see this step's ids, slots, positions, block tables and parameters.
        for (id, bytes) in &step.writes {
            self.table.shadow_write(*id, bytes);
        }
        self.staged.clear();
        self.launches.clear();
        self.written_u32.clear();
        let mut rec = Recorder {
            table: &self.table,
            modules: Some(&mut self.modules),
            arch: &self.dev.arch,
            out: &mut self.launches,
            scratch: self.scratch,
            blas: self.blas.as_ref().ok().map(|b| b.handle()),
            written_u32: &mut self.written_u32,
        };
        ops::record_all(&mut rec, &step.ops, &step.groups)?;
        for id in &self.written_u32 {
            self.table.shadow_forget(*id);
        }
        self.stage_uploads(step)?;
        self.launch_all(&step.ops)?;
        self.stage_read_back(&step.read_back)?;
        self.stats.steps += 1;
        Ok(())
    }

    /// Copies the step's writes into pinned memory and queues their uploads.
    fn stage_uploads(&mut self, step: &Step) -> Result<()> {
        let stream = self.dev.cu_stream();
        // The previous step's copies out of the staging memory must be done before reuse.
        self.upload_done.wait()?;
        let total = step.writes.iter().map(|(_, b)| align4(b.len())).sum::<usize>();
        if total > self.upload.len() {
            self.upload = Pinned::new(total.next_power_of_two())?;
        }
        let mut at = 0;
        let staging = self.upload.as_mut_slice();
        let mut copies = |dst: sys::CUdeviceptr, bytes: &[u8], at: &mut usize| -> Result<()> {
            if bytes.is_empty() {
                return Ok(());
            }
            staging[*at..*at + bytes.len()].copy_from_slice(bytes);
            // SAFETY: dst holds at least bytes.len() bytes (checked above); the pinned source
            // stays untouched until upload_done (recorded after these copies) has passed.
            unsafe { result::memcpy_htod_async(dst, &staging[*at..*at + bytes.len()], stream) }
                .map_err(|e| driver_err("uploading step inputs", e))?;
            *at += align4(bytes.len());
            Ok(())
        };
        for (id, bytes) in &step.writes {
            let dst = self.table.get(*id).expect("checked in run_step").ptr;
            copies(dst, bytes, &mut at)?;
            self.stats.upload_bytes += bytes.len() as u64;
        }
        self.upload_done.record(stream)
    }

    /// Launches the recorded kernels of `ops`: through a kept graph if they match one, by
    /// capturing one for a decode step or a repeat of the previous step, else one by one.
    fn launch_all(&mut self, ops: &[Op]) -> Result<()> {
        let stream = self.dev.cu_stream();
        if self.graphs.enabled && self.graphs.disabled.is_none() {
            let repeats = self.graphs.repeats(&self.launches);
            if let Some(exec) = self.graphs.find(&self.launches) {
                self.stats.graph_launches += 1;
                return Graphs::launch(exec, stream);
            }
            if (repeats || graph::decode_step(ops)) && !self.launches.is_empty() {
                match self.graphs.capture(stream, &self.launches) {
                    Ok(exec) => {
                        self.stats.graph_captures += 1;
                        self.stats.graph_launches += 1;
                        return Graphs::launch(exec, stream);
                    }
                    // Run this and every later step without graphs, and say why in graph_status.
                    Err(e) => self.graphs.disabled = Some(e.to_string()),
                }
            }
        }
        if let Some(p) = &mut self.profile {
            let dev = &self.dev;
            p.run(&self.launches, stream, || dev.sync())?;
        } else {
            for l in &self.launches {
                l.enqueue(stream)?;
            }
        }
        self.stats.kernel_launches += self.launches.len() as u64;
        Ok(())
    }

    /// Queues copies of the step's read-back ranges into pinned memory (invalid ones are left
    /// for `read` to report).
    fn stage_read_back(&mut self, ranges: &[(BufId, usize, usize)]) -> Result<()> {
        let valid = |t: &Table, &(b, off, len): &(BufId, usize, usize)| {
            t.get(b).is_some_and(|e| off.checked_add(len).is_some_and(|end| end <= e.bytes))
        };
        let total: usize =
            ranges.iter().filter(|r| valid(&self.table, r)).map(|r| align4(r.2)).sum();
        if total == 0 {
            return Ok(());
        }
        if total > self.readback.len() {
            self.dev.sync()?; // earlier copies may still target the old buffer
            self.readback = Pinned::new(total.next_power_of_two())?;
        }
        let stream = self.dev.cu_stream();
        let mut at = 0;
        for r @ &(buf, offset, len) in ranges {
            if !valid(&self.table, r) || len == 0 {
                continue;
            }
            let src = self.table.get(buf).expect("valid").ptr + offset as u64;
            let dst = &mut self.readback.as_mut_slice()[at..at + len];
            // SAFETY: the source range lies in the buffer (checked); the pinned destination is
            // read only after the stream is synchronized.
            unsafe { result::memcpy_dtoh_async(dst, src, stream) }
                .map_err(|e| driver_err("staging read-back", e))?;
            self.staged.push(Staged { buf, offset, len, at });
            at += align4(len);
        }
        Ok(())
    }

    fn forget_staged(&mut self, buf: BufId) {
        self.staged.retain(|s| s.buf != buf);
    }
}

fn is_weight_dtype(d: DType) -> bool {
    ops::weight_index(d).is_some()
}

/// The K/V dtype pairs the kernels are instantiated for (kernels/attention_*.cu).
fn is_kv_pair(d: tandem_core::KvDtypes) -> bool {
    ops::attention::entries(d).is_some()
}

/// What the kernels handle: every op, with the dtypes they read and head sizes they hold.
pub(crate) fn supports(op: &Op) -> bool {
    match op {
        Op::Embed(o) => is_weight_dtype(o.dtype),
        Op::Matmul(o) => is_weight_dtype(o.wdtype),
        Op::KvWrite(o) => is_kv_pair(o.kv_dtypes),
        Op::Attention(o) => {
            // Decode rows take longer heads than prompt rows.
            let hd_max =
                if o.decode_rows == o.n { ops::DECODE_HD_MAX } else { ops::PREFILL_HD_MAX };
            is_kv_pair(o.kv_dtypes) && o.head_dim <= hd_max
        }
        Op::MoeRoute(o) => o.experts <= ops::MOE_MAX_EXPERTS,
        Op::MoeMatmul(o) => is_weight_dtype(o.wdtype),
        Op::RmsNorm(_)
        | Op::Rope(_)
        | Op::Swiglu(_)
        | Op::Geglu(_)
        | Op::Softcap(_)
        | Op::MoeSum(_)
        | Op::Add(_)
        | Op::Argmax(_)
        | Op::Sample(_)
        | Op::MaskLogits(_)
        | Op::CopyRows(_)
        | Op::LoraShrink(_)
        | Op::LoraExpand(_) => true,
        // A block holds whole runs in shared memory.
        Op::Hadamard(o) => o.size <= ops::HADAMARD_MAX_SIZE,
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        NAME.into()
    }

    fn supports(&self, op: &Op) -> bool {
        supports(op)
    }

    fn alloc(&mut self, dtype: DType, numel: usize) -> Result<BufId> {
        if dtype.block_layout().is_some() && !is_weight_dtype(dtype) {
            // A block type no kernel reads (one added to tandem-core later); refusing here
            // (rather than at the first step) stops a model load before it uploads anything,
            // with the reason.
            return Err(Error::Unsupported { backend: self.name(), op: format!("{dtype} weights (of the GGUF block types CUDA reads Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS; others run on the CPU backend)") });
        }
        self.dev.bind()?;
        let bytes = dtype.storage_bytes(numel);
        if bytes == 0 && numel > 0 {
            return Err(Error::InvalidParameter(format!(
                "cannot allocate {numel} elements of {dtype}"
            )));
        }
        let ptr = self.dev.alloc_zeroed(bytes)?;
        Ok(self.table.insert(Entry { ptr, dtype, numel, bytes, shadow: Default::default() }))
    }

    fn write_at(&mut self, buf: BufId, offset: usize, bytes: &[u8]) -> Result<()> {
        self.dev.bind()?;
        let e = self.entry(buf, "write to")?;
        if offset.checked_add(bytes.len()).is_none_or(|end| end > e.bytes) {
            return Err(backend_err(format!(
                "write of {} bytes at {offset} into buffer {} of {} bytes",
                bytes.len(),
                buf.0,
                e.bytes
            )));
        }
        let ptr = e.ptr + offset as u64;
        self.dev.upload_sync(ptr, bytes)?;
        match offset {
            0 => self.table.shadow_write(buf, bytes),
            _ => self.table.shadow_forget(buf),
        }
        self.forget_staged(buf);
        self.stats.upload_bytes += bytes.len() as u64;
        Ok(())
    }

    fn free(&mut self, buf: BufId) {
        if self.dev.bind().is_err() {
            return;
        }
        self.forget_staged(buf);
        if let Some(e) = self.table.remove(buf) {
            // Graphs may hold its address; a later allocation could reuse it.
            self.graphs.clear();
            self.dev.free(e.ptr);
        }
    }

    fn buffer(&self, buf: BufId) -> Option<BufInfo> {
        self.table.get(buf).map(|e| BufInfo { dtype: e.dtype, numel: e.numel })
    }

    fn run(&mut self, step: &Step) -> Result<()> {
        self.dev.bind()?;
        let r = self.run_step(step);
        if r.is_err() {
            self.staged.clear();
        }
        r
    }

    async fn read(&mut self, buf: BufId, offset: usize, len: usize) -> Result<Vec<u8>> {
        self.dev.bind()?;
        let e = self.entry(buf, "read of")?;
        match offset.checked_add(len) {
            Some(end) if end <= e.bytes => {}
            _ => {
                return Err(backend_err(format!(
                    "read of {len} bytes at {offset} from buffer {} of {} bytes",
                    buf.0, e.bytes
                )))
            }
        }
        let src = e.ptr + offset as u64;
        let mut out = vec![0u8; len];
        self.stats.readback_bytes += len as u64;
        let staged = self
            .staged
            .iter()
            .find(|s| s.buf == buf && s.offset <= offset && offset + len <= s.offset + s.len)
            .copied();
        match staged {
            Some(s) => {
                self.dev.sync()?;
                let at = s.at + (offset - s.offset);
                out.copy_from_slice(&self.readback.as_slice()[at..at + len]);
            }
            None if len > 0 => self.dev.download_sync(&mut out, src)?,
            None => self.dev.sync()?,
        }
        Ok(out)
    }

    fn allocated_bytes(&self) -> usize {
        self.table.allocated_bytes()
    }

    fn precision(&self, op: &Op) -> tandem_core::ops::Precision {
        match op {
            // The prompt rows' class: they may run on tensor cores while the decode rows keep
            // f32 products, and an op is compared at one tolerance, the coarser one.
            Op::Matmul(m) if self.blas.is_ok() && ops::tensor_cores(m) => {
                tandem_core::ops::Precision::Bf16Products
            }
            _ => tandem_core::ops::Precision::F32,
        }
    }

    fn copy_bandwidth(&mut self) -> Option<Result<f64>> {
        Some(self.dev.bind().and_then(|()| self.dev.copy_bandwidth()))
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if self.dev.bind().is_err() {
            return;
        }
        let _ = self.dev.sync();
        if let Some(p) = &self.profile {
            eprint!("{}", p.report());
        }
        self.graphs.clear();
        if let Ok(b) = std::mem::replace(&mut self.blas, Err(String::new())) {
            b.close(&self.dev);
        }
        self.modules.unload();
        let ptrs: Vec<_> = self.table.drain().map(|e| e.ptr).collect();
        for p in ptrs.into_iter().chain([self.scratch]).filter(|&p| p != 0) {
            // SAFETY: each pointer was allocated by this backend and is freed once; the stream
            // is idle.
            let _ = unsafe { result::free_sync(p) };
        }
    }
}
