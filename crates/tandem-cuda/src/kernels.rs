//! Kernel sources (`kernels/*.cu`, one op per file, each prefixed with `kernels/common.cuh`)
//! and their compilation with NVRTC for the device's architecture. Each file is compiled at
//! most once per process and architecture; the PTX is also kept on disk, keyed by a hash of
//! the source, the options and the NVRTC version, so a later process skips NVRTC entirely.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{self, CompileError, CompileOptions};
use sha2::{Digest, Sha256};

/// The shared prelude: dtype conversions by inline PTX, warp reductions, weight dequantization.
pub const PRELUDE: &str = include_str!("../../../kernels/common.cuh");

/// One `kernels/<name>.cu` file: one op (matmul has a decode and a prefill file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelFile {
    Embed,
    RmsNorm,
    Rope,
    KvWrite,
    MatmulDecode,
    MatmulPrefill,
    AttentionPrefill,
    AttentionDecode,
    Swiglu,
    Add,
    Argmax,
    Sample,
    CopyRows,
}

impl KernelFile {
    pub const ALL: [KernelFile; 13] = [
        KernelFile::Embed,
        KernelFile::RmsNorm,
        KernelFile::Rope,
        KernelFile::KvWrite,
        KernelFile::MatmulDecode,
        KernelFile::MatmulPrefill,
        KernelFile::AttentionPrefill,
        KernelFile::AttentionDecode,
        KernelFile::Swiglu,
        KernelFile::Add,
        KernelFile::Argmax,
        KernelFile::Sample,
        KernelFile::CopyRows,
    ];

    /// The file's stem in `kernels/`.
    pub fn name(self) -> &'static str {
        match self {
            KernelFile::Embed => "embed",
            KernelFile::RmsNorm => "rms_norm",
            KernelFile::Rope => "rope",
            KernelFile::KvWrite => "kv_write",
            KernelFile::MatmulDecode => "matmul_decode",
            KernelFile::MatmulPrefill => "matmul_prefill",
            KernelFile::AttentionPrefill => "attention_prefill",
            KernelFile::AttentionDecode => "attention_decode",
            KernelFile::Swiglu => "swiglu",
            KernelFile::Add => "add",
            KernelFile::Argmax => "argmax",
            KernelFile::Sample => "sample",
            KernelFile::CopyRows => "copy_rows",
        }
    }

    fn body(self) -> &'static str {
        match self {
            KernelFile::Embed => include_str!("../../../kernels/embed.cu"),
            KernelFile::RmsNorm => include_str!("../../../kernels/rms_norm.cu"),
            KernelFile::Rope => include_str!("../../../kernels/rope.cu"),
            KernelFile::KvWrite => include_str!("../../../kernels/kv_write.cu"),
            KernelFile::MatmulDecode => include_str!("../../../kernels/matmul_decode.cu"),
            KernelFile::MatmulPrefill => include_str!("../../../kernels/matmul_prefill.cu"),
            KernelFile::AttentionPrefill => include_str!("../../../kernels/attention_prefill.cu"),
            KernelFile::AttentionDecode => include_str!("../../../kernels/attention_decode.cu"),
            KernelFile::Swiglu => include_str!("../../../kernels/swiglu.cu"),
            KernelFile::Add => include_str!("../../../kernels/add.cu"),
            KernelFile::Argmax => include_str!("../../../kernels/argmax.cu"),
            KernelFile::Sample => include_str!("../../../kernels/sample.cu"),
            KernelFile::CopyRows => include_str!("../../../kernels/copy_rows.cu"),
        }
    }

    /// What NVRTC compiles: the prelude, then the file, with `#line` so errors name the file.
    pub fn source(self) -> String {
        format!("{PRELUDE}\n#line 1 \"{}.cu\"\n{}", self.name(), self.body())
    }
}

/// "sm_XY" for a compute capability.
pub fn arch_name(major: i32, minor: i32) -> String {
    format!("sm_{major}{minor}")
}

/// The NVRTC options every kernel is compiled with. No fast math: the kernels must match the
/// CPU reference within the conformance tolerances, and the sampler's exp and division must
/// round as the reference's do. Fused multiply-adds are allowed (the tolerances cover them).
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "-default-device".into(),
        "--fmad=true".into(),
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
    ]
}

/// Whether libnvrtc can be loaded; `Err` says what is missing. cudarc panics on a missing
/// library, so this is checked before any NVRTC call.
pub fn nvrtc_present() -> Result<(), String> {
    // SAFETY: only probes for the shared library with dlopen; nothing is called in it.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err("NVRTC (libnvrtc.so) not found: install the CUDA toolkit's NVRTC or add its lib directory to LD_LIBRARY_PATH".into())
    }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    nvrtc_present()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; nvrtcVersion only writes the two ints.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    r.result().map_err(|e| format!("nvrtcVersion: {e}"))?;
    Ok((major, minor))
}

/// PTX of `file` for `arch` ("sm_80"): from this process's cache, else the disk cache, else
/// NVRTC (which then fills both). A compile error carries NVRTC's log.
pub fn ptx(file: KernelFile, arch: &str) -> Result<String, String> {
    static MEMO: OnceLock<Mutex<HashMap<(KernelFile, String), String>>> = OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    let key = (file, arch.to_string());
    if let Some(p) = memo.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let version = nvrtc_version()?;
    let source = file.source();
    let opts = options(arch);
    let disk = disk_path(file, arch, &source, &opts, version);
    let ptx = match disk.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        Some(p) if p.contains(".entry") => p,
        _ => {
            let p = compile(file, &source, &opts)?;
            if let Some(path) = &disk {
                // A cache that cannot be written only costs a recompile next time.
                let _ = write_atomically(path, &p);
            }
            p
        }
    };
    memo.lock().unwrap_or_else(|p| p.into_inner()).insert(key, ptx.clone());
    Ok(ptx)
}

/// Runs NVRTC on one file (no caches): what `tandem-kernels` and the tests call.
pub fn compile(file: KernelFile, source: &str, opts: &[String]) -> Result<String, String> {
    nvrtc_present()?;
    let o = CompileOptions { options: opts.to_vec(), name: Some(format!("{}.cu", file.name())), ..Default::default() };
    match nvrtc::compile_ptx_with_opts(source, o) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => {
            Err(format!("NVRTC could not compile kernels/{}.cu:\n{}", file.name(), log.to_string_lossy()))
        }
        Err(e) => Err(format!("NVRTC failed on kernels/{}.cu: {e}", file.name())),
    }
}

fn disk_path(file: KernelFile, arch: &str, source: &str, opts: &[String], v: (i32, i32)) -> Option<PathBuf> {
    let dir = tandem_core::default_model::cache_dir().ok()?.join("kernels");
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    for o in opts {
        h.update(o.as_bytes());
        h.update([0]);
    }
    h.update(format!("nvrtc {}.{}", v.0, v.1).as_bytes());
    let hex: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join(format!("{}-{arch}-{hex}.ptx", file.name())))
}

/// Another process may be writing the same entry: write a temporary file and rename it.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
