//! `whittle verify`: the full check of entries (every file re-hashed against its manifest), which
//! lookups skip for speed. Entries that fail are moved to quarantine, so the next run recomputes
//! them.

use super::error::CacheError;
use super::fsutil::tree_size;
use super::key::Digest;
use super::store::{Cache, Lookup};

/// One entry that failed its check.
#[derive(Clone, Debug, PartialEq)]
pub struct Corrupt {
    pub key: Digest,
    /// The stage instance label from its manifest, when the manifest is readable.
    pub stage: Option<String>,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifyReport {
    /// Entries that passed.
    pub ok: usize,
    /// Bytes re-hashed (of entries that passed and that failed).
    pub bytes: u64,
    /// Entries that failed, now in quarantine.
    pub corrupt: Vec<Corrupt>,
}

impl Cache {
    /// Re-hashes the entries of `keys` (absent keys are skipped) and quarantines those that fail.
    pub fn verify_entries(
        &self,
        keys: impl IntoIterator<Item = Digest>,
    ) -> Result<VerifyReport, CacheError> {
        let mut report = VerifyReport::default();
        for key in keys {
            report.bytes += tree_size(&self.entry_dir(&key));
            match self.inspect(&key)? {
                Lookup::Miss => {}
                Lookup::Corrupt { .. } => {
                    // The cheap check failed already; `lookup` quarantines it.
                    let stage = super::store::read_manifest(
                        &self.entry_dir(&key).join(super::store::MANIFEST_FILE),
                    )
                    .ok()
                    .map(|m| m.stage);
                    if let Lookup::Corrupt { reason } = self.lookup(&key)? {
                        report.corrupt.push(Corrupt { key, stage, reason });
                    }
                }
                Lookup::Hit(entry) => match entry.check()? {
                    None => report.ok += 1,
                    Some(reason) => {
                        let reason = match entry.quarantine(&reason) {
                            Some(to) => format!("{reason} (moved to {})", to.display()),
                            None => reason,
                        };
                        report.corrupt.push(Corrupt {
                            key,
                            stage: Some(entry.manifest().stage.clone()),
                            reason,
                        });
                    }
                },
            }
        }
        Ok(report)
    }

    /// [`Cache::verify_entries`] of every entry in the cache.
    pub fn verify_all(&self) -> Result<VerifyReport, CacheError> {
        let keys: Vec<Digest> = self.entries()?.map(|(k, _)| k).collect();
        self.verify_entries(keys)
    }
}
