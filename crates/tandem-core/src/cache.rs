//! tandem's cache directory, outside any repository: the default model, compiled GPU kernels,
//! test fixtures.

use crate::{Error, Result};
use std::path::PathBuf;

/// `$TANDEM_CACHE_DIR`, else `$XDG_CACHE_HOME/tandem`, else `~/.cache/tandem`.
pub fn dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TANDEM_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("tandem"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("tandem")).ok_or_else(
        || Error::DefaultModel("no cache directory: set TANDEM_CACHE_DIR or HOME".into()),
    )
}
