//! llama.cpp's tools and SmolLM2 files made by its quantizer, for the tests that compare
//! tandem with llama.cpp on K-quant files (kquant_e2e, kquant_perplexity).
//!
//! The tools come from `bench/build-llamacpp.sh` (its cache, or `$TANDEM_LLAMA_QUANTIZE` /
//! `$TANDEM_LLAMA_PERPLEXITY`); gguf and numpy from `$TANDEM_GGUF_PYTHON` (else `python3`,
//! with PYTHONPATH as .ci/run sets it). Missing tools are a [`Skip`], except where
//! `$TANDEM_REQUIRE_LLAMACPP` is set (CI sets it, having installed them): there a missing tool
//! fails the test, so CI can never pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::e2e::{self, Skip};

/// The llama-cpp-python release whose llama.cpp `bench/build-llamacpp.sh` builds by default.
pub const LLAMACPP_PY_VERSION: &str = "0.3.36";

/// The quantizer's file types these tests make from SmolLM2 (`llama-quantize` names). On its
/// 576-wide rows, not whole 256-element blocks, each K type falls back for most matrices
/// (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, Q2_K and Q3_K to Q4_0 with this llama.cpp), so
/// only ffn_down (1536 wide) keeps a K type, and the Q3_K_M and Q2_K mixes give it Q4_K/Q5_K
/// and Q3_K: no Q3_K_M file would hold a Q3_K block, nor a Q2_K file a Q2_K block. For the
/// end-to-end test those two set ffn_down to their own type ([`quantized_with_own_blocks`]),
/// so every K type is on that test.
pub const FTYPES: [&str; 5] = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K"];

/// `llama-quantize` options that put `ftype`'s own block type into the file (see [`FTYPES`]).
fn overrides(ftype: &str) -> &'static [&'static str] {
    match ftype {
        "Q3_K_M" => &["--tensor-type", "ffn_down=q3_k"],
        "Q2_K" => &["--tensor-type", "ffn_down=q2_k"],
        _ => &[],
    }
}

/// A Skip, or a panic where CI requires the tools.
pub fn missing(why: String) -> Skip {
    if std::env::var_os("TANDEM_REQUIRE_LLAMACPP").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("TANDEM_REQUIRE_LLAMACPP is set but {why}");
    }
    Skip(why)
}

fn tool(env: &str, name: &str) -> Result<PathBuf, Skip> {
    let path = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => tandem_core::cache::dir()
            .map_err(|e| missing(format!("no cache directory: {e}")))?
            .join(format!("llamacpp/{LLAMACPP_PY_VERSION}/build/bin/{name}")),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(format!(
            "{name} not found at {} (run bench/build-llamacpp.sh or set {env})",
            path.display()
        )))
    }
}

pub fn quantizer() -> Result<PathBuf, Skip> {
    tool("TANDEM_LLAMA_QUANTIZE", "llama-quantize")
}

pub fn perplexity_tool() -> Result<PathBuf, Skip> {
    tool("TANDEM_LLAMA_PERPLEXITY", "llama-perplexity")
}

/// A Python that imports gguf and numpy.
pub fn python() -> Result<String, Skip> {
    let py = std::env::var("TANDEM_GGUF_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&py).args(["-c", "import gguf, numpy"]).output() {
        Ok(o) if o.status.success() => Ok(py),
        _ => Err(missing(format!("'{py}' cannot import gguf and numpy (pip install gguf==0.19.0 numpy; or set TANDEM_GGUF_PYTHON)"))),
    }
}

/// Runs `cmd`, panicking with its stderr if it fails; returns its stdout and stderr.
pub fn run(cmd: &mut Command, what: &str) -> (String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{what} failed: {}\n{stderr}", out.status);
    (stdout, stderr)
}

/// FNV-1a: a stable fingerprint for cache keys (std's hasher may change between releases).
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Where quantized files live between runs: one folder per quantizer binary and source model,
/// so a rebuilt llama.cpp or another model never reuses stale files.
fn cache_folder(quantize: &Path, src: &Path) -> Result<PathBuf, Skip> {
    let tool =
        std::fs::read(quantize).map_err(|e| missing(format!("{}: {e}", quantize.display())))?;
    let meta = std::fs::metadata(src).map_err(|e| Skip(format!("{}: {e}", src.display())))?;
    let name = src.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let key =
        fnv(&meta.len().to_le_bytes(), fnv(name.as_bytes(), fnv(&tool, 0xcbf2_9ce4_8422_2325)));
    let root = tandem_core::cache::dir().map_err(|e| Skip(format!("no cache directory: {e}")))?;
    Ok(root.join("kquant-fixtures").join(format!("{name}-{key:016x}")))
}

/// SmolLM2-135M-Instruct (the default model, Q4_1) requantized to `ftype`'s standard mix by
/// llama.cpp, made once and kept in the cache. Requantizing is lossy, which these tests do not
/// mind: they compare engines on the very same file.
pub fn quantized(ftype: &str) -> Result<PathBuf, Skip> {
    quantize_to(ftype, &[])
}

/// The same, with ffn_down in `ftype`'s own block type where the standard mix has none of it
/// (Q3_K_M, Q2_K: see [`FTYPES`]), for the tests of the block decoders. (Q2_K blocks there
/// make the model much worse, ~4x the perplexity, where llama.cpp's 8-bit activations move its
/// perplexity by almost 2% from the exact value; the perplexity test uses the standard mixes.)
pub fn quantized_with_own_blocks(ftype: &str) -> Result<PathBuf, Skip> {
    quantize_to(ftype, overrides(ftype))
}

fn quantize_to(ftype: &str, extra: &[&str]) -> Result<PathBuf, Skip> {
    let quantize = quantizer()?;
    let src = e2e::smollm_gguf()?;
    let dir = cache_folder(&quantize, &src)?;
    let suffix: String = extra
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(|a| format!("-{}", a.replace('=', "-")))
        .collect();
    let path = dir.join(format!("smollm2-{ftype}{suffix}.gguf"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    // Written under a name of its own, then renamed: two tests (or an interrupted run) never
    // leave a half-written file under the final name.
    let tmp = dir.join(format!(".smollm2-{ftype}.{}.tmp", std::process::id()));
    let mut cmd = Command::new(&quantize);
    cmd.arg("--allow-requantize").args(extra).arg(&src).arg(&tmp).arg(ftype).arg("2");
    run(&mut cmd, &format!("llama-quantize {ftype}"));
    std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Ok(path)
}

/// The GGUF file types of a file's tensors, e.g. {"F32", "IQ4_NL", "Q2_K", ...}.
pub fn tensor_types(path: &Path) -> std::collections::BTreeSet<String> {
    let source =
        tandem_core::loader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    source.tensors.infos().iter().map(|i| i.file_dtype.clone()).collect()
}

/// llama-perplexity's final estimate ("Final estimate: PPL = 12.3456 +/- 0.12345") from its
/// output, wherever the line is and whatever log prefix it carries.
pub fn parse_final_ppl(output: &str) -> Option<f64> {
    output.lines().rev().find_map(|line| {
        let rest = &line[line.find("Final estimate")?..];
        let after = &rest[rest.find("PPL")? + 3..];
        let after = after.trim_start().strip_prefix('=')?;
        after.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::parse_final_ppl;

    #[test]
    fn final_estimate_is_found_in_log_output() {
        let out = "perplexity: calculating\n[1]12.0,[2]13.5,\nFinal estimate: PPL = 13.4521 +/- 0.51234\n\nllama_perf_context_print: ...";
        assert_eq!(parse_final_ppl(out), Some(13.4521));
        assert_eq!(parse_final_ppl("0.01.234.567 I Final estimate: PPL = 7.5 +/- 0.1"), Some(7.5));
        assert_eq!(parse_final_ppl("Final estimate: PPL =9"), Some(9.0));
        assert_eq!(parse_final_ppl("no estimate here"), None);
    }
}
