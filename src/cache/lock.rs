//! Advisory locks between processes sharing one cache (`flock(2)`, through `std::fs::File::lock`).
//!
//! ```text
//! <root>/v1/locks/<key-hex>.lock      held exclusively while that entry is being built
//! <root>/v1/locks/gc.lock             shared while a run adds a key to its lease, exclusive
//!                                     while gc decides what to remove
//! <root>/v1/leases/<run-id>.lease     one per live run, held exclusively by it: the keys
//!                                     (hex, one a line) of every entry it reads or builds
//! ```
//!
//! The kernel drops a `flock` when the process holding it dies, SIGKILL included, so a crashed run
//! leaves no stale lock by construction: the next run or gc finds every lock file free. A lease
//! file that nobody holds is a dead run's and gc deletes it. Lock files themselves are never
//! deleted (removing one while another process waits on it would let two builders in).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::error::CacheError;
use super::fsutil::unique_suffix;
use super::key::Digest;
use super::store::{read_dir_paths, Cache};

const GC_LOCK: &str = "gc.lock";
const LEASE_EXT: &str = "lease";

/// The exclusive right to build one entry; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct BuildLock {
    _file: File,
}

/// A run's claim on the entries it needs: gc leaves them alone while the run lives.
#[derive(Debug)]
pub struct Lease {
    file: Mutex<File>,
    path: PathBuf,
    gc_lock: PathBuf,
}

fn open_lock_file(path: &Path) -> Result<File, CacheError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(CacheError::write("open lock file", path))
}

impl Cache {
    pub(crate) fn locks_dir(&self) -> PathBuf {
        self.base().join("locks")
    }

    pub(crate) fn leases_dir(&self) -> PathBuf {
        self.base().join("leases")
    }

    fn build_lock_path(&self, key: &Digest) -> PathBuf {
        self.locks_dir().join(format!("{}.lock", key.hex()))
    }

    /// The build lock of `key` if no other builder holds it, else `None`.
    pub fn try_lock_build(&self, key: &Digest) -> Result<Option<BuildLock>, CacheError> {
        let path = self.build_lock_path(key);
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(BuildLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(CacheError::io("lock", &path)(e)),
        }
    }

    /// The build lock of `key`, waiting for whoever holds it.
    pub fn lock_build(&self, key: &Digest) -> Result<BuildLock, CacheError> {
        let path = self.build_lock_path(key);
        let file = open_lock_file(&path)?;
        file.lock().map_err(CacheError::io("lock", &path))?;
        Ok(BuildLock { _file: file })
    }

    /// Opens the lease of the run `run_id`.
    pub fn lease(&self, run_id: &str) -> Result<Lease, CacheError> {
        let dir = self.leases_dir();
        fs::create_dir_all(&dir).map_err(CacheError::write("create directory", &dir))?;
        // Locked before it gets its name, so gc never sees it unheld.
        let staging = dir.join(format!(".{run_id}-{}", unique_suffix()));
        let file = open_lock_file(&staging)?;
        file.lock().map_err(CacheError::io("lock", &staging))?;
        let path = dir.join(format!("{run_id}.{LEASE_EXT}"));
        fs::rename(&staging, &path).map_err(CacheError::write("rename into place", &path))?;
        Ok(Lease {
            file: Mutex::new(file),
            path,
            gc_lock: self.locks_dir().join(GC_LOCK),
        })
    }

    /// Whether the run `run_id` is alive: its lease exists and is held.
    pub fn run_alive(&self, run_id: &str) -> bool {
        let path = self.leases_dir().join(format!("{run_id}.{LEASE_EXT}"));
        let Ok(file) = File::open(&path) else {
            return false;
        };
        matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
    }

    /// Holds gc's lock for as long as the guard lives: no run adds to its lease meanwhile.
    pub(crate) fn lock_for_gc(&self) -> Result<BuildLock, CacheError> {
        let dir = self.locks_dir();
        fs::create_dir_all(&dir).map_err(CacheError::write("create directory", &dir))?;
        let path = dir.join(GC_LOCK);
        let file = open_lock_file(&path)?;
        file.lock().map_err(CacheError::io("lock", &path))?;
        Ok(BuildLock { _file: file })
    }

    /// The keys that live runs hold. Leases of dead runs are deleted. Call under
    /// [`Cache::lock_for_gc`], or a run may add a key right after.
    pub(crate) fn leased_keys(&self, dry_run: bool) -> Result<HashSet<Digest>, CacheError> {
        let mut keys = HashSet::new();
        let dir = self.leases_dir();
        if !dir.exists() {
            return Ok(keys);
        }
        for path in read_dir_paths(&dir)? {
            if path.extension().is_none_or(|e| e != LEASE_EXT) {
                continue;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CacheError::io("open", &path)(e)),
            };
            match file.try_lock_shared() {
                Ok(()) => {
                    // Nobody holds it: its run is over (it crashed, or is about to delete it).
                    if !dry_run {
                        let _ = fs::remove_file(&path);
                    }
                }
                Err(TryLockError::WouldBlock) => {
                    let text = fs::read_to_string(&path).map_err(CacheError::io("read", &path))?;
                    keys.extend(text.lines().filter_map(Digest::from_hex));
                }
                Err(TryLockError::Error(e)) => return Err(CacheError::io("lock", &path)(e)),
            }
        }
        Ok(keys)
    }
}

impl Lease {
    /// Adds `key` to the lease. Call before looking the entry up, so that gc either ran before
    /// (and the lookup misses) or sees the key.
    pub fn hold(&self, key: &Digest) -> Result<(), CacheError> {
        let gc = open_lock_file(&self.gc_lock)?;
        gc.lock_shared()
            .map_err(CacheError::io("lock", &self.gc_lock))?;
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(f, "{}", key.hex()).map_err(CacheError::write("write", &self.path))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
