//! Kernel sources (`kernels/*.cu`, one op per file, each prefixed with `kernels/common.cuh`)
//! and their compilation with NVRTC for the device's architecture. Each file is compiled at
//! most once per process and architecture; the result (CUBIN or PTX) is also kept on disk
//! under `~/.cache/tandem/kernels/`, keyed by a hash of the source, the options and the NVRTC
//! version, so a later process skips NVRTC entirely.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};
use std::ffi::{CStr, CString};

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
    MatmulTc,
    AttentionPrefill,
    AttentionDecode,
    Swiglu,
    Geglu,
    Softcap,
    Hadamard,
    MoeRoute,
    MoeSum,
    Add,
    Argmax,
    Sample,
    MaskLogits,
    CopyRows,
    Lora,
}

impl KernelFile {
    pub const ALL: [KernelFile; 21] = [
        KernelFile::Embed,
        KernelFile::RmsNorm,
        KernelFile::Rope,
        KernelFile::KvWrite,
        KernelFile::MatmulDecode,
        KernelFile::MatmulPrefill,
        KernelFile::MatmulTc,
        KernelFile::AttentionPrefill,
        KernelFile::AttentionDecode,
        KernelFile::Swiglu,
        KernelFile::Geglu,
        KernelFile::Softcap,
        KernelFile::Hadamard,
        KernelFile::MoeRoute,
        KernelFile::MoeSum,
        KernelFile::Add,
        KernelFile::Argmax,
        KernelFile::Sample,
        KernelFile::MaskLogits,
        KernelFile::CopyRows,
        KernelFile::Lora,
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
            KernelFile::MatmulTc => "matmul_tc",
            KernelFile::AttentionPrefill => "attention_prefill",
            KernelFile::AttentionDecode => "attention_decode",
            KernelFile::Swiglu => "swiglu",
            KernelFile::Geglu => "geglu",
            KernelFile::Softcap => "softcap",
            KernelFile::Hadamard => "hadamard",
            KernelFile::MoeRoute => "moe_route",
            KernelFile::MoeSum => "moe_sum",
            KernelFile::Add => "add",
            KernelFile::Argmax => "argmax",
            KernelFile::Sample => "sample",
            KernelFile::MaskLogits => "mask_logits",
            KernelFile::CopyRows => "copy_rows",
            KernelFile::Lora => "lora",
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
            KernelFile::MatmulTc => include_str!("../../../kernels/matmul_tc.cu"),
            KernelFile::AttentionPrefill => include_str!("../../../kernels/attention_prefill.cu"),
            KernelFile::AttentionDecode => include_str!("../../../kernels/attention_decode.cu"),
            KernelFile::Swiglu => include_str!("../../../kernels/swiglu.cu"),
            KernelFile::Geglu => include_str!("../../../kernels/geglu.cu"),
            KernelFile::Softcap => include_str!("../../../kernels/softcap.cu"),
            KernelFile::Hadamard => include_str!("../../../kernels/hadamard.cu"),
            KernelFile::MoeRoute => include_str!("../../../kernels/moe_route.cu"),
            KernelFile::MoeSum => include_str!("../../../kernels/moe_sum.cu"),
            KernelFile::Add => include_str!("../../../kernels/add.cu"),
            KernelFile::Argmax => include_str!("../../../kernels/argmax.cu"),
            KernelFile::Sample => include_str!("../../../kernels/sample.cu"),
            KernelFile::MaskLogits => include_str!("../../../kernels/mask_logits.cu"),
            KernelFile::CopyRows => include_str!("../../../kernels/copy_rows.cu"),
            KernelFile::Lora => include_str!("../../../kernels/lora.cu"),
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
///
/// Besides the loader's search path, NVRTC is looked for at `$TANDEM_NVRTC` and in the copy
/// `scripts/check-kernels.sh` installs from PyPI under tandem's cache: loading it there first
/// makes cudarc's later dlopen by name find the same library (by its soname).
pub fn nvrtc_present() -> Result<(), String> {
    static PRELOADED: OnceLock<Option<libloading::Library>> = OnceLock::new();
    // SAFETY: only probes for the shared library with dlopen; nothing is called in it.
    let found = || unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if found() {
        return Ok(());
    }
    PRELOADED.get_or_init(|| {
        // SAFETY: loading NVRTC runs no code of ours; the library stays loaded for the process.
        nvrtc_candidates().into_iter().find_map(|p| unsafe { libloading::Library::new(p) }.ok())
    });
    if found() {
        Ok(())
    } else {
        Err("NVRTC (libnvrtc.so.12) not found: install the CUDA toolkit's NVRTC (or `pip install nvidia-cuda-nvrtc-cu12`) and add its lib directory to LD_LIBRARY_PATH, or set TANDEM_NVRTC to the library's path".into())
    }
}

fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        std::env::var_os("TANDEM_NVRTC").map(PathBuf::from).into_iter().collect();
    if let Ok(entries) = tandem_core::cache::dir()
        .and_then(|d| std::fs::read_dir(&d).map_err(|e| tandem_core::Error::io(d, e)))
    {
        let mut tools: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cuda-tools"))
            })
            .collect();
        tools.sort();
        out.extend(tools.into_iter().rev().map(|t| t.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12")));
    }
    out.retain(|p| p.is_file());
    out
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

/// What the driver loads: a CUBIN when NVRTC compiled for the device's own architecture (no
/// JIT at load, and it runs on drivers older than the NVRTC), else NUL-terminated PTX, which
/// the driver JIT-compiles forward for a GPU newer than NVRTC knows.
pub fn module_image(file: KernelFile, arch: &str, cubin: bool) -> Result<Vec<u8>, String> {
    type Memo = Mutex<HashMap<(KernelFile, String, bool), Vec<u8>>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    let key = (file, arch.to_string(), cubin);
    if let Some(p) = memo.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let version = nvrtc_version()?;
    let source = file.source();
    let opts = options(arch);
    let disk = disk_path(file, arch, &source, &opts, version, if cubin { "cubin" } else { "ptx" });
    let cached =
        disk.as_ref().and_then(|p| std::fs::read(p).ok()).filter(|b| looks_whole(b, cubin));
    let image = match cached {
        Some(b) => b,
        None => {
            let out = nvrtc_compile(file, &source, &opts, cubin)?;
            let mut image = match (cubin, out.cubin) {
                (true, Some(c)) => c,
                (true, None) => {
                    return Err(format!(
                        "NVRTC produced no CUBIN for kernels/{}.cu ({arch})",
                        file.name()
                    ))
                }
                (false, _) => out.ptx.into_bytes(),
            };
            if !cubin {
                image.push(0);
            }
            if let Some(path) = &disk {
                // A cache that cannot be written only costs a recompile next time.
                let _ = write_atomically(path, &image);
            }
            image
        }
    };
    memo.lock().unwrap_or_else(|p| p.into_inner()).insert(key, image.clone());
    Ok(image)
}

/// A cache file is used only if it is what it claims to be (a write may have been cut off).
fn looks_whole(b: &[u8], cubin: bool) -> bool {
    if cubin {
        b.len() > 64 && b.starts_with(b"\x7fELF")
    } else {
        b.last() == Some(&0) && b.windows(6).any(|w| w == b".entry")
    }
}

/// Runs NVRTC on one file (no caches) and returns its PTX: what `tandem-kernels` and the
/// tests call.
pub fn compile(file: KernelFile, source: &str, opts: &[String]) -> Result<String, String> {
    nvrtc_compile(file, source, opts, false).map(|o| o.ptx)
}

struct Compiled {
    ptx: String,
    cubin: Option<Vec<u8>>,
}

fn nvrtc_compile(
    file: KernelFile,
    source: &str,
    opts: &[String],
    want_cubin: bool,
) -> Result<Compiled, String> {
    use cudarc::nvrtc::{result, sys};
    nvrtc_present()?;
    let name = format!("{}.cu", file.name());
    let src = CString::new(source).map_err(|_| format!("kernels/{name} contains a NUL byte"))?;
    let cname = CString::new(name.clone()).expect("no NUL in a file name");
    let fail =
        |what: &str, e: result::NvrtcError| format!("NVRTC {what} failed on kernels/{name}: {e}");
    let prog = result::create_program(&src, Some(&cname)).map_err(|e| fail("create", e))?;
    // SAFETY: prog is a live program until destroy_program below; every buffer passed is sized
    // by the matching *Size call.
    let out = unsafe {
        let r = match result::compile_program(prog, opts) {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned());
                Err(format!(
                    "NVRTC could not compile kernels/{name} ({e:?}):\n{}",
                    log.unwrap_or_default()
                ))
            }
            Ok(()) => result::get_ptx(prog)
                .map(|p| CStr::from_ptr(p.as_ptr()).to_string_lossy().into_owned())
                .map_err(|e| fail("get PTX", e))
                .and_then(|ptx| {
                    if !want_cubin {
                        return Ok(Compiled { ptx, cubin: None });
                    }
                    let mut size = 0usize;
                    sys::nvrtcGetCUBINSize(prog, &mut size)
                        .result()
                        .map_err(|e| fail("get CUBIN size", e))?;
                    let mut cubin = vec![0u8; size];
                    sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut _)
                        .result()
                        .map_err(|e| fail("get CUBIN", e))?;
                    Ok(Compiled { ptx, cubin: (size > 0).then_some(cubin) })
                }),
        };
        let _ = result::destroy_program(prog);
        r
    };
    out
}

fn disk_path(
    file: KernelFile,
    arch: &str,
    source: &str,
    opts: &[String],
    v: (i32, i32),
    ext: &str,
) -> Option<PathBuf> {
    let dir = tandem_core::cache::dir().ok()?.join("kernels");
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    for o in opts {
        h.update(o.as_bytes());
        h.update([0]);
    }
    h.update(format!("nvrtc {}.{}", v.0, v.1).as_bytes());
    let hex: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join(format!("{}-{arch}-{hex}.{ext}", file.name())))
}

/// Another process may be writing the same entry: write a temporary file and rename it.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use tandem_core::DType;

    /// common.cuh's `DT_*` numbers are `DType::kernel_code`'s: the host picks a kernel by it.
    #[test]
    fn dtype_numbers_are_the_cores() {
        let defines: Vec<(String, u32)> = super::PRELUDE
            .lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("#define DT_")?.split_whitespace();
                Some((w.next()?.to_lowercase(), w.next()?.parse().ok()?))
            })
            .collect();
        // Every weight type, then fp8 (a KV cache type): its number is DT_FP8 too.
        let want: Vec<(String, u32)> = DType::ALL
            .iter()
            .filter_map(|d| Some((d.name().to_string(), d.kernel_code()?)))
            .collect();
        assert_eq!(defines, want);
    }
}
