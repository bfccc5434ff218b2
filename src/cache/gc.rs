//! Garbage collection: removing entries no longer wanted, abandoned staging directories and
//! quarantined entries.
//!
//! Removal is itself crash-safe: an entry is first renamed into `tmp/gc-<pid>-<random>` (one atomic
//! step after which no lookup can see it), then deleted; a crash in between leaves a `tmp/`
//! leftover for the next gc.
//!
//! Entries a live run holds (its lease, see `lock`) are never removed: gc takes the gc lock, so no
//! run can add to its lease meanwhile, and skips every key a live lease lists.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::error::CacheError;
use super::fsutil::{process_alive, tree_mtime, tree_size, unique_suffix};
use super::key::Digest;
use super::store::{read_dir_paths, Cache};

/// `tmp/` directories untouched for this long, whose writer is not running here, are abandoned.
pub const TMP_MAX_IDLE: Duration = Duration::from_secs(3600);

/// What to remove. With neither `keep` nor `older_than`, only `tmp/` and quarantine are cleaned.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// When given, every entry whose key is not in the set is removed.
    pub keep: Option<HashSet<Digest>>,
    /// When given, every entry created before this instant is removed (even one in `keep`).
    pub older_than: Option<jiff::Timestamp>,
    /// Report what would be removed without removing anything.
    pub dry_run: bool,
}

/// An entry gc removed (or, in a dry run, would remove).
#[derive(Clone, Debug, PartialEq)]
pub struct Removed {
    pub key: Digest,
    /// The stage instance label from its manifest (`?` when the manifest is unreadable).
    pub stage: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GcReport {
    /// Removed entries (or, in a dry run, entries that would be).
    pub removed: Vec<Removed>,
    /// Entries gc would have removed but left because a live run holds them.
    pub in_use: Vec<Digest>,
    /// Entries left in place.
    pub kept: usize,
    /// Bytes of removed entries, `tmp/` leftovers and quarantined entries together.
    pub freed_bytes: u64,
    /// Abandoned `tmp/` directories removed.
    pub tmp_cleaned: usize,
    /// Quarantined entries removed.
    pub quarantine_cleaned: usize,
}

impl Cache {
    /// Removes the entries `opts` selects (either criterion suffices), entries whose manifest is
    /// unreadable, abandoned `tmp/` items and everything in quarantine.
    pub fn gc(&self, opts: GcOptions) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        let _gc = self.lock_for_gc()?;
        let leased = self.leased_keys(opts.dry_run)?;
        for (key, manifest) in self.entries()? {
            let remove = match &manifest {
                // Unreadable manifests are corrupt entries: never usable, always removed.
                Err(_) => true,
                Ok(m) => {
                    let unwanted = opts.keep.as_ref().is_some_and(|k| !k.contains(&key));
                    let too_old = opts.older_than.is_some_and(|limit| {
                        m.created
                            .parse::<jiff::Timestamp>()
                            .map_or(true, |created| created < limit)
                    });
                    unwanted || too_old
                }
            };
            if !remove {
                report.kept += 1;
                continue;
            }
            if leased.contains(&key) {
                report.kept += 1;
                report.in_use.push(key);
                continue;
            }
            let dir = self.entry_dir(&key);
            let size = tree_size(&dir);
            if !opts.dry_run && !self.remove_tree(&dir)? {
                continue; // someone else removed it meanwhile
            }
            report.removed.push(Removed {
                key,
                stage: manifest.map_or_else(|_| "?".to_string(), |m| m.stage),
                bytes: size,
            });
            report.freed_bytes += size;
        }

        let now = SystemTime::now();
        for path in read_dir_paths(&self.tmp_dir())? {
            if !is_abandoned(&path, now) {
                continue;
            }
            report.freed_bytes += tree_size(&path);
            report.tmp_cleaned += 1;
            if !opts.dry_run {
                remove_any(&path)?;
            }
        }

        for path in read_dir_paths(&self.quarantine_dir())? {
            if path.is_dir() {
                report.quarantine_cleaned += 1;
            }
            report.freed_bytes += tree_size(&path);
            if !opts.dry_run {
                remove_any(&path)?;
            }
        }
        Ok(report)
    }

    /// Renames `dir` out of sight, then deletes it. `false` when it was already gone.
    fn remove_tree(&self, dir: &Path) -> Result<bool, CacheError> {
        let trash = self
            .tmp_dir()
            .join(format!("gc-{}-{}", std::process::id(), unique_suffix()));
        match fs::rename(dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(CacheError::write("move aside", dir)(e)),
        }
        fs::remove_dir_all(&trash).map_err(CacheError::write("remove", &trash))?;
        Ok(true)
    }
}

/// A `tmp/` item is abandoned when nothing in it was written for [`TMP_MAX_IDLE`] and the process
/// named in it (`w-<pid>-…`, `gc-<pid>-…`) is not running on this machine.
fn is_abandoned(path: &Path, now: SystemTime) -> bool {
    let idle = tree_mtime(path)
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|d| d >= TMP_MAX_IDLE);
    if !idle {
        return false;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let pid = name
        .as_deref()
        .and_then(|n| n.split('-').nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) => process_alive(pid) != Some(true),
        None => true,
    }
}

fn remove_any(path: &Path) -> Result<(), CacheError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(CacheError::write("remove", path)(e))
        }
        _ => Ok(()),
    }
}
