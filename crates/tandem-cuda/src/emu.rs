//! The kernels on the CPU, for tests without a GPU: kernels/*.cu compiled by the host C++
//! compiler against `emu/cuda_emu.h` (CUDA threads as OS threads, barriers for __syncthreads
//! and warp shuffles), driven by [`EmuBackend`], which records every step with the very code
//! the CUDA backend uses (`ops::record`) and runs the launches on host memory. So the shared
//! conformance suite checks the kernels' arithmetic and indexing and this crate's launch
//! arguments against the CPU reference. It cannot check the driver side (streams, graphs,
//! pinned copies) or GPU-only behaviour, and it is slow: tests only.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use tandem_core::{Backend, BufId, BufInfo, DType, Error, Result, Step};

use crate::buffers::{Entry, Table};
use crate::kernels::{KernelFile, PRELUDE};
use crate::launch::{Arch, Launch, Recorder};
use crate::ops;

const HEADER: &str = include_str!("../emu/cuda_emu.h");
const LAUNCHER: &str = include_str!("../emu/launch.cpp");

/// How a failed build of the kernels (as opposed to a missing tool) is told apart.
const BUILD_FAILED: &str = "the CUDA kernels do not build for the emulator: ";

type LaunchFn =
    unsafe extern "C" fn(*const c_char, u32, u32, u32, u32, u32, *const u64, c_int) -> c_int;

struct Lib {
    _lib: libloading::Library,
    launch: LaunchFn,
}

/// The emulator library, built (or found from an earlier build) once per process.
fn lib() -> std::result::Result<&'static Lib, String> {
    static LIB: OnceLock<std::result::Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(build_and_load).as_ref().map_err(Clone::clone)
}

fn build_and_load() -> std::result::Result<Lib, String> {
    if !has_f16c() {
        return Err(
            "the kernel emulator needs an x86-64 CPU with F16C (its f16 conversions)".into()
        );
    }
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let version = Command::new(&cxx)
        .arg("--version")
        .output()
        .map_err(|e| format!("no C++ compiler to build the kernel emulator ({cxx}: {e})"))?;
    let mut h = Sha256::new();
    for part in [HEADER, LAUNCHER, PRELUDE] {
        h.update(part.as_bytes());
    }
    for f in KernelFile::ALL {
        h.update(f.source().as_bytes());
    }
    h.update(&version.stdout);
    let hex: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("tandem-cuda-emu-{hex}"));
    let so = dir.join("libtandem_cuda_emu.so");
    if !so.is_file() {
        build(&cxx, &dir, &so).map_err(|e| format!("{BUILD_FAILED}{e}"))?;
    }
    // SAFETY: a library built above from this crate's sources; its initializers only fill the
    // kernel registry.
    let lib = unsafe { libloading::Library::new(&so) }
        .map_err(|e| format!("loading {}: {e}", so.display()))?;
    // SAFETY: emu_launch has exactly this signature in emu/launch.cpp.
    let launch =
        unsafe { *lib.get::<LaunchFn>(b"emu_launch\0").map_err(|e| format!("emu_launch: {e}"))? };
    Ok(Lib { _lib: lib, launch })
}

fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Writes one C++ file per kernel file (with a registration per kernel, found by
/// preprocessing it) and compiles them all into `so`, built beside it and renamed into place.
fn build(cxx: &str, dir: &Path, so: &Path) -> std::result::Result<(), String> {
    let work = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let write = |name: &str, text: &str| -> std::result::Result<PathBuf, String> {
        let p = work.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };
    write("cuda_emu.h", HEADER)?;
    let mut sources = vec![write("launch.cpp", LAUNCHER)?];
    let flags =
        ["-std=c++20", "-mf16c", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-pthread"];
    for f in KernelFile::ALL {
        let text = format!("#include \"cuda_emu.h\"\n{}", f.source());
        let path = write(&format!("{}.cpp", f.name()), &text)?;
        let pre = run(Command::new(cxx).args(flags).arg("-E").arg(&path))?;
        let names = kernel_names(&pre, &format!("{}.cu", f.name()));
        if names.is_empty() {
            return Err(format!("no kernel found in kernels/{}.cu", f.name()));
        }
        let regs: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("static emu::Reg tandem_emu_reg_{i}(\"{n}\", &{n});\n"))
            .collect();
        sources.push(write(&format!("{}.cpp", f.name()), &format!("{text}\n{regs}"))?);
    }
    let out = work.join("lib.so");
    run(Command::new(cxx)
        .args(flags)
        .args(["-O1", "-fPIC", "-shared", "-o"])
        .arg(&out)
        .args(&sources))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::rename(&out, so).map_err(|e| format!("{}: {e}", so.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn run(cmd: &mut Command) -> std::result::Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `extern "C" void NAME(` in the preprocessed text after the kernel file's own line marker
/// (so nothing from system headers is picked up).
fn kernel_names(pre: &str, file: &str) -> Vec<String> {
    let marker = format!("\"{file}\"");
    let start = pre.find(&marker).unwrap_or(0);
    let mut names = vec![];
    let mut rest = &pre[start..];
    while let Some(i) = rest.find("extern \"C\"") {
        rest = &rest[i + 10..];
        let t = rest.trim_start();
        if let Some(t) = t.strip_prefix("void") {
            let t = t.trim_start();
            let name: String =
                t.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && t[name.len()..].trim_start().starts_with('(') {
                names.push(name);
            }
        }
    }
    names
}

/// Zeroed host memory with a GPU allocation's alignment, so vector loads see what they would.
struct HostMem {
    ptr: *mut u8,
    layout: Layout,
}

impl HostMem {
    fn new(bytes: usize) -> Result<Self> {
        let layout = Layout::from_size_align(bytes.max(4), 256)
            .map_err(|e| Error::InvalidParameter(e.to_string()))?;
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(emu_err(format!("out of host memory for {bytes} bytes")));
        }
        Ok(HostMem { ptr, layout })
    }
    fn addr(&self) -> u64 {
        self.ptr as u64
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: a live allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: allocated in new with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn emu_err(reason: impl Into<String>) -> Error {
    Error::Backend { backend: "cuda-emu".into(), reason: reason.into() }
}

/// The CUDA backend's recording and kernels with the CPU as the device. Tests only.
pub struct EmuBackend {
    lib: &'static Lib,
    table: Table,
    mem: HashMap<BufId, HostMem>,
    launches: Vec<Launch>,
    written_u32: Vec<BufId>,
    scratch: HostMem,
    arch: Arch,
}

impl EmuBackend {
    /// Builds the emulator on first use (a C++20 compiler is needed; `CXX` picks it).
    /// `Err` (a reason to skip) where the host has no C++ compiler or no F16C. Panics where
    /// it has them and the kernels do not build: that is a bug in kernels/*.cu (or the
    /// emulation), which tests must report rather than skip.
    pub fn new() -> std::result::Result<Self, String> {
        let lib = match lib() {
            Err(e) if e.starts_with(BUILD_FAILED) => panic!("{e}"),
            r => r?,
        };
        Ok(EmuBackend {
            lib,
            table: Table::default(),
            mem: HashMap::new(),
            launches: Vec::new(),
            written_u32: Vec::new(),
            scratch: HostMem::new(4).map_err(|e| e.to_string())?,
            arch: Arch { name: "emu".into(), cubin: false, sms: 4 },
        })
    }

    fn run_step(&mut self, step: &Step) -> Result<()> {
        for (id, bytes) in &step.writes {
            self.write(*id, bytes)?;
        }
        let scratch = ops::scratch_bytes(&step.ops, false);
        if scratch > self.scratch.layout.size() {
            self.scratch = HostMem::new(scratch)?;
        }
        self.launches.clear();
        self.written_u32.clear();
        let mut rec = Recorder {
            table: &self.table,
            modules: None,
            arch: &self.arch,
            out: &mut self.launches,
            scratch: self.scratch.addr(),
            blas: None,
            written_u32: &mut self.written_u32,
        };
        ops::record_all(&mut rec, &step.ops, &step.groups)?;
        for id in &self.written_u32 {
            self.table.shadow_forget(*id);
        }
        for l in &self.launches {
            let name = CString::new(l.entry).expect("entry names have no NUL");
            let args: Vec<u64> = l.args[..l.nargs].iter().map(|a| a.bits()).collect();
            // SAFETY: the arguments are this crate's launch arguments for the kernel (checked
            // against its PTX signature by the launch-ABI test), pointing into live host
            // buffers of the sizes the op checks established.
            let rc = unsafe {
                (self.lib.launch)(
                    name.as_ptr(),
                    l.grid.0,
                    l.grid.1,
                    l.grid.2,
                    l.block,
                    l.smem,
                    args.as_ptr(),
                    args.len() as c_int,
                )
            };
            if rc != 0 {
                return Err(emu_err(format!("launching {}: emulator error {rc}", l.entry)));
            }
        }
        Ok(())
    }
}

impl Backend for EmuBackend {
    fn name(&self) -> String {
        "cuda-emu".into()
    }

    fn supports(&self, op: &tandem_core::ops::Op) -> bool {
        crate::supports(op)
    }

    fn alloc(&mut self, dtype: DType, numel: usize) -> Result<BufId> {
        let bytes = dtype.storage_bytes(numel);
        if bytes == 0 && numel > 0 {
            return Err(Error::InvalidParameter(format!(
                "cannot allocate {numel} elements of {dtype}"
            )));
        }
        let m = HostMem::new(bytes)?;
        let id = self.table.insert(Entry {
            ptr: m.addr(),
            dtype,
            numel,
            bytes,
            shadow: Default::default(),
        });
        self.mem.insert(id, m);
        Ok(id)
    }

    fn write_at(&mut self, buf: BufId, offset: usize, bytes: &[u8]) -> Result<()> {
        let e = self
            .table
            .get(buf)
            .ok_or_else(|| emu_err(format!("write to unknown buffer {}", buf.0)))?;
        let Some(end) = offset.checked_add(bytes.len()).filter(|&end| end <= e.bytes) else {
            return Err(emu_err(format!(
                "write of {} bytes at {offset} into buffer {} of {} bytes",
                bytes.len(),
                buf.0,
                e.bytes
            )));
        };
        self.mem.get_mut(&buf).expect("allocated with the entry").bytes()[offset..end]
            .copy_from_slice(bytes);
        match offset {
            0 => self.table.shadow_write(buf, bytes),
            _ => self.table.shadow_forget(buf),
        }
        Ok(())
    }

    fn free(&mut self, buf: BufId) {
        self.table.remove(buf);
        self.mem.remove(&buf);
    }

    fn buffer(&self, buf: BufId) -> Option<BufInfo> {
        self.table.get(buf).map(|e| BufInfo { dtype: e.dtype, numel: e.numel })
    }

    fn run(&mut self, step: &Step) -> Result<()> {
        self.run_step(step)
    }

    async fn read(&mut self, buf: BufId, offset: usize, len: usize) -> Result<Vec<u8>> {
        let e = self
            .table
            .get(buf)
            .ok_or_else(|| emu_err(format!("read of unknown buffer {}", buf.0)))?;
        match offset.checked_add(len) {
            Some(end) if end <= e.bytes => {
                Ok(self.mem.get_mut(&buf).expect("allocated").bytes()[offset..end].to_vec())
            }
            _ => Err(emu_err(format!(
                "read of {len} bytes at {offset} from buffer {} of {} bytes",
                buf.0, e.bytes
            ))),
        }
    }

    fn allocated_bytes(&self) -> usize {
        self.table.allocated_bytes()
    }
}
