//! Errors of the cache: each names the path concerned and, where there is one, what to do.

use std::io;
use std::path::{Path, PathBuf};

use super::key::Digest;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "cache directory {} is not writable: pass --cache-dir or set WHITTLE_CACHE_DIR",
        path.display()
    )]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cache entry {} is corrupt ({reason}); it was moved to quarantine, rerun to recompute it", dir.display())]
    Corrupt { dir: PathBuf, reason: String },

    #[error("cache entry {} is corrupt ({reason}); `whittle verify` quarantines it and the next run recomputes it", dir.display())]
    Unverified { dir: PathBuf, reason: String },

    #[error("{} is not valid JSON of the expected shape", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{} has schema {found}, this whittle reads schema {expected}; remove it or run `whittle gc`", path.display())]
    Schema {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error("stage output {} cannot be stored: {reason}", path.display())]
    BadStagedFile { path: PathBuf, reason: String },

    #[error("entry written under key {key} but its key inputs hash to {computed}: the caller must key entries by `KeyInputs::digest()`")]
    KeyMismatch { key: Digest, computed: Digest },

    #[error("run id `{run_id}` is not valid: use letters, digits, `-` and `_`")]
    BadRunId { run_id: String },

    #[error("{} changed while it was being hashed; is something still writing it?", path.display())]
    FileChanged { path: PathBuf },
}

impl CacheError {
    /// Wraps an I/O error with what was being done and on which path.
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
        let path = path.to_path_buf();
        move |source| CacheError::Io {
            action,
            path,
            source,
        }
    }

    /// Like [`CacheError::io`] for writes inside the cache directory: permission problems become
    /// [`CacheError::NotWritable`], whose message says how to pick another directory.
    pub(crate) fn write(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
        let path = path.to_path_buf();
        move |source| {
            if matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) {
                CacheError::NotWritable { path, source }
            } else {
                CacheError::Io {
                    action,
                    path,
                    source,
                }
            }
        }
    }
}
