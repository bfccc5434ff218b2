//! The content-addressed store: stage outputs as immutable entries keyed by their [`KeyInputs`].
//!
//! Layout on disk (the `v1` bucket is [`LAYOUT_VERSION`]; bumping it orphans every older entry,
//! which `whittle gc` of the old version, or deleting the folder, then reclaims):
//!
//! ```text
//! <root>/CACHEDIR.TAG                          tells backup tools to skip the cache
//! <root>/v1/entries/<key[0..2]>/<key-hex>/     one entry: the stage's files (any sub-dirs)
//!                                  manifest.json   written LAST: its presence means "complete"
//! <root>/v1/tmp/w-<pid>-<random>/              staging of a write in progress (renamed into
//!                                              entries/ when complete; never read)
//! <root>/v1/tmp/gc-<pid>-<random>/             an entry being deleted (renamed out first)
//! <root>/v1/quarantine/<key-hex>-<random>/     corrupt entries moved aside (never read again),
//!                      <key-hex>-<random>.reason   why; both removed by gc
//! <root>/v1/runs/<run-id>.json                 run records (see `runs`)
//! <root>/v1/logs/<run-id>/...                  stage logs
//! <root>/v1/filehash.json                      memo of input-file hashes (see `filehash`)
//! <root>/v1/locks/, <root>/v1/leases/          build locks and run leases (see `lock`)
//! ```
//!
//! Crash safety: an entry appears in `entries/` only by one `rename` of a staging directory whose
//! files, sub-directories and manifest are already fsync'd, so a crash at any instant leaves no
//! entry or a complete one. Entries are never modified in place; removal renames them out first.

use std::fs::{self, File};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::CacheError;
use super::filehash::blake3_file;
use super::fsutil::{atomic_write, sync_dir, unique_suffix};
use super::key::{Digest, KeyHasher, KeyInputs};

/// Version of the on-disk layout, the `v<N>` bucket under the cache root.
pub const LAYOUT_VERSION: u32 = 1;
/// Version of `manifest.json`.
pub const MANIFEST_SCHEMA: u32 = 1;
/// The file whose presence marks an entry complete.
pub const MANIFEST_FILE: &str = "manifest.json";
/// An entry's metrics, when it has any; the manifest's `meta.metrics` must match it.
pub const METRICS_FILE: &str = "metrics.json";

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by whittle.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

/// One file of an entry, as recorded in its manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative to the entry directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub blake3: Digest,
}

/// An entry's `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub key: Digest,
    pub key_inputs: KeyInputs,
    pub kind: String,
    /// The stage instance label, e.g. `prune[method=wanda,sparsity=0.5]`.
    pub stage: String,
    pub pipeline: Option<String>,
    pub engine_version: String,
    pub device: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub duration_s: f64,
    /// Sorted by path.
    pub files: Vec<FileRecord>,
    /// What the entry holds, independent of how it was reached: downstream keys use this, so equal
    /// outputs from different routes share downstream entries.
    pub content: Digest,
    /// Stage-specific: metrics, sparsity per matrix, tensor digests…
    pub meta: serde_json::Value,
}

/// What the caller says about an entry it finishes; the store adds key, files, time and schema.
#[derive(Clone, Debug)]
pub struct EntryMeta {
    pub key_inputs: KeyInputs,
    pub kind: String,
    pub stage: String,
    pub pipeline: Option<String>,
    pub engine_version: String,
    pub device: String,
    pub duration_s: f64,
    /// Overrides the content digest computed from the files (e.g. a digest of tensor values that
    /// ignores how they were serialised).
    pub content: Option<Digest>,
    pub meta: serde_json::Value,
}

impl EntryMeta {
    /// Defaults: kind from the key inputs, this engine's version, device `cpu`, no metadata.
    pub fn new(key_inputs: KeyInputs, stage: impl Into<String>) -> Self {
        EntryMeta {
            kind: key_inputs.kind.clone(),
            key_inputs,
            stage: stage.into(),
            pipeline: None,
            engine_version: crate::ENGINE_VERSION.to_string(),
            device: "cpu".to_string(),
            duration_s: 0.0,
            content: None,
            meta: serde_json::Value::Null,
        }
    }
}

/// The result of [`Cache::lookup`].
#[derive(Debug)]
pub enum Lookup {
    Hit(Entry),
    Miss,
    /// The entry was unusable and has been moved to quarantine; the stage must be recomputed.
    Corrupt {
        reason: String,
    },
}

/// A complete entry in the store.
#[derive(Clone, Debug)]
pub struct Entry {
    dir: PathBuf,
    manifest: Arc<Manifest>,
    quarantine: PathBuf,
}

impl Entry {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn key(&self) -> Digest {
        self.manifest.key
    }

    pub fn content(&self) -> Digest {
        self.manifest.content
    }

    /// The path of one of the entry's files (`rel` as recorded in the manifest).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    /// The bytes of one recorded file, checked against its recorded hash: what is read out of
    /// the cache is what was stored. On a mismatch the entry is quarantined, as by
    /// [`Entry::verify`].
    pub fn read_verified(&self, rel: &str) -> Result<Vec<u8>, CacheError> {
        self.read_checked(rel).map_err(|e| match e {
            CacheError::Unverified { reason, .. } => self.corrupt(reason),
            e => e,
        })
    }

    /// Moves the entry to quarantine for `reason` and returns the error that says so.
    pub fn corrupt(&self, reason: String) -> CacheError {
        self.quarantine(&reason);
        CacheError::Corrupt {
            dir: self.dir.clone(),
            reason,
        }
    }

    /// Re-hashes every file against the manifest. On a mismatch the entry is moved to quarantine
    /// (so the next lookup misses and the stage is recomputed) and [`CacheError::Corrupt`] names why.
    pub fn verify(&self) -> Result<(), CacheError> {
        match self.check()? {
            None => Ok(()),
            Some(reason) => Err(self.corrupt(reason)),
        }
    }

    /// Re-hashes every file against the manifest, changing nothing: why the entry is corrupt, or
    /// `None` when every file matches.
    pub fn check(&self) -> Result<Option<String>, CacheError> {
        let problems = self
            .manifest
            .files
            .par_iter()
            .map(|rec| -> Result<Option<String>, CacheError> {
                let path = self.dir.join(&rec.path);
                let size = match fs::metadata(&path) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(Some(format!("file `{}` is missing", rec.path)))
                    }
                    Err(e) => return Err(CacheError::io("read", &path)(e)),
                };
                if size != rec.size {
                    return Ok(Some(size_reason(&rec.path, size, rec.size)));
                }
                let digest = blake3_file(&path).map_err(CacheError::io("hash", &path))?;
                Ok((digest != rec.blake3).then(|| {
                    format!(
                        "file `{}` hashes to {}, manifest says {}",
                        rec.path,
                        digest.short(),
                        rec.blake3.short()
                    )
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(p) = problems.into_iter().flatten().next() {
            return Ok(Some(p));
        }
        match self.metrics() {
            Ok(_) => Ok(None),
            Err(CacheError::Unverified { reason, .. }) => Ok(Some(reason)),
            Err(e) => Err(e),
        }
    }

    /// The metrics the entry records, read from its `metrics.json` after checking that file's
    /// hash; `meta.metrics` in the manifest must say the same (an edited manifest is corrupt).
    /// `None` for entries without metrics.
    pub fn metrics(
        &self,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, CacheError> {
        let in_manifest = self.manifest.meta.get("metrics");
        let has_file = self.manifest.files.iter().any(|f| f.path == METRICS_FILE);
        if !has_file {
            return match in_manifest {
                None => Ok(None),
                Some(_) => Err(self.unverified(format!(
                    "the manifest records metrics but the entry has no `{METRICS_FILE}`"
                ))),
            };
        }
        let bytes = self.read_checked(METRICS_FILE)?;
        let parsed: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.unverified(format!("`{METRICS_FILE}` does not parse: {e}")))?;
        let serde_json::Value::Object(map) = parsed else {
            return Err(self.unverified(format!("`{METRICS_FILE}` is not a JSON object")));
        };
        match in_manifest {
            Some(serde_json::Value::Object(m)) if *m == map => Ok(Some(map)),
            None => Ok(Some(map)),
            Some(_) => Err(self.unverified(format!(
                "the manifest's `meta.metrics` differs from `{METRICS_FILE}`"
            ))),
        }
    }

    fn unverified(&self, reason: String) -> CacheError {
        CacheError::Unverified {
            dir: self.dir.clone(),
            reason,
        }
    }

    /// Reads one of the entry's files, checking it against the hash its manifest records: for
    /// values the manifest also holds, so an edited manifest cannot pass for the stage's output.
    pub fn read_checked(&self, rel: &str) -> Result<Vec<u8>, CacheError> {
        let path = self.dir.join(rel);
        let corrupt = |reason: String| self.unverified(reason);
        let Some(rec) = self.manifest.files.iter().find(|f| f.path == rel) else {
            return Err(corrupt(format!("the manifest lists no `{rel}`")));
        };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(format!("file `{rel}` is missing")))
            }
            Err(e) => return Err(CacheError::io("read", &path)(e)),
        };
        let digest = Digest::of_bytes(&bytes);
        if digest != rec.blake3 {
            return Err(corrupt(format!(
                "file `{rel}` hashes to {}, manifest says {}",
                digest.short(),
                rec.blake3.short()
            )));
        }
        Ok(bytes)
    }

    /// Moves the entry to quarantine, noting why. Returns where it went (`None` when it was
    /// already gone).
    pub fn quarantine(&self, reason: &str) -> Option<PathBuf> {
        move_to_quarantine(&self.quarantine, &self.dir, &self.manifest.key, reason)
    }
}

fn size_reason(rel: &str, found: u64, expected: u64) -> String {
    format!("file `{rel}` has {found} bytes, manifest says {expected}")
}

/// A handle on a cache directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    base: PathBuf,
}

impl Cache {
    /// Opens the cache at `root`, creating its layout if needed, and checks that it is writable.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        let base = root.join(format!("v{LAYOUT_VERSION}"));
        let cache = Cache {
            root: root.to_path_buf(),
            base,
        };
        fs::create_dir_all(root).map_err(CacheError::write("create cache directory", root))?;
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            atomic_write(&tag, CACHEDIR_TAG.as_bytes())?;
        }
        for dir in [
            cache.entries_dir(),
            cache.tmp_dir(),
            cache.quarantine_dir(),
            cache.runs_dir(),
            cache.logs_dir(),
            cache.locks_dir(),
            cache.leases_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(CacheError::write("create directory", &dir))?;
        }
        // Creating directories that already exist says nothing about permissions: probe.
        let probe =
            cache
                .tmp_dir()
                .join(format!(".probe-{}-{}", std::process::id(), unique_suffix()));
        File::create(&probe).map_err(|source| CacheError::NotWritable {
            path: root.to_path_buf(),
            source,
        })?;
        let _ = fs::remove_file(&probe);
        Ok(cache)
    }

    /// A handle on the cache at `root` for commands that only read: creates nothing, and a
    /// cache that does not exist reads as empty.
    pub fn open_read_only(root: &Path) -> Cache {
        Cache {
            root: root.to_path_buf(),
            base: root.join(format!("v{LAYOUT_VERSION}")),
        }
    }

    /// Moves an entry out of `entries/` into the quarantine (with `reason`), so that its key
    /// is computed again; a no-op if it is already gone.
    pub fn set_aside(&self, entry: &Entry, reason: &str) -> Result<(), CacheError> {
        let key = entry.manifest().key;
        let dir = self.entry_dir(&key);
        let moved = !dir.exists()
            || move_to_quarantine(&self.quarantine_dir(), &dir, &key, reason).is_some();
        if !moved && dir.exists() {
            return Err(CacheError::write("move aside", &dir)(
                std::io::Error::other("rename into the quarantine failed"),
            ));
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The versioned bucket, `<root>/v<LAYOUT_VERSION>`.
    pub fn base(&self) -> &Path {
        &self.base
    }

    pub(crate) fn entries_dir(&self) -> PathBuf {
        self.base.join("entries")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.base.join("tmp")
    }

    pub(crate) fn quarantine_dir(&self) -> PathBuf {
        self.base.join("quarantine")
    }

    pub(crate) fn runs_dir(&self) -> PathBuf {
        self.base.join("runs")
    }

    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.base.join("logs")
    }

    pub(crate) fn filehash_path(&self) -> PathBuf {
        self.base.join("filehash.json")
    }

    /// Where the entry for `key` lives (whether or not it exists).
    pub fn entry_dir(&self, key: &Digest) -> PathBuf {
        let hex = key.hex();
        self.entries_dir().join(&hex[..2]).join(hex)
    }

    /// The log directory of a run, created if needed.
    pub fn log_dir(&self, run_id: &str) -> Result<PathBuf, CacheError> {
        let dir = self.logs_dir().join(run_id);
        fs::create_dir_all(&dir).map_err(CacheError::write("create log directory", &dir))?;
        Ok(dir)
    }

    /// Starts writing the entry for `key`: the stage writes its files under [`EntryWriter::dir`].
    pub fn writer(&self, key: Digest) -> Result<EntryWriter, CacheError> {
        let staging = self
            .tmp_dir()
            .join(format!("w-{}-{}", std::process::id(), unique_suffix()));
        fs::create_dir(&staging)
            .map_err(CacheError::write("create staging directory", &staging))?;
        Ok(EntryWriter {
            cache: self.clone(),
            key,
            staging,
            done: false,
        })
    }

    /// Finds the entry for `key`. Cheap: reads the manifest and stats the files, hashes nothing.
    /// An unusable entry is moved to quarantine and reported as [`Lookup::Corrupt`].
    pub fn lookup(&self, key: &Digest) -> Result<Lookup, CacheError> {
        match self.inspect(key)? {
            Lookup::Corrupt { reason } => {
                let dir = self.entry_dir(key);
                let moved = move_to_quarantine(&self.quarantine_dir(), &dir, key, &reason);
                let reason = match moved {
                    Some(to) => format!("{reason} (moved to {})", to.display()),
                    None => reason,
                };
                Ok(Lookup::Corrupt { reason })
            }
            found => Ok(found),
        }
    }

    /// [`Cache::lookup`] for commands that only read: a corrupt entry is reported, not moved.
    pub fn inspect(&self, key: &Digest) -> Result<Lookup, CacheError> {
        let dir = self.entry_dir(key);
        Ok(match check_entry(&dir, key)? {
            Checked::Missing => Lookup::Miss,
            Checked::Ok(manifest) => Lookup::Hit(Entry {
                dir,
                manifest: Arc::from(manifest),
                quarantine: self.quarantine_dir(),
            }),
            Checked::Corrupt(reason) => Lookup::Corrupt { reason },
        })
    }

    /// Every entry with its manifest (not otherwise checked), for status and gc. Directories
    /// whose names are not keys are skipped.
    pub fn entries(
        &self,
    ) -> Result<impl Iterator<Item = (Digest, Result<Manifest, CacheError>)>, CacheError> {
        let mut found = Vec::new();
        let entries_dir = self.entries_dir();
        // A cache opened read-only may not exist yet: it holds nothing.
        let shards = if entries_dir.exists() {
            read_dir_paths(&entries_dir)?
        } else {
            Vec::new()
        };
        for shard in shards {
            if !shard.is_dir() {
                continue;
            }
            for dir in read_dir_paths(&shard)? {
                let key = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(Digest::from_hex);
                if let Some(key) = key {
                    found.push((key, dir));
                }
            }
        }
        found.sort();
        Ok(found
            .into_iter()
            .map(|(key, dir)| (key, read_manifest(&dir.join(MANIFEST_FILE)))))
    }
}

pub(crate) fn read_dir_paths(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    let rd = fs::read_dir(dir).map_err(CacheError::io("read directory", dir))?;
    let mut out = Vec::new();
    for e in rd {
        out.push(e.map_err(CacheError::io("read directory", dir))?.path());
    }
    Ok(out)
}

/// Reads and parses a manifest, checking its schema.
pub fn read_manifest(path: &Path) -> Result<Manifest, CacheError> {
    super::fsutil::read_versioned(path, MANIFEST_SCHEMA)
}

enum Checked {
    Missing,
    Ok(Box<Manifest>),
    Corrupt(String),
}

/// The cheap completeness check behind [`Cache::lookup`]. I/O errors other than "not found" are
/// errors (the cache may be unreadable), not corruption.
fn check_entry(dir: &Path, key: &Digest) -> Result<Checked, CacheError> {
    use std::io::ErrorKind::NotFound;
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == NotFound => return Ok(Checked::Missing),
        Err(e) => return Err(CacheError::io("read", dir)(e)),
        Ok(m) if !m.is_dir() => return Ok(Checked::Corrupt("not a directory".into())),
        Ok(_) => {}
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = match read_manifest(&manifest_path) {
        Ok(m) => m,
        Err(CacheError::Io { source, .. }) if source.kind() == NotFound => {
            return Ok(Checked::Corrupt("manifest.json is missing".into()))
        }
        Err(e @ CacheError::Io { .. }) => return Err(e),
        Err(CacheError::Json { source, .. }) => {
            return Ok(Checked::Corrupt(format!(
                "manifest.json does not parse: {source}"
            )))
        }
        Err(CacheError::Schema {
            found, expected, ..
        }) => {
            return Ok(Checked::Corrupt(format!(
                "manifest schema {found}, expected {expected}"
            )))
        }
        Err(e) => return Err(e),
    };
    if manifest.key != *key {
        return Ok(Checked::Corrupt(format!(
            "manifest key {} does not match the entry's key {}",
            manifest.key.short(),
            key.short()
        )));
    }
    let computed = manifest.key_inputs.digest();
    if computed != *key {
        return Ok(Checked::Corrupt(format!(
            "manifest key inputs hash to {}, not to the entry's key {}",
            computed.short(),
            key.short()
        )));
    }
    for rec in &manifest.files {
        if !is_safe_relative(&rec.path) {
            return Ok(Checked::Corrupt(format!(
                "manifest lists `{}`, which is not a plain relative path",
                rec.path
            )));
        }
        let path = dir.join(&rec.path);
        match fs::metadata(&path) {
            Err(e) if e.kind() == NotFound => {
                return Ok(Checked::Corrupt(format!("file `{}` is missing", rec.path)))
            }
            Err(e) => return Err(CacheError::io("read", &path)(e)),
            Ok(m) if !m.is_file() => {
                return Ok(Checked::Corrupt(format!(
                    "`{}` is not a regular file",
                    rec.path
                )))
            }
            Ok(m) if m.len() != rec.size => {
                return Ok(Checked::Corrupt(size_reason(&rec.path, m.len(), rec.size)))
            }
            Ok(_) => {}
        }
    }
    Ok(Checked::Ok(Box::new(manifest)))
}

fn is_safe_relative(rel: &str) -> bool {
    !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Moves an entry directory aside with a note of why. Best effort: another process may have moved
/// it already. Returns where it went. (Two processes that both saw the corrupt entry can, in a
/// narrow window, move aside a good replacement written in between; that costs a recompute only.)
fn move_to_quarantine(
    quarantine: &Path,
    dir: &Path,
    key: &Digest,
    reason: &str,
) -> Option<PathBuf> {
    let name = format!("{}-{}", key.hex(), unique_suffix());
    let to = quarantine.join(&name);
    fs::rename(dir, &to).ok()?;
    tracing::warn!(entry = %dir.display(), %reason, "corrupt cache entry moved to quarantine");
    let _ = fs::write(quarantine.join(format!("{name}.reason")), reason);
    Some(to)
}

/// An entry being written. Dropping it unfinished removes its staging directory.
#[derive(Debug)]
pub struct EntryWriter {
    cache: Cache,
    key: Digest,
    staging: PathBuf,
    done: bool,
}

impl EntryWriter {
    /// Where the stage writes its files (sub-directories allowed; not `manifest.json` at the top).
    pub fn dir(&self) -> &Path {
        &self.staging
    }

    pub fn key(&self) -> Digest {
        self.key
    }

    /// Records, fsyncs and publishes the staged files as the entry for this writer's key. If
    /// another writer published the key first, ours is dropped and theirs returned.
    pub fn finish(mut self, meta: EntryMeta) -> Result<Entry, CacheError> {
        let computed = meta.key_inputs.digest();
        if computed != self.key {
            return Err(CacheError::KeyMismatch {
                key: self.key,
                computed,
            });
        }
        let (files, dirs) = walk_staged(&self.staging)?;
        let records = files
            .par_iter()
            .map(|(rel, path)| {
                let f = File::open(path).map_err(CacheError::io("open", path))?;
                f.sync_all().map_err(CacheError::write("sync", path))?;
                let size = f.metadata().map_err(CacheError::io("stat", path))?.len();
                let blake3 = blake3_file(path).map_err(CacheError::io("hash", path))?;
                Ok(FileRecord {
                    path: rel.clone(),
                    size,
                    blake3,
                })
            })
            .collect::<Result<Vec<_>, CacheError>>()?;
        for d in &dirs {
            sync_dir(d)?;
        }
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA,
            key: self.key,
            key_inputs: meta.key_inputs,
            kind: meta.kind,
            stage: meta.stage,
            pipeline: meta.pipeline,
            engine_version: meta.engine_version,
            device: meta.device,
            created: jiff::Timestamp::now().to_string(),
            duration_s: meta.duration_s,
            content: meta.content.unwrap_or_else(|| content_digest(&records)),
            files: records,
            meta: meta.meta,
        };
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|source| CacheError::Json {
            path: self.staging.join(MANIFEST_FILE),
            source,
        })?;
        // Also syncs the staging directory itself.
        atomic_write(&self.staging.join(MANIFEST_FILE), &bytes)?;

        let final_dir = self.cache.entry_dir(&self.key);
        let shard = final_dir.parent().expect("entry dirs have a shard parent");
        if !shard.exists() {
            fs::create_dir_all(shard).map_err(CacheError::write("create directory", shard))?;
            sync_dir(&self.cache.entries_dir())?;
        }
        // A lost race leaves a complete entry in place; a corrupt one is quarantined by the
        // lookup, after which our rename can succeed.
        for _ in 0..3 {
            match fs::rename(&self.staging, &final_dir) {
                Ok(()) => {
                    self.done = true;
                    sync_dir(shard)?;
                    return Ok(Entry {
                        dir: final_dir,
                        manifest: Arc::new(manifest),
                        quarantine: self.cache.quarantine_dir(),
                    });
                }
                Err(e) if !final_dir.exists() => {
                    return Err(CacheError::write("publish entry", &final_dir)(e))
                }
                Err(_) => {
                    if let Lookup::Hit(existing) = self.cache.lookup(&self.key)? {
                        return Ok(existing);
                    }
                }
            }
        }
        Err(CacheError::Corrupt {
            dir: final_dir,
            reason: "another process keeps replacing this entry with a corrupt one".into(),
        })
    }
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// The staged regular files as sorted (relative path, absolute path), and every directory
/// (staging dir included) so they can be fsync'd.
type Staged = (Vec<(String, PathBuf)>, Vec<PathBuf>);

fn walk_staged(root: &Path) -> Result<Staged, CacheError> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for path in read_dir_paths(&dir)? {
            let meta = fs::symlink_metadata(&path).map_err(CacheError::io("stat", &path))?;
            if meta.is_dir() {
                dirs.push(path.clone());
                stack.push(path);
                continue;
            }
            if !meta.is_file() {
                return Err(CacheError::BadStagedFile {
                    path,
                    reason: "not a regular file (symlinks are not stored; copy the file)".into(),
                });
            }
            let rel = path.strip_prefix(root).expect("walk stays under its root");
            let mut parts = Vec::new();
            for c in rel.components() {
                match c.as_os_str().to_str() {
                    Some(s) => parts.push(s),
                    None => {
                        return Err(CacheError::BadStagedFile {
                            path: path.clone(),
                            reason: "its name is not UTF-8".into(),
                        })
                    }
                }
            }
            let rel = parts.join("/");
            if rel == MANIFEST_FILE {
                return Err(CacheError::BadStagedFile {
                    path,
                    reason: "`manifest.json` at the top of an entry is reserved for the cache"
                        .into(),
                });
            }
            files.push((rel, path));
        }
    }
    files.sort();
    Ok((files, dirs))
}

/// The digest of an entry's content: its sorted (path, file digest) list.
pub fn content_digest(files: &[FileRecord]) -> Digest {
    let mut h = KeyHasher::new();
    h.str("whittle-entry-content");
    h.u64(files.len() as u64);
    for f in files {
        h.str(&f.path);
        h.digest(&f.blake3);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_inputs(n: i64) -> KeyInputs {
        let mut k = KeyInputs::new("prune", 1);
        k.params.insert("n".into(), n.into());
        k
    }

    fn write_entry(cache: &Cache, n: i64, files: &[(&str, &[u8])]) -> Entry {
        let ki = key_inputs(n);
        let w = cache.writer(ki.digest()).unwrap();
        for (rel, bytes) in files {
            let p = w.dir().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
        w.finish(EntryMeta::new(ki, format!("prune[n={n}]")))
            .unwrap()
    }

    #[test]
    fn open_creates_layout_and_tag() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(&t.path().join("c")).unwrap();
        let tag = fs::read_to_string(c.root().join("CACHEDIR.TAG")).unwrap();
        assert!(tag.starts_with("Signature: 8a477f597d28d172789f06886806bc55"));
        for d in ["entries", "tmp", "quarantine", "runs", "logs"] {
            assert!(c.root().join("v1").join(d).is_dir(), "{d}");
        }
        // Reopening an existing cache works.
        Cache::open(c.root()).unwrap();
    }

    #[test]
    fn content_digest_is_independent_of_key_and_matches_hand_computation() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let a = write_entry(&c, 1, &[("b.bin", b"bbb"), ("a/x.txt", b"x")]);
        let b = write_entry(&c, 2, &[("a/x.txt", b"x"), ("b.bin", b"bbb")]);
        assert_ne!(a.key(), b.key());
        assert_eq!(a.content(), b.content());
        // Files are sorted by path and each digest is plain blake3 of the bytes.
        let names: Vec<_> = a.manifest().files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["a/x.txt", "b.bin"]);
        assert_eq!(a.manifest().files[1].blake3, Digest::of_bytes(b"bbb"));
        assert_eq!(a.manifest().files[1].size, 3);
        let mut h = KeyHasher::new();
        h.str("whittle-entry-content");
        h.u64(2);
        h.str("a/x.txt");
        h.digest(&Digest::of_bytes(b"x"));
        h.str("b.bin");
        h.digest(&Digest::of_bytes(b"bbb"));
        assert_eq!(a.content(), h.finish());
    }

    #[test]
    fn content_override_and_key_mismatch() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let ki = key_inputs(1);
        let w = c.writer(ki.digest()).unwrap();
        let mut meta = EntryMeta::new(ki.clone(), "s");
        meta.content = Some(Digest::of_bytes(b"tensors"));
        let e = w.finish(meta).unwrap();
        assert_eq!(e.content(), Digest::of_bytes(b"tensors"));

        let w = c.writer(Digest::of_bytes(b"wrong")).unwrap();
        let staging = w.dir().to_path_buf();
        let err = w.finish(EntryMeta::new(ki, "s")).unwrap_err();
        assert!(matches!(err, CacheError::KeyMismatch { .. }), "{err}");
        assert!(!staging.exists(), "a failed finish leaves no staging dir");
    }

    #[test]
    fn reserved_and_non_regular_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let ki = key_inputs(1);
        let w = c.writer(ki.digest()).unwrap();
        fs::write(w.dir().join(MANIFEST_FILE), b"{}").unwrap();
        let err = w.finish(EntryMeta::new(ki.clone(), "s")).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");

        #[cfg(unix)]
        {
            let w = c.writer(ki.digest()).unwrap();
            std::os::unix::fs::symlink("/etc/hostname", w.dir().join("link")).unwrap();
            let err = w.finish(EntryMeta::new(ki.clone(), "s")).unwrap_err();
            assert!(err.to_string().contains("symlink"), "{err}");
        }
        assert!(matches!(c.lookup(&ki.digest()).unwrap(), Lookup::Miss));
    }

    #[test]
    fn manifest_paths_escaping_the_entry_are_corrupt() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let e = write_entry(&c, 1, &[("a", b"1")]);
        let mut m = e.manifest().clone();
        m.files[0].path = "../../../../etc/hostname".into();
        fs::write(e.dir().join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        match c.lookup(&e.key()).unwrap() {
            Lookup::Corrupt { reason } => assert!(reason.contains("plain relative"), "{reason}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    /// The manifest's JSON shape: a format change shows up here as a diff, on purpose.
    #[test]
    fn golden_manifest_json() {
        let mut ki = KeyInputs::new("prune", 2);
        ki.params.insert("sparsity".into(), 0.5.into());
        ki.inputs.insert("model".into(), Digest([1; 32]));
        let m = Manifest {
            schema: MANIFEST_SCHEMA,
            key: ki.digest(),
            key_inputs: ki,
            kind: "prune".into(),
            stage: "prune[sparsity=0.5]".into(),
            pipeline: Some("p.yaml".into()),
            engine_version: "0.1.0".into(),
            device: "cuda:0".into(),
            created: "2026-01-02T03:04:05Z".into(),
            duration_s: 1.5,
            files: vec![FileRecord {
                path: "model.safetensors".into(),
                size: 3,
                blake3: Digest([2; 32]),
            }],
            content: Digest([3; 32]),
            meta: serde_json::json!({"ppl": 12.5}),
        };
        let json = serde_json::to_string_pretty(&m).unwrap();
        let expected = r#"{
  "schema": 1,
  "key": "KEY",
  "key_inputs": {
    "kind": "prune",
    "version": 2,
    "params": {
      "sparsity": 0.5
    },
    "inputs": {
      "model": "0101010101010101010101010101010101010101010101010101010101010101"
    },
    "files": {}
  },
  "kind": "prune",
  "stage": "prune[sparsity=0.5]",
  "pipeline": "p.yaml",
  "engine_version": "0.1.0",
  "device": "cuda:0",
  "created": "2026-01-02T03:04:05Z",
  "duration_s": 1.5,
  "files": [
    {
      "path": "model.safetensors",
      "size": 3,
      "blake3": "0202020202020202020202020202020202020202020202020202020202020202"
    }
  ],
  "content": "0303030303030303030303030303030303030303030303030303030303030303",
  "meta": {
    "ppl": 12.5
  }
}"#
        .replace("KEY", &m.key.hex());
        assert_eq!(
            json, expected,
            "manifest format changed: bump MANIFEST_SCHEMA"
        );
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
