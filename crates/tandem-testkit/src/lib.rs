//! Where tandem's tests find their models, and what a missing one means.
//!
//! A test whose model is missing prints `SKIP <test>: <reason>` and returns, so that a checkout
//! without `../shared/models` still runs everything else. With `TANDEM_REQUIRE_MODELS=1` (as
//! `.ci/run` sets it) the same lookup panics instead, naming the path it looked for and the
//! variable that demands it: where the models are supposed to be, a test cannot pass by not
//! running. Every test finds its models through here; this crate is a dev-dependency only.

use std::path::{Path, PathBuf};

/// Overrides where the shared models are (default: `shared/models` beside the repository).
pub const SHARED_MODELS_VAR: &str = "TANDEM_SHARED_MODELS";
/// A SmolLM2-135M-Instruct Q4_1 file to use instead of the default model in tandem's cache.
pub const SMOLLM_GGUF_VAR: &str = "TANDEM_SMOLLM_GGUF";
/// Set to anything but empty or `0`: a missing model fails its test instead of skipping it.
pub const REQUIRE_MODELS_VAR: &str = "TANDEM_REQUIRE_MODELS";

/// `$TANDEM_SHARED_MODELS`, else `../shared/models` beside the repository.
pub fn shared_models_dir() -> PathBuf {
    std::env::var_os(SHARED_MODELS_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models"))
}

/// Whether `TANDEM_REQUIRE_MODELS` asks for every model to be present.
pub fn models_required() -> bool {
    std::env::var_os(REQUIRE_MODELS_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `name`'s folder in the shared models (`stories260K`, say) when it holds every one of
/// `files`; otherwise the reason, naming the path looked for, for the caller to print as its
/// SKIP. Panics with that reason instead under `TANDEM_REQUIRE_MODELS=1`.
#[track_caller]
pub fn find_shared_model(name: &str, files: &[&str]) -> Result<PathBuf, String> {
    let dir = shared_models_dir().join(name);
    match missing_files(&dir, name, files) {
        None => Ok(dir),
        Some(why) => Err(model_missing(why)),
    }
}

/// [`find_shared_model`], printing `SKIP <test>: <reason>` when the model is missing (the
/// caller then returns).
#[track_caller]
pub fn shared_model(name: &str, files: &[&str]) -> Option<PathBuf> {
    find_shared_model(name, files).map_err(|why| skip(&why)).ok()
}

/// A model file found some other way (the default model in tandem's cache, say): `path` when
/// it is a file; otherwise the reason (`hint` says how to provide it), or a panic under
/// `TANDEM_REQUIRE_MODELS=1`.
#[track_caller]
pub fn find_model_file(what: &str, path: &Path, hint: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(model_missing(format!("{what} not found at {} ({hint})", path.display())))
    }
}

/// [`find_model_file`], printing `SKIP <test>: <reason>` when the file is missing.
#[track_caller]
pub fn model_file(what: &str, path: &Path, hint: &str) -> Option<PathBuf> {
    find_model_file(what, path, hint).map_err(|why| skip(&why)).ok()
}

/// The default model (SmolLM2-135M-Instruct Q4_1) for a test that does not fetch it:
/// `$TANDEM_SMOLLM_GGUF`, else `cached`, where tandem's cache keeps it (the caller passes
/// `tandem_tools::default_model::path().ok()`: this crate knows no engine). Missing, it prints
/// `SKIP <test>: <reason>`, or fails under `TANDEM_REQUIRE_MODELS=1`.
#[track_caller]
pub fn default_model(cached: Option<PathBuf>) -> Option<PathBuf> {
    let path = std::env::var_os(SMOLLM_GGUF_VAR).map(PathBuf::from).or(cached).unwrap_or_default();
    model_file(
        "SmolLM2-135M-Instruct Q4_1 (the default model)",
        &path,
        "`tandem inspect` fetches it; or set TANDEM_SMOLLM_GGUF",
    )
}

/// `reason` (a needed model is missing) returned for a SKIP line, or a panic with it under
/// `TANDEM_REQUIRE_MODELS=1`.
#[track_caller]
pub fn model_missing(reason: String) -> String {
    required_or(reason, models_required())
}

/// Prints `SKIP <test>: <why>`; the test's name is its thread's, as the test harness names it.
pub fn skip(why: &str) {
    match std::thread::current().name() {
        Some(test) if test != "main" => eprintln!("SKIP {test}: {why}"),
        _ => eprintln!("SKIP: {why}"),
    }
}

/// Why `dir` is not the model `name` (the files of `files` it lacks), or `None`.
fn missing_files(dir: &Path, name: &str, files: &[&str]) -> Option<String> {
    let missing: Vec<&str> = files.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{name} not found: no {} in {} (set {SHARED_MODELS_VAR})",
            missing.join(", "),
            dir.display()
        )
    })
}

#[track_caller]
fn required_or(reason: String, required: bool) -> String {
    if required {
        panic!("{reason}; {REQUIRE_MODELS_VAR}=1 requires every test model to be present");
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_names_the_path_the_files_and_the_variable() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(missing_files(dir, "testkit", &["Cargo.toml", "src/lib.rs"]), None);
        let why = missing_files(dir, "testkit", &["Cargo.toml", "a.bin", "b.json"]).unwrap();
        assert_eq!(
            why,
            format!(
                "testkit not found: no a.bin, b.json in {} (set TANDEM_SHARED_MODELS)",
                dir.display()
            )
        );
    }

    #[test]
    fn without_the_requirement_a_missing_model_is_a_reason_to_skip() {
        assert_eq!(required_or("gone".into(), false), "gone");
    }

    #[test]
    #[should_panic(
        expected = "gone; TANDEM_REQUIRE_MODELS=1 requires every test model to be present"
    )]
    fn with_the_requirement_a_missing_model_fails() {
        required_or("gone".into(), true);
    }
}
