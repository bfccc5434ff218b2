//! A job: one node to compute, described by data that can leave the process (a pipeline file,
//! an instance label, its key, the entries it reads, a device), so that another process or a
//! cluster job can run it; and [`execute`], the one way a job becomes a cache entry.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::device::DeviceKind;
use crate::cache::key::{Digest, KeyInputs};
use crate::cache::{Cache, CacheError, Entry, EntryMeta, Lookup};
use crate::plan::{NodeId, Plan};
use crate::stages::{self, Cancelled, Progress, StageCtx, StageError};

/// One node of a pipeline to compute: plain data, serializable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The pipeline file, as the run was given it.
    pub pipeline: PathBuf,
    /// The node's instance label in the plan of that pipeline.
    pub label: String,
    /// The node's key, its inputs' content included.
    pub key: KeyInputs,
    /// The entry key of every node it reads, directly or not, by instance label.
    pub inputs: BTreeMap<String, Digest>,
    pub device: DeviceKind,
    /// The memory the stage may hold, in bytes (`None`: the device's); a model larger than
    /// half of it is streamed block by block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// The stage's log file.
    pub log: PathBuf,
}

/// What a running job shows and hears while it runs; stays in the process that runs it.
#[derive(Clone)]
pub struct Handle<'a> {
    pub progress: Progress,
    pub cancel: &'a AtomicBool,
}

/// A job's entry, and whether this job computed it (not another run sharing the cache).
#[derive(Debug)]
pub struct Built {
    pub entry: Entry,
    pub ran: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    #[error(transparent)]
    Stage(StageError),
    #[error("no stage instance `{0}` in the pipeline")]
    NoNode(String),
    #[error("input {0} is not in the cache")]
    InputMissing(String),
    #[error(transparent)]
    Slurm(Box<super::slurm::SlurmError>),
}

impl From<StageError> for JobError {
    fn from(e: StageError) -> Self {
        match e {
            StageError::Cancelled => JobError::Cancelled(Cancelled),
            e => JobError::Stage(e),
        }
    }
}

impl From<CacheError> for JobError {
    fn from(e: CacheError) -> Self {
        JobError::Stage(e.into())
    }
}

/// Computes `job`'s node of `plan` into the cache on `device` and returns its entry. Unless
/// another process sharing the cache is building the same key: then waits for that one and
/// reuses its entry. The entry is written atomically; the caller holds the lease on its key.
pub fn execute(
    plan: &Plan,
    cache: &Cache,
    job: &Job,
    device: &candle_core::Device,
    handle: &Handle,
) -> Result<Built, JobError> {
    let node = plan
        .nodes
        .iter()
        .position(|n| n.label == job.label)
        .ok_or_else(|| JobError::NoNode(job.label.clone()))?;
    let key = job.key.digest();
    let label = &job.label;
    let _lock = match cache.try_lock_build(&key)? {
        Some(lock) => lock,
        None => {
            eprintln!("waiting for another run building {label}");
            tracing::info!(stage = %label, "waiting for another run building it");
            cache.lock_build(&key)?
        }
    };
    if let Lookup::Hit(entry) = cache.lookup(&key)? {
        tracing::info!(stage = %label, "reusing the entry another run built");
        return Ok(Built { entry, ran: false });
    }
    let entries = input_entries(plan, cache, job)?;
    let entry = build(plan, cache, job, node, entries, device, handle)?;
    Ok(Built { entry, ran: true })
}

/// The entries the job reads, by node: each named by its key, found in the cache.
fn input_entries(
    plan: &Plan,
    cache: &Cache,
    job: &Job,
) -> Result<HashMap<NodeId, Entry>, JobError> {
    let mut entries = HashMap::new();
    for (label, key) in &job.inputs {
        let id = plan
            .nodes
            .iter()
            .position(|n| &n.label == label)
            .ok_or_else(|| JobError::NoNode(label.clone()))?;
        match cache.lookup(key)? {
            Lookup::Hit(entry) => entries.insert(id, entry),
            _ => return Err(JobError::InputMissing(label.clone())),
        };
    }
    Ok(entries)
}

fn build(
    plan: &Plan,
    cache: &Cache,
    job: &Job,
    id: NodeId,
    entries: HashMap<NodeId, Entry>,
    device: &candle_core::Device,
    handle: &Handle,
) -> Result<Entry, StageError> {
    let node = &plan.nodes[id];
    let log_file = std::fs::File::create(&job.log).map_err(StageError::io(format!(
        "creating log {}",
        job.log.display()
    )))?;
    let log_file = Mutex::new(log_file);
    let log: crate::model::Note = std::sync::Arc::new(move |line: &str| {
        if let Ok(mut f) = log_file.lock() {
            let _ = writeln!(f, "{} {line}", jiff::Timestamp::now());
        }
    });
    log(&format!(
        "{} ({}) on {}, key {}",
        node.label,
        node.kind(),
        job.device,
        job.key.digest()
    ));
    let start = Instant::now();
    let result = (|| {
        let writer = cache.writer(job.key.digest())?;
        let entries = |id: NodeId| entries.get(&id).cloned();
        let ctx = StageCtx {
            dag: plan,
            node: id,
            entries: &entries,
            out: writer.dir(),
            device,
            memory: job.memory.unwrap_or_else(|| job.device.total_memory()),
            progress: &handle.progress,
            cancel: handle.cancel,
            log: log.clone(),
        };
        let out = stages::execute(&ctx)?;
        fault_pause(node.kind().as_str());
        let mut meta = EntryMeta::new(job.key.clone(), node.label.clone());
        meta.pipeline = Some(plan.pipeline.path.display().to_string());
        meta.device = job.device.to_string();
        meta.duration_s = start.elapsed().as_secs_f64();
        meta.meta = out.meta;
        meta.content = out.content;
        Ok(writer.finish(meta)?)
    })();
    handle.progress.0.finish_and_clear();
    match &result {
        Ok(e) => log(&format!(
            "done in {:.2}s: entry {}",
            start.elapsed().as_secs_f64(),
            e.manifest().key
        )),
        Err(e) => {
            log(&format!("failed: {e}"));
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                log(&format!("  caused by: {s}"));
                src = s.source();
            }
        }
    }
    result
}

/// The log file of node `node` (labelled `label`) in a run's log folder.
pub fn log_path(dir: &Path, node: NodeId, label: &str) -> PathBuf {
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{node:03}-{safe}.log"))
}

/// Fault injection for crash tests: `WHITTLE_TEST_PAUSE=prune:2000` holds every prune stage for
/// 2 s after its files are staged and before its entry is committed, so a test can kill the
/// process at exactly that point.
fn fault_pause(kind: &str) {
    let Ok(spec) = std::env::var("WHITTLE_TEST_PAUSE") else {
        return;
    };
    if let Some((k, ms)) = spec.split_once(':') {
        if k == kind {
            if let Ok(ms) = ms.parse() {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_data() {
        let mut inputs = BTreeMap::new();
        inputs.insert("base".to_string(), Digest::of_bytes(b"base"));
        let job = Job {
            pipeline: "pipelines/p.yaml".into(),
            label: "pruned[sparsity=0.5]".into(),
            key: KeyInputs::new("prune", 2),
            inputs,
            device: DeviceKind::Cpu,
            memory: Some(4 << 30),
            log: "cache/logs/r/001-pruned.log".into(),
        };
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
    }

    #[test]
    fn a_cancelled_stage_ends_as_cancelled_not_failed() {
        let from_stage = JobError::from(StageError::from(Cancelled));
        assert!(matches!(from_stage, JobError::Cancelled(Cancelled)));
        let failed = JobError::from(StageError::NotCached("bad".into()));
        assert!(matches!(failed, JobError::Stage(_)));
        assert_eq!(from_stage.to_string(), "cancelled");
    }
}
