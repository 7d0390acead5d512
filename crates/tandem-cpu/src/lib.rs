//! tandem's CPU backend.
//!
//! Two modes share one buffer table and one set of shape checks:
//! - [`CpuMode::Reference`]: plain scalar loops, single thread, f32 accumulation in the obvious
//!   order. It is the oracle every other backend (and the fast mode) is tested against, so it
//!   favours being obviously right over being quick.
//! - [`CpuMode::Fast`]: the same ops with lane-parallel inner loops the compiler vectorizes
//!   and hand-written kernels for one instruction set ([`Isa`]: AVX2 or AVX-512 VNNI on
//!   x86-64, simd128 in wasm, or the portable loops), chosen once when the backend is made
//!   (`TANDEM_CPU_ISA` overrides it), split across a private rayon pool when it has more than
//!   one thread. With one thread there is no pool at all: every op
//!   runs on the calling thread, so nothing is handed off and no thread is ever spawned (which
//!   is what lets fast mode run in wasm32).
//!
//! Every op lives in its own file under `ops/`, its reference and fast function side by side.

// Reference loops index like the math they transcribe (llama2.c style).
#![allow(clippy::needless_range_loop)]

pub use isa::{Isa, ISA_ENV};
use ops::matmul::Kernels;

use rayon::ThreadPool;
use tandem_core::ops::{Op, Precision};
use tandem_core::{Backend, BufId, BufInfo, DType, Error, Result, Step};
use team::Team;

mod isa;
mod ops;
mod profile;
mod table;
mod team;

use table::{Buffer, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// Scalar, single-threaded, obviously correct: the test oracle.
    Reference,
    /// Vectorized, on `threads` threads (0 = one per core); one thread runs on the caller.
    Fast { threads: usize },
}

pub struct CpuBackend {
    mode: CpuMode,
    /// Only built for more than one thread.
    pool: Option<ThreadPool>,
    /// The kernels of the instruction set chosen when the backend was made, checked then.
    kernels: &'static Kernels,
    table: Table,
    /// `TANDEM_CPU_PROFILE`: per-op wall times, reported on drop.
    profile: Option<profile::Profile>,
}

/// What an op needs to know about the machine.
#[derive(Clone, Copy)]
pub(crate) struct Exec<'a> {
    /// Fast mode (`false` = the reference loops).
    pub fast: bool,
    /// The step's team to split parallel sections across; `None` = run them on the calling
    /// thread. Never `Some` in reference mode.
    pub pool: Option<&'a Team>,
    /// The kernel table of the backend's instruction set, whose features were detected when
    /// the backend was made (so its kernels may be called).
    pub kernels: &'static Kernels,
}

impl Exec<'_> {
    /// Whether the AVX2 builds of the kernels outside the matmul tables (attention's) may run.
    #[cfg(target_arch = "x86_64")]
    pub fn avx2(&self) -> bool {
        matches!(self.kernels.isa, Isa::Avx2 | Isa::Avx512)
    }

    /// Number of threads parallel sections run on (1 without a pool).
    pub fn threads(&self) -> usize {
        self.pool.map_or(1, |p| p.threads())
    }

    /// The team, if an op touching about `work` elements is worth splitting: even with the
    /// helpers awake, a section costs a few cache-line round trips, longer than a decode
    /// step's elementwise ops take, so those run inline on the caller.
    pub fn pool_for(&self, work: usize) -> Option<&Team> {
        self.pool.filter(|_| work >= PAR_MIN_WORK)
    }

    /// This context without its pool when about `work` multiply-adds are too few to split:
    /// tiny models (stories260K) otherwise spend more on hand-offs than on the math.
    pub fn sized(self, work: usize) -> Self {
        Exec { pool: self.pool.filter(|_| work >= PAR_MIN_WORK), ..self }
    }

    /// `work(i, chunk)` over `out.chunks_mut(c)`: across the team when there is one, else in
    /// order on the calling thread. Either way each chunk sees the same inputs, so the result
    /// does not depend on which.
    pub fn for_chunks<T, F>(&self, out: &mut [T], c: usize, work: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync + Send,
    {
        match self.pool {
            Some(team) => ops::par_chunks_caller(team, team.threads(), out, c, work),
            None => out.chunks_mut(c.max(1)).enumerate().for_each(|(i, o)| work(i, o)),
        }
    }

    /// `(0..n).map(f).collect()`, across the team when there is one (results in index order).
    pub fn map_range<R, F>(&self, n: usize, f: F) -> Vec<R>
    where
        R: Send,
        F: Fn(usize) -> R + Sync + Send,
    {
        match self.pool {
            Some(team) => {
                let mut slots: Vec<Option<R>> = (0..n).map(|_| None).collect();
                ops::par_chunks_caller(team, team.threads(), &mut slots, 1, |i, s| {
                    s[0] = Some(f(i))
                });
                slots.into_iter().map(|r| r.expect("every item ran")).collect()
            }
            None => (0..n).map(f).collect(),
        }
    }
}

/// Checks the wasm build's kernel parts that the shared conformance cases cannot reach (the
/// f16 scale conversion on every bit pattern). The browser tests call it, through the
/// conformance build of tandem-web.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub fn wasm_self_check() -> std::result::Result<(), String> {
    ops::matmul::wasm_self_check()
}

/// Elements below which an op runs on the calling thread (see [`Exec::pool_for`]).
pub(crate) const PAR_MIN_WORK: usize = 1 << 15;

impl CpuBackend {
    pub fn new(mode: CpuMode) -> Result<Self> {
        let pool = match mode {
            CpuMode::Reference => None,
            CpuMode::Fast { threads } => {
                let threads = match threads {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    t => t,
                };
                if threads > 1 {
                    Some(
                        rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .thread_name(|i| format!("tandem-cpu-{i}"))
                            .build()
                            .map_err(|e| Error::Backend {
                                backend: "cpu-fast".into(),
                                reason: e.to_string(),
                            })?,
                    )
                } else {
                    None // one thread: the caller's, nothing to spawn
                }
            }
        };
        let isa = match Isa::from_env() {
            Ok(isa) => isa.unwrap_or_else(Isa::detect),
            Err(reason) => return Err(Error::Backend { backend: "cpu".into(), reason }),
        };
        let kernels = Kernels::of(isa).map_err(|reason| Error::Backend {
            backend: "cpu".into(),
            reason: format!("{ISA_ENV}={isa}: {reason}"),
        })?;
        Ok(CpuBackend {
            mode,
            pool,
            kernels,
            table: Table::default(),
            profile: profile::Profile::wanted().then(Default::default),
        })
    }

    /// The oracle. Building it cannot fail: it starts no threads.
    pub fn reference() -> Self {
        CpuBackend {
            mode: CpuMode::Reference,
            pool: None,
            kernels: Kernels::portable(),
            table: Table::default(),
            profile: profile::Profile::wanted().then(Default::default),
        }
    }

    pub fn fast(threads: usize) -> Result<Self> {
        Self::new(CpuMode::Fast { threads })
    }

    pub fn mode(&self) -> CpuMode {
        self.mode
    }

    /// The instruction set fast mode's kernels use.
    pub fn isa(&self) -> Isa {
        self.kernels.isa
    }

    /// This backend on the kernels of `isa` instead (tests run every ISA the machine has this
    /// way); an ISA this machine cannot run is refused.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self> {
        self.kernels =
            Kernels::of(isa).map_err(|reason| Error::Backend { backend: self.name(), reason })?;
        Ok(self)
    }

    fn run_op(table: &mut Table, ex: Exec, op: &Op) -> Result<()> {
        let t = table;
        match op {
            Op::Embed(o) => ops::embed::run(t, ex, o),
            Op::RmsNorm(o) => ops::rms_norm::run(t, ex, o),
            Op::Matmul(o) => ops::matmul::run(t, ex, o),
            Op::Rope(o) => ops::rope::run(t, ex, o),
            Op::KvWrite(o) => ops::kv_write::run(t, ex, o),
            Op::Attention(o) => ops::attention::run(t, ex, o),
            Op::Swiglu(o) => ops::swiglu::run(t, ex, o),
            Op::Geglu(o) => ops::geglu::run(t, ex, o),
            Op::Softcap(o) => ops::softcap::run(t, ex, o),
            Op::Hadamard(o) => ops::hadamard::run(t, ex, o),
            Op::MoeRoute(o) => ops::moe::route(t, o),
            Op::MoeMatmul(o) => ops::moe::matmul(t, ex, o),
            Op::MoeSum(o) => ops::moe::sum(t, o),
            Op::Add(o) => ops::add::run(t, ex, o),
            Op::Argmax(o) => ops::argmax::run(t, ex, o),
            Op::Sample(o) => ops::sample::run(t, ex, o),
            Op::MaskLogits(o) => ops::mask_logits::run(t, ex, o),
            Op::CopyRows(o) => ops::copy_rows::run(t, ex, o),
            Op::LoraShrink(o) => ops::lora::shrink(t, ex, o),
            Op::LoraExpand(o) => ops::lora::expand(t, ex, o),
        }
    }
}

fn is_weight_dtype(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
        || d.block_layout().is_some()
}

fn is_kv_pair(d: tandem_core::KvDtypes) -> bool {
    tandem_core::quant::kv::KV_PAIRS.contains(&d)
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        match self.mode {
            CpuMode::Reference => "cpu-reference".into(),
            CpuMode::Fast { .. } => "cpu-fast".into(),
        }
    }

    fn supports(&self, op: &Op) -> bool {
        match op {
            Op::Embed(o) => is_weight_dtype(o.dtype),
            Op::Matmul(o) => is_weight_dtype(o.wdtype),
            Op::KvWrite(o) => is_kv_pair(o.kv_dtypes),
            Op::Attention(o) => is_kv_pair(o.kv_dtypes),
            Op::RmsNorm(_)
            | Op::Rope(_)
            | Op::Swiglu(_)
            | Op::Add(_)
            | Op::Argmax(_)
            | Op::Sample(_)
            | Op::MaskLogits(_)
            | Op::CopyRows(_)
            | Op::Geglu(_)
            | Op::Softcap(_)
            | Op::Hadamard(_)
            | Op::MoeRoute(_)
            | Op::MoeSum(_) => true,
            Op::MoeMatmul(o) => is_weight_dtype(o.wdtype),
            Op::LoraShrink(_) | Op::LoraExpand(_) => true,
        }
    }

    fn precision(&self, op: &Op) -> Precision {
        match op {
            // The op's other rows keep f32 products, and an op is compared at the coarser
            // tolerance.
            Op::Matmul(m)
                if self.mode != CpuMode::Reference && ops::matmul::i16_class(m, self.kernels) =>
            {
                Precision::I16Activations
            }
            Op::MoeMatmul(m)
                if self.mode != CpuMode::Reference
                    && ops::matmul::i16_class(&m.row_matmul(), self.kernels) =>
            {
                Precision::I16Activations
            }
            Op::Attention(a)
                if self.mode != CpuMode::Reference
                    && ops::attention::i16_class(a, self.kernels) =>
            {
                Precision::I16Activations
            }
            _ => Precision::F32,
        }
    }

    fn alloc(&mut self, dtype: DType, numel: usize) -> Result<BufId> {
        let bytes = dtype.storage_bytes(numel);
        if bytes == 0 && numel > 0 {
            return Err(Error::InvalidParameter(format!(
                "cannot allocate {numel} elements of {dtype}"
            )));
        }
        let words = bytes.div_ceil(4);
        let mut data = Vec::new();
        data.try_reserve_exact(words).map_err(|e| Error::Backend {
            backend: self.name(),
            reason: format!("allocating {bytes} bytes: {e}"),
        })?;
        data.resize(words, 0u32);
        let mut b = Buffer::new(dtype, numel, data);
        // Zeros: finite scales, as a write of them would find.
        b.check_scales();
        Ok(self.table.insert(b))
    }

    fn write_at(&mut self, buf: BufId, offset: usize, bytes: &[u8]) -> Result<()> {
        let name = self.name();
        let b = self.table.get_mut(buf).ok_or_else(|| Error::Backend {
            backend: name.clone(),
            reason: format!("write to unknown buffer {}", buf.0),
        })?;
        let dst = b.bytes_mut();
        let end = offset.checked_add(bytes.len()).filter(|&e| e <= dst.len());
        let Some(end) = end else {
            return Err(Error::Backend {
                backend: name,
                reason: format!(
                    "write of {} bytes at {offset} into buffer {} of {} bytes",
                    bytes.len(),
                    buf.0,
                    dst.len()
                ),
            });
        };
        dst[offset..end].copy_from_slice(bytes);
        self.table.check_scales(buf);
        Ok(())
    }

    fn free(&mut self, buf: BufId) {
        self.table.remove(buf);
    }

    fn buffer(&self, buf: BufId) -> Option<BufInfo> {
        self.table.get(buf).map(|b| BufInfo { dtype: b.dtype, numel: b.numel })
    }

    fn run(&mut self, step: &Step) -> Result<()> {
        for (buf, bytes) in &step.writes {
            self.write(*buf, bytes)?;
        }
        let (fast, kernels) = (self.mode != CpuMode::Reference, self.kernels);
        let (table, profile) = (&mut self.table, &mut self.profile);
        if let Some(p) = profile.as_mut() {
            p.step();
        }
        let mut run = |team: Option<&Team>| {
            let ex = Exec { fast, pool: team, kernels };
            let (mut i, mut groups) = (0, step.groups.iter().peekable());
            while i < step.ops.len() {
                // A recorded group (checked by `execute`) runs as one section in fast mode
                // where the joint kernel takes it; else its members run one by one.
                if let Some(g) = groups.next_if(|g| g.start == i) {
                    let group = &step.ops[g.clone()];
                    if fast && ops::matmul::joins(group) {
                        match profile.as_mut() {
                            Some(p) => {
                                p.time_group(group, || ops::matmul::run_group(table, ex, group))?
                            }
                            None => ops::matmul::run_group(table, ex, group)?,
                        }
                        i = g.end;
                        continue;
                    }
                }
                let op = &step.ops[i];
                match profile.as_mut() {
                    Some(p) => p.time(op, || Self::run_op(table, ex, op))?,
                    None => Self::run_op(table, ex, op)?,
                }
                i += 1;
            }
            Ok(())
        };
        match &self.pool {
            // One team for the whole step: its helpers stay awake from op to op.
            Some(pool) => Team::with(pool, pool.current_num_threads(), |team| run(Some(team))),
            None => run(None),
        }
    }

    async fn read(&mut self, buf: BufId, offset: usize, len: usize) -> Result<Vec<u8>> {
        let name = self.name();
        let b = self.table.get(buf).ok_or_else(|| Error::Backend {
            backend: name.clone(),
            reason: format!("read of unknown buffer {}", buf.0),
        })?;
        let bytes = b.bytes();
        match offset.checked_add(len) {
            Some(end) if end <= bytes.len() => Ok(bytes[offset..end].to_vec()),
            _ => Err(Error::Backend {
                backend: name,
                reason: format!(
                    "read of {len} bytes at {offset} from buffer {} of {} bytes",
                    buf.0,
                    bytes.len()
                ),
            }),
        }
    }

    fn allocated_bytes(&self) -> usize {
        self.table.allocated_bytes()
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            eprint!("{}", p.report());
        }
    }
}
