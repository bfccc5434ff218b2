//! Hashing of input files (checkpoints of 10+ GB, datasets) with a persistent memo, so an
//! unchanged file is read once per cache, not once per run.
//!
//! The memo (`<cache>/v1/filehash.json`) maps a canonical path to the file's stamp — size, mtime
//! and ctime in ns, device and inode — and its blake3. A lookup whose stamp matches is trusted
//! without reading the file. Files modified in the last [`RACY_WINDOW`] are hashed but not
//! memoised: a rewrite within the file system's timestamp granularity could keep the same stamp.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::CacheError;
use super::fsutil::atomic_write;
use super::key::Digest;
use super::store::Cache;

/// Version of `filehash.json`.
pub const FILEHASH_SCHEMA: u32 = 1;

/// Files modified more recently than this are not memoised.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// blake3 of a file's bytes, read a buffer at a time and each buffer hashed on the rayon pool.
/// No memo. Not memory-mapped: a mapped checkpoint's pages count as the process's resident
/// memory, so hashing a 13 GB model would look like holding it.
pub fn blake3_file(path: &Path) -> std::io::Result<Digest> {
    use std::io::Read;
    const BUFFER: usize = 8 << 20;
    let mut file = fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; BUFFER];
    loop {
        // Fill the buffer (reads may come short) so each rayon update gets a large slice.
        let mut filled = 0;
        while filled < BUFFER {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        h.update_rayon(&buf[..filled]);
        if filled < BUFFER {
            break;
        }
    }
    Ok(h.finalize().into())
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    dev: u64,
    inode: u64,
}

impl Stamp {
    #[cfg(unix)]
    fn of(m: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
            dev: m.dev(),
            inode: m.ino(),
        }
    }

    #[cfg(not(unix))]
    fn of(m: &fs::Metadata) -> Stamp {
        let ns = |t: std::io::Result<SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64)
        };
        Stamp {
            size: m.len(),
            mtime_ns: ns(m.modified()),
            ctime_ns: ns(m.created()),
            dev: 0,
            inode: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MemoEntry {
    #[serde(flatten)]
    stamp: Stamp,
    blake3: Digest,
}

#[derive(Serialize, Deserialize)]
struct MemoFile {
    schema: u32,
    files: BTreeMap<String, MemoEntry>,
}

/// Counters since the hasher was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Files answered from the memo without being read.
    pub memo_hits: u64,
    /// Files actually read and hashed.
    pub hashed: u64,
    pub bytes_hashed: u64,
}

/// Hashes files, remembering unchanged ones. Shareable between threads.
#[derive(Debug)]
pub struct FileHasher {
    memo_path: PathBuf,
    memo: Mutex<BTreeMap<String, MemoEntry>>,
    dirty: AtomicBool,
    hits: AtomicU64,
    hashed: AtomicU64,
    bytes: AtomicU64,
}

impl FileHasher {
    /// The hasher of a cache, with its saved memo.
    pub fn load(cache: &Cache) -> Result<FileHasher, CacheError> {
        FileHasher::load_from(&cache.filehash_path())
    }

    /// A hasher with the memo saved at `memo_path`. A missing memo is empty; an unreadable one is
    /// dropped with a warning (it only costs rehashing).
    pub fn load_from(memo_path: &Path) -> Result<FileHasher, CacheError> {
        let hasher = FileHasher::empty(memo_path.to_path_buf());
        let files = read_memo(memo_path)?;
        *hasher.memo.lock().unwrap_or_else(|p| p.into_inner()) = files;
        Ok(hasher)
    }

    /// A hasher with an empty memo that [`FileHasher::save`] writes to `memo_path`.
    pub fn empty(memo_path: PathBuf) -> FileHasher {
        FileHasher {
            memo_path,
            memo: Mutex::new(BTreeMap::new()),
            dirty: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            hashed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> HashStats {
        HashStats {
            memo_hits: self.hits.load(Ordering::Relaxed),
            hashed: self.hashed.load(Ordering::Relaxed),
            bytes_hashed: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// The blake3 of a file's bytes; from the memo when the file is unchanged.
    pub fn hash_file(&self, path: &Path) -> Result<Digest, CacheError> {
        let canon = fs::canonicalize(path).map_err(CacheError::io("find", path))?;
        let before = fs::metadata(&canon).map_err(CacheError::io("stat", &canon))?;
        if !before.is_file() {
            return Err(CacheError::Io {
                action: "hash",
                path: canon,
                source: std::io::Error::other("not a regular file"),
            });
        }
        let stamp = Stamp::of(&before);
        let memo_key = canon.to_string_lossy().into_owned();
        if let Some(e) = self.lock().get(&memo_key) {
            if e.stamp == stamp {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(e.blake3);
            }
        }
        let digest = blake3_file(&canon).map_err(CacheError::io("hash", &canon))?;
        let after = fs::metadata(&canon).map_err(CacheError::io("stat", &canon))?;
        if Stamp::of(&after) != stamp {
            return Err(CacheError::FileChanged { path: canon });
        }
        self.hashed.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(stamp.size, Ordering::Relaxed);
        let settled = before
            .modified()
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= RACY_WINDOW);
        if settled {
            self.lock().insert(
                memo_key,
                MemoEntry {
                    stamp,
                    blake3: digest,
                },
            );
            self.dirty.store(true, Ordering::Relaxed);
        }
        Ok(digest)
    }

    /// Hashes several files in parallel, in the order given.
    pub fn hash_files(&self, paths: &[PathBuf]) -> Result<Vec<Digest>, CacheError> {
        paths.par_iter().map(|p| self.hash_file(p)).collect()
    }

    /// Writes the memo atomically, merged with what other processes saved meanwhile (our entries
    /// win). Does nothing when nothing new was learnt.
    pub fn save(&self) -> Result<(), CacheError> {
        if !self.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut memo = self.lock();
        let on_disk = read_memo(&self.memo_path).unwrap_or_default();
        for (k, v) in on_disk {
            memo.entry(k).or_insert(v);
        }
        let file = MemoFile {
            schema: FILEHASH_SCHEMA,
            files: memo.clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|source| CacheError::Json {
            path: self.memo_path.clone(),
            source,
        })?;
        atomic_write(&self.memo_path, &bytes)?;
        self.dirty.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MemoEntry>> {
        // The map stays consistent even if a holder panicked: every update is one insert.
        self.memo.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn read_memo(path: &Path) -> Result<BTreeMap<String, MemoEntry>, CacheError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(CacheError::io("read", path)(e)),
    };
    match serde_json::from_slice::<MemoFile>(&bytes) {
        Ok(m) if m.schema == FILEHASH_SCHEMA => Ok(m.files),
        Ok(m) => {
            tracing::warn!(path = %path.display(), schema = m.schema, "file-hash memo has another schema; starting empty");
            Ok(BTreeMap::new())
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "file-hash memo is unreadable; starting empty");
            Ok(BTreeMap::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// Writes `bytes` and dates the file back past the racy window, as an old checkpoint would be.
    fn settled_file(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn digest_is_blake3_of_the_bytes() {
        let t = tempfile::tempdir().unwrap();
        // Empty, small, above one chunk group, and across read buffers (8 MiB) with a remainder.
        for len in [0usize, 5, 20_000, 3 << 20, (16 << 20) + 12_345] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = t.path().join(format!("f{len}"));
            fs::write(&p, &bytes).unwrap();
            let h = FileHasher::empty(t.path().join("memo.json"));
            assert_eq!(
                h.hash_file(&p).unwrap(),
                Digest::of_bytes(&bytes),
                "len {len}"
            );
        }
    }

    #[test]
    fn memo_hit_skips_reading_and_changes_rehash() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ckpt.bin");
        settled_file(&p, b"weights v1");
        let h = FileHasher::empty(t.path().join("memo.json"));
        let d1 = h.hash_file(&p).unwrap();
        let d2 = h.hash_file(&p).unwrap();
        assert_eq!(d1, d2);
        assert_eq!(
            h.stats(),
            HashStats {
                memo_hits: 1,
                hashed: 1,
                bytes_hashed: 10
            }
        );

        // Same size, new content, new mtime: rehashed.
        settled_file(&p, b"weights v2");
        let d3 = h.hash_file(&p).unwrap();
        assert_eq!(d3, Digest::of_bytes(b"weights v2"));
        assert_eq!(h.stats().hashed, 2);

        // A longer file with its old mtime restored (as `cp -p` or rsync would do): rehashed.
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        fs::write(&p, b"weights v3, longer").unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(
            h.hash_file(&p).unwrap(),
            Digest::of_bytes(b"weights v3, longer")
        );
        assert_eq!(h.stats().hashed, 3);
    }

    #[test]
    fn recent_files_are_not_memoised() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("fresh");
        fs::write(&p, b"just written").unwrap();
        let h = FileHasher::empty(t.path().join("memo.json"));
        h.hash_file(&p).unwrap();
        h.hash_file(&p).unwrap();
        assert_eq!(h.stats().memo_hits, 0);
        assert_eq!(h.stats().hashed, 2);
    }

    #[test]
    fn memo_persists_through_save_and_load_and_merges() {
        let t = tempfile::tempdir().unwrap();
        let memo = t.path().join("memo.json");
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        settled_file(&a, b"aaa");
        settled_file(&b, b"bbb");

        let h1 = FileHasher::load_from(&memo).unwrap();
        h1.hash_file(&a).unwrap();
        let h2 = FileHasher::load_from(&memo).unwrap();
        h2.hash_file(&b).unwrap();
        h1.save().unwrap();
        h2.save().unwrap(); // must keep h1's entry for `a`

        let h3 = FileHasher::load_from(&memo).unwrap();
        let d = h3.hash_files(&[a.clone(), b.clone(), a.clone()]).unwrap();
        assert_eq!(
            d,
            vec![
                Digest::of_bytes(b"aaa"),
                Digest::of_bytes(b"bbb"),
                Digest::of_bytes(b"aaa")
            ]
        );
        assert_eq!(h3.stats().memo_hits, 3);
        assert_eq!(h3.stats().hashed, 0);
    }

    #[test]
    fn garbage_memo_is_ignored_and_missing_file_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let memo = t.path().join("memo.json");
        fs::write(&memo, b"{not json").unwrap();
        let h = FileHasher::load_from(&memo).unwrap();
        let err = h.hash_file(&t.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn concurrent_use_from_threads() {
        let t = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..8)
            .map(|i| {
                let p = t.path().join(format!("f{i}"));
                settled_file(&p, format!("file {i}").as_bytes());
                p
            })
            .collect();
        let h = FileHasher::empty(t.path().join("memo.json"));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for (i, p) in paths.iter().enumerate() {
                        let d = h.hash_file(p).unwrap();
                        assert_eq!(d, Digest::of_bytes(format!("file {i}").as_bytes()));
                    }
                });
            }
        });
        let s = h.stats();
        assert_eq!(s.memo_hits + s.hashed, 32);
        assert!(s.hashed >= 8 && s.memo_hits >= 8, "{s:?}");
    }
}
