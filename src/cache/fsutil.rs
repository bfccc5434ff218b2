//! Durable file-system primitives: fsync'd atomic writes, directory syncs, unique names.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::error::CacheError;

/// Makes a directory's entries (creations, renames) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(CacheError::write("sync directory", dir))
}

/// A short random suffix for temp, staging and quarantine names.
pub(crate) fn unique_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Writes `bytes` to `path` so that readers see either the old file or the whole new one, even
/// across a crash: temp file in the same directory, fsync, rename, fsync of the directory.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        unique_suffix()
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(CacheError::write("create", &tmp))?;
        f.write_all(bytes)
            .map_err(CacheError::write("write", &tmp))?;
        f.sync_all().map_err(CacheError::write("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(CacheError::write("rename into place", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether a process with this id runs on this machine. `None` where that cannot be told.
pub(crate) fn process_alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return None;
    }
    Some(proc.join(pid.to_string()).exists())
}

/// Total size of the regular files under `dir`, or of `dir` itself if it is a file (0 when it
/// cannot be read).
pub(crate) fn tree_size(dir: &Path) -> u64 {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) => return m.len(),
        Err(_) => return 0,
    }
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

/// The latest modification time of `dir` or anything under it: when it was last written to.
pub(crate) fn tree_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut latest = fs::symlink_metadata(dir).and_then(|m| m.modified()).ok()?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if let Ok(t) = m.modified() {
                latest = latest.max(t);
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Some(latest)
}

/// Reads a JSON file that carries a `schema` version, refusing any other version before
/// parsing the rest (so a newer layout is reported as such, not as a parse error).
pub(crate) fn read_versioned<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    expected: u32,
) -> Result<T, CacheError> {
    #[derive(serde::Deserialize)]
    struct SchemaOnly {
        schema: u32,
    }
    let bytes = std::fs::read(path).map_err(CacheError::io("read", path))?;
    let json = |source| CacheError::Json {
        path: path.to_path_buf(),
        source,
    };
    let head: SchemaOnly = serde_json::from_slice(&bytes).map_err(json)?;
    if head.schema != expected {
        return Err(CacheError::Schema {
            path: path.to_path_buf(),
            found: head.schema,
            expected,
        });
    }
    serde_json::from_slice(&bytes).map_err(json)
}
