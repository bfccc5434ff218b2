//! The content-addressed cache: stage outputs stored as immutable entries keyed by their
//! [`KeyInputs`] digest, input-file hashing with a memo, run records and garbage collection.
//!
//! The on-disk layout is drawn in [`store`].

pub mod error;
pub mod filehash;
mod fsutil;
pub mod gc;
pub mod key;
pub mod lock;
pub mod runs;
pub mod store;
pub mod verify;

pub use error::CacheError;
pub use filehash::{blake3_file, FileHasher, HashStats};
pub use gc::{GcOptions, GcReport, Removed};
pub use key::{Digest, KeyInputs, ParamValue, Params};
pub use lock::{BuildLock, Lease};
pub use runs::{ClusterJob, RunRecord, StageRecord, StageStatus};
pub use store::{Cache, Entry, EntryMeta, EntryWriter, FileRecord, Lookup, Manifest};
pub use verify::VerifyReport;
