//! Compiles every `kernels/*.cu` with NVRTC exactly as the CUDA backend does at run time and
//! writes the PTX into a directory, for `ptxas` to assemble in CI (scripts/check-kernels.sh).
//! No GPU is needed, only libnvrtc.
//!
//! ```text
//! tandem-kernels --arch sm_80 --out DIR
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use tandem_cuda::kernels::{self, KernelFile};

fn main() -> ExitCode {
    let mut arch = None;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--arch" => arch = args.next(),
            "--out" => out = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: tandem-kernels --arch sm_XY --out DIR (unknown argument {a:?})");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(arch), Some(out)) = (arch, out) else {
        eprintln!("usage: tandem-kernels --arch sm_XY --out DIR");
        return ExitCode::from(2);
    };
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("{}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    match kernels::nvrtc_version() {
        Ok((major, minor)) => eprintln!("NVRTC {major}.{minor}, {arch}"),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    let mut failed = 0;
    for file in KernelFile::ALL {
        let started = std::time::Instant::now();
        match kernels::compile(file, &file.source(), &kernels::options(&arch)) {
            Ok(ptx) => {
                let path = out.join(format!("{}.ptx", file.name()));
                if let Err(e) = std::fs::write(&path, ptx) {
                    eprintln!("{}: {e}", path.display());
                    failed += 1;
                } else {
                    eprintln!(
                        "{:>20}.cu -> {} ({} ms)",
                        file.name(),
                        path.display(),
                        started.elapsed().as_millis()
                    );
                }
            }
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} kernel file(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
