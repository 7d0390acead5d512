//! Recording a step: each op is checked against its buffers and becomes kernel launches
//! (function, grid, block, shared memory, arguments) in a reused list; nothing reaches the
//! GPU until the whole step is recorded, so a bad op fails before any work is queued.

use std::collections::HashMap;
use std::ffi::{c_void, CString};

use cudarc::driver::{result, sys};
use tandem_core::{BufId, DType, Error, Result};

use crate::blas::Gemm;
use crate::buffers::{Entry, Table};
use crate::device::{backend_err, driver_err};
use crate::kernels::{self, KernelFile};

/// Most arguments a kernel takes.
pub(crate) const MAX_ARGS: usize = 24;

/// One kernel argument, stored in 8 bytes: the driver reads as many bytes as the kernel's
/// parameter has, and on a little-endian host a u32 or f32 sits in the low 4.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Arg {
    Ptr(sys::CUdeviceptr),
    U32(u32),
    U64(u64),
    F32(f32),
}

impl Arg {
    pub fn bits(self) -> u64 {
        match self {
            Arg::Ptr(p) => p,
            Arg::U32(v) => v as u64,
            Arg::U64(v) => v,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

/// Equal launches do the same work (their buffers' contents aside): a graph captured from one
/// list replays for an equal list.
#[derive(Clone, PartialEq)]
pub(crate) struct Launch {
    /// Null when recorded without modules (the launch-ABI test, which has no GPU).
    pub func: sys::CUfunction,
    #[cfg_attr(not(test), allow(dead_code))]
    pub file: KernelFile,
    pub entry: &'static str,
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub smem: u32,
    pub args: [Arg; MAX_ARGS],
    pub nargs: usize,
    /// A cuBLAS product queued in the kernels' order instead of a kernel (func is null).
    pub gemm: Option<Gemm>,
}

impl Launch {
    /// Queues the kernel on `stream`.
    pub fn enqueue(&self, stream: sys::CUstream) -> Result<()> {
        if let Some(g) = &self.gemm {
            return g.enqueue(); // on the stream its handle was given
        }
        let mut vals = [0u64; MAX_ARGS];
        for (v, a) in vals.iter_mut().zip(&self.args[..self.nargs]) {
            *v = a.bits();
        }
        let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (p, v) in ptrs.iter_mut().zip(vals.iter_mut()) {
            *p = v as *mut u64 as *mut c_void;
        }
        // SAFETY: the function comes from a loaded module, the arguments match its signature
        // (each op builds them for its own kernel; the launch-ABI test checks them against
        // the PTX) and point at `vals`, which outlives the call (the driver copies argument
        // values at launch, and at capture).
        unsafe {
            result::launch_kernel(
                self.func,
                self.grid,
                (self.block, 1, 1),
                self.smem,
                stream,
                &mut ptrs[..self.nargs],
            )
        }
        .map_err(|e| driver_err(&format!("launching {}", self.entry), e))
    }
}

/// What the kernels are compiled for: "sm_XY", and whether that is the device's own
/// architecture (then NVRTC's CUBIN is loaded; else PTX, JIT-compiled by the driver).
pub(crate) struct Arch {
    pub name: String,
    pub cubin: bool,
    /// The device's multiprocessors: grids of persistent kernels are sized from it.
    pub sms: u32,
}

/// Loaded modules (one per kernel file) and their functions, for one context.
#[derive(Default)]
pub(crate) struct Modules {
    modules: HashMap<KernelFile, sys::CUmodule>,
    funcs: HashMap<&'static str, sys::CUfunction>,
}

impl Modules {
    /// `entry` of `file`, compiling (NVRTC, cached) and loading the module on first use.
    pub fn func(
        &mut self,
        arch: &Arch,
        file: KernelFile,
        entry: &'static str,
    ) -> Result<sys::CUfunction> {
        if let Some(&f) = self.funcs.get(entry) {
            return Ok(f);
        }
        let module = match self.modules.get(&file) {
            Some(&m) => m,
            None => {
                let image =
                    kernels::module_image(file, &arch.name, arch.cubin).map_err(backend_err)?;
                // SAFETY: a whole CUBIN, or PTX text with its NUL (module_image checks both),
                // which the driver loads or JIT-compiles for the device.
                let m = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
                    .map_err(|e| {
                        driver_err(
                            &format!("loading kernels/{}.cu for {}", file.name(), arch.name),
                            e,
                        )
                    })?;
                self.modules.insert(file, m);
                m
            }
        };
        let name = CString::new(entry).expect("entry names are literals");
        // SAFETY: the module is loaded and stays so while self lives.
        let f = unsafe { result::module::get_function(module, name) }
            .map_err(|e| driver_err(&format!("kernel {entry} in kernels/{}.cu", file.name()), e))?;
        self.funcs.insert(entry, f);
        Ok(f)
    }

    /// Unloads every module (the context must be current).
    pub fn unload(&mut self) {
        self.funcs.clear();
        for (_, m) in self.modules.drain() {
            // SAFETY: loaded by func, unloaded once; no launch is pending (the owner synced).
            let _ = unsafe { result::module::unload(m) };
        }
    }
}

/// What an op sees while it records.
pub(crate) struct Recorder<'a> {
    pub table: &'a Table,
    /// `None` records without resolving functions (tests without a GPU).
    pub modules: Option<&'a mut Modules>,
    pub arch: &'a Arch,
    pub out: &'a mut Vec<Launch>,
    /// Attention-decode partials and tensor-core operands, sized for the step before recording.
    pub scratch: sys::CUdeviceptr,
    /// The cuBLAS handle where prompt products run on tensor cores (see ops::matmul).
    pub blas: Option<usize>,
    /// u32 buffers a kernel writes: their host copies go stale.
    pub written_u32: &'a mut Vec<BufId>,
}

impl Recorder<'_> {
    pub fn buf(&self, op: &'static str, role: &str, id: BufId) -> Result<&Entry> {
        self.table.entry(op, role, id)
    }

    pub fn launch(
        &mut self,
        file: KernelFile,
        entry: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        debug_assert!(args.len() <= MAX_ARGS);
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(()); // nothing to do (an empty shape)
        }
        if grid.1 > 65535 || grid.2 > 65535 || grid.0 > i32::MAX as u32 {
            return Err(Error::ShapeMismatch {
                op: entry,
                expected: "a grid within CUDA's limits".into(),
                got: format!("{grid:?}"),
            });
        }
        let func = match self.modules.as_deref_mut() {
            Some(m) => m.func(self.arch, file, entry)?,
            None => std::ptr::null_mut(),
        };
        let mut a = [Arg::U32(0); MAX_ARGS];
        a[..args.len()].copy_from_slice(args);
        self.out.push(Launch {
            func,
            file,
            entry,
            grid,
            block,
            smem,
            args: a,
            nargs: args.len(),
            gemm: None,
        });
        Ok(())
    }

    /// Queues a cuBLAS product after the launches recorded so far.
    pub fn gemm(&mut self, g: Gemm) {
        let args = [Arg::U32(0); MAX_ARGS];
        let func = std::ptr::null_mut();
        self.out.push(Launch {
            func,
            file: KernelFile::MatmulTc,
            entry: "cublas_gemm",
            grid: (1, 1, 1),
            block: 0,
            smem: 0,
            args,
            nargs: 0,
            gemm: Some(g),
        });
    }
}

/// Blocks for a grid-stride loop over `total` elements in blocks of `block`.
pub(crate) fn grid_1d(total: u64, block: u32) -> (u32, u32, u32) {
    (total.div_ceil(block as u64).clamp(0, 1 << 16) as u32, 1, 1)
}

/// Shapes the kernels index with 32 bits.
pub(crate) fn fits_u32(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::ShapeMismatch {
        op,
        expected: format!("{what} < 2^32"),
        got: v.to_string(),
    })
}

pub(crate) fn bad_dtype(op: &'static str, role: &str, allowed: &str, got: DType) -> Error {
    Error::ShapeMismatch {
        op,
        expected: format!("{role} of dtype {allowed}"),
        got: got.to_string(),
    }
}
