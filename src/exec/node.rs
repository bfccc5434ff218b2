//! One node run on its own, outside a whole-pipeline run (`whittle run-node`): its inputs must
//! be in the cache already; it is computed with the same build lock, lease and atomic write as
//! in a run, through [`job::execute`]. It writes the stage's log (`cache/v1/logs/<id>/`) and
//! traces its start and end (`-v`), but no run record: it is one step of whatever run drives it
//! (another process, later a cluster job), which records the run.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use super::device::{DeviceError, DeviceKind};
use super::job::{self, Built, Handle, Job, JobError};
use crate::cache::{Cache, CacheError, RunRecord};
use crate::plan::{self, ancestors, History, NodeId, Plan, Status};
use crate::stages::Progress;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{stage}: input {input} is not in the cache; run it first (`whittle run FILE --only '{input}'`)")]
    NotCached { stage: String, input: String },
    #[error("{stage}: the cache entry of input {input} is corrupt ({reason}); `whittle run` recomputes it")]
    Corrupt {
        stage: String,
        input: String,
        reason: String,
    },
    #[error("{stage}: {source}")]
    Job {
        stage: String,
        source: Box<JobError>,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The job of `node`, if every node it reads is cached (and intact).
pub fn job_for(
    plan: &Plan,
    cache: &Cache,
    node: NodeId,
    device: DeviceKind,
    log: std::path::PathBuf,
) -> Result<Job, NodeError> {
    let history = History::load(cache, &plan.pipeline.path.display().to_string());
    let statuses = plan::resolve(plan, cache, &history)?;
    let stage = plan.nodes[node].label.clone();
    let mut inputs = BTreeMap::new();
    for a in ancestors(plan, &[node]) {
        if a == node {
            continue;
        }
        let input = plan.nodes[a].label.clone();
        let Status::Cached { entry, .. } = &statuses[a] else {
            return Err(NodeError::NotCached { stage, input });
        };
        if let Some(reason) = entry.check()? {
            return Err(NodeError::Corrupt {
                stage,
                input,
                reason,
            });
        }
        inputs.insert(input, entry.manifest().key);
    }
    let key = match &statuses[node] {
        Status::Cached { key_inputs, .. }
        | Status::Run {
            key_inputs: Some(key_inputs),
            ..
        } => key_inputs.clone(),
        Status::Run {
            key_inputs: None, ..
        } => unreachable!("a node whose inputs are cached has a key"),
    };
    Ok(Job {
        pipeline: plan.pipeline.path.clone(),
        label: stage,
        key,
        inputs,
        device,
        memory: None,
        log,
    })
}

/// Computes `node` of `plan` into the cache (or finds it there) on `device`.
pub fn run_node(
    plan: &Plan,
    cache: &Cache,
    node: NodeId,
    device: DeviceKind,
    memory: Option<u64>,
    cancel: &AtomicBool,
) -> Result<Built, NodeError> {
    let record = RunRecord::start(
        plan.pipeline.path.display().to_string(),
        plan.pipeline.source_digest,
    );
    let log = job::log_path(
        &cache.log_dir(&record.run_id)?,
        node,
        &plan.nodes[node].label,
    );
    let mut job = job_for(plan, cache, node, device, log)?;
    job.memory = memory;
    // Held before the entries are looked up again, so gc either removed them already (and the
    // job finds them missing) or keeps them.
    let lease = cache.lease(&record.run_id)?;
    for key in job.inputs.values() {
        lease.hold(key)?;
    }
    lease.hold(&job.key.digest())?;
    let handle = Handle {
        progress: Progress::hidden(),
        cancel,
    };
    tracing::info!(stage = %job.label, key = %job.key.digest().short(), %device, "run-node");
    let built = job::execute(plan, cache, &job, &device.open()?, &handle).map_err(|source| {
        NodeError::Job {
            stage: job.label.clone(),
            source: Box::new(source),
        }
    })?;
    tracing::info!(stage = %job.label, ran = built.ran, "run-node finished");
    Ok(built)
}

/// What `whittle run-node --result FILE` records for the process that submitted it: the entry's
/// key, and whether this process computed it or found it built by another.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeResult {
    pub schema: u32,
    pub key: crate::cache::key::Digest,
    pub ran: bool,
}

/// Version of result files.
pub const RESULT_SCHEMA: u32 = 1;

impl NodeResult {
    pub fn of(built: &Built) -> Self {
        NodeResult {
            schema: RESULT_SCHEMA,
            key: built.entry.manifest().key,
            ran: built.ran,
        }
    }

    /// Written to a temporary file beside `path`, then renamed: a reader sees all of it or none.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let text = serde_json::to_vec(self).expect("plain data serialises");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// The result at `path`, if there is one of this version.
    pub fn read(path: &std::path::Path) -> Option<Self> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice::<NodeResult>(&text)
            .ok()
            .filter(|r| r.schema == RESULT_SCHEMA)
    }
}
