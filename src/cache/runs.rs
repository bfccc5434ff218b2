//! Run records: what each `whittle run` did, stage by stage, with the key inputs of every stage,
//! so `whittle why` and the plan can say what changed since the last run.
//!
//! One JSON file per run, `<cache>/v1/runs/<run-id>.json`, written atomically. Run ids start with
//! the UTC start time (`20261121T060102Z-1a2b`), so they sort by time.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::CacheError;
use super::fsutil::atomic_write;
use super::key::{Digest, KeyInputs};
use super::store::{read_dir_paths, Cache};

/// Version of run-record files.
pub const RUN_SCHEMA: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageStatus {
    Ran,
    Cached,
    Failed,
    Skipped,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The instance label, e.g. `prune[method=wanda,sparsity=0.5]`.
    pub instance: String,
    /// The stage's name in the pipeline.
    pub stage: String,
    pub kind: String,
    pub key: Option<Digest>,
    pub status: StageStatus,
    pub duration_s: f64,
    pub key_inputs: Option<KeyInputs>,
    pub error: Option<String>,
    /// The stage's log, relative to the cache's log directory.
    pub log: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema: u32,
    pub run_id: String,
    /// The pipeline file's path as the engine resolved it.
    pub pipeline: String,
    pub pipeline_digest: Digest,
    /// RFC 3339, UTC.
    pub started: String,
    /// RFC 3339, UTC; `None` while the run is in progress (or if it crashed).
    pub finished: Option<String>,
    pub engine_version: String,
    pub devices: Vec<String>,
    pub stages: Vec<StageRecord>,
    /// Cluster jobs the run submitted or adopted, written as they are submitted: a run started
    /// again follows those still queued or running instead of submitting their nodes again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<ClusterJob>,
}

/// One cluster job of a run: which node it computes and where it reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterJob {
    /// The instance label.
    pub instance: String,
    /// The key the job computes.
    pub key: Digest,
    /// The scheduler's id: `123`, or `123_4` for a task of a job array.
    pub job_id: String,
    /// The job's output (its stdout and stderr).
    pub log: String,
    /// Where the job writes what it did (`whittle run-node --result`).
    pub result: String,
}

impl RunRecord {
    /// A record for a run starting now, with a fresh id.
    pub fn start(pipeline: impl Into<String>, pipeline_digest: Digest) -> RunRecord {
        let now = jiff::Timestamp::now();
        RunRecord {
            schema: RUN_SCHEMA,
            run_id: run_id_at(now),
            pipeline: pipeline.into(),
            pipeline_digest,
            started: now.to_string(),
            finished: None,
            engine_version: crate::ENGINE_VERSION.to_string(),
            devices: Vec::new(),
            stages: Vec::new(),
            jobs: Vec::new(),
        }
    }

    /// Marks the run finished now.
    pub fn finish(&mut self) {
        self.finished = Some(jiff::Timestamp::now().to_string());
    }

    fn started_at(&self) -> Option<jiff::Timestamp> {
        self.started.parse().ok()
    }
}

/// A run id for a run started at `t`: `YYYYMMDDTHHMMSSZ-<4 hex>`.
pub fn run_id_at(t: jiff::Timestamp) -> String {
    format!(
        "{}-{:04x}",
        t.strftime("%Y%m%dT%H%M%SZ"),
        rand::random::<u16>()
    )
}

impl Cache {
    /// Saves (or replaces) a run record atomically.
    pub fn write_run(&self, run: &RunRecord) -> Result<(), CacheError> {
        if run.run_id.is_empty()
            || !run
                .run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(CacheError::BadRunId {
                run_id: run.run_id.clone(),
            });
        }
        let path = self.runs_dir().join(format!("{}.json", run.run_id));
        let bytes = serde_json::to_vec_pretty(run).map_err(|source| CacheError::Json {
            path: path.clone(),
            source,
        })?;
        atomic_write(&path, &bytes)
    }

    /// Every readable run record, oldest first. Unreadable ones are skipped with a warning.
    pub fn runs(&self) -> Vec<RunRecord> {
        let dir = self.runs_dir();
        if !dir.exists() {
            return Vec::new(); // a cache opened read-only that was never written
        }
        let paths = match read_dir_paths(&dir) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list run records");
                return Vec::new();
            }
        };
        let mut runs: Vec<RunRecord> = paths
            .iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .filter_map(|p| match read_run(p) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping run record");
                    None
                }
            })
            .collect();
        // Start times have sub-second precision where ids do not.
        runs.sort_by(|a, b| (a.started_at(), &a.run_id).cmp(&(b.started_at(), &b.run_id)));
        runs
    }

    /// The latest run of the pipeline at `pipeline` (compared as given, then canonicalised).
    pub fn last_run_for(&self, pipeline: &str) -> Option<RunRecord> {
        self.runs()
            .into_iter()
            .rev()
            .find(|r| same_pipeline(&r.pipeline, pipeline))
    }

    /// The key inputs `instance` had in the latest run of `pipeline` where it had a key.
    pub fn last_key_inputs(&self, instance: &str, pipeline: &str) -> Option<KeyInputs> {
        self.runs()
            .into_iter()
            .rev()
            .filter(|r| same_pipeline(&r.pipeline, pipeline))
            .find_map(|r| {
                r.stages
                    .into_iter()
                    .find(|s| s.instance == instance && s.key.is_some() && s.key_inputs.is_some())
                    .and_then(|s| s.key_inputs)
            })
    }
}

fn same_pipeline(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn read_run(path: &Path) -> Result<RunRecord, CacheError> {
    super::fsutil::read_versioned(path, RUN_SCHEMA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_shape_and_order() {
        let t: jiff::Timestamp = "2026-11-21T06:01:02.5Z".parse().unwrap();
        let id = run_id_at(t);
        assert!(id.starts_with("20261121T060102Z-"), "{id}");
        assert_eq!(id.len(), "20261121T060102Z-".len() + 4);
        let later = run_id_at("2026-11-21T06:01:03Z".parse().unwrap());
        assert!(later > id);
    }

    #[test]
    fn bad_run_ids_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let mut r = RunRecord::start("p.yaml", Digest([0; 32]));
        r.run_id = "../escape".into();
        assert!(c.write_run(&r).is_err());
    }
}
