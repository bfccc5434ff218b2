//! Execution: runs a plan's nodes on a device pool, records the run, reports failures.
//!
//! The scheduler decides what runs when and on which device; an [`Executor`] runs each
//! [`Job`] (local threads: [`LocalExecutor`]); [`job::execute`] turns one job into an entry.

pub mod device;
mod executor;
pub mod job;
mod node;
mod progress;
mod scheduler;
pub mod slurm;

use std::sync::atomic::AtomicBool;

pub use device::{DeviceKind, DevicePool, Need};
pub use executor::{Event, Executor, LocalExecutor, Placement};
pub use job::{Built, Handle, Job, JobError};
pub use node::{run_node, NodeError, NodeResult};
pub use scheduler::Failure;

use crate::cache::{Cache, CacheError, Lease, RunRecord, StageStatus};
use crate::plan::{History, Plan};
use crate::stages::{ModelSize, StageSpec, OVERHEAD};

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stages running at once.
    pub jobs: usize,
    pub devices: Vec<DeviceKind>,
    /// Keep running what does not depend on a failed stage.
    pub keep_going: bool,
    /// Draw progress bars.
    pub progress: bool,
    /// The memory each stage may hold, in bytes (`None`: its device's); larger models stream.
    pub memory: Option<u64>,
    /// Run the nodes as Slurm jobs, asked for as this profile says (`None`: on this machine).
    pub slurm: Option<slurm::Profile>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 1,
            devices: vec![DeviceKind::Cpu],
            keep_going: false,
            progress: false,
            memory: None,
            slurm: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    #[error(transparent)]
    Slurm(#[from] slurm::SlurmError),
}

#[derive(Debug)]
pub struct RunSummary {
    pub record: RunRecord,
    pub failures: Vec<Failure>,
    pub interrupted: bool,
    /// Held until the summary is dropped: gc keeps this run's entries while the caller still
    /// reads them (the reports it copies out).
    _lease: Lease,
}

impl RunSummary {
    pub fn count(&self, status: StageStatus) -> usize {
        self.record
            .stages
            .iter()
            .filter(|s| s.status == status)
            .count()
    }
}

/// Runs `plan`: every node not in the cache, in dependency order, `opts.jobs` at a time.
/// `record` (from [`RunRecord::start`]) is filled in and written to the cache.
pub fn run(
    plan: &Plan,
    cache: &Cache,
    opts: &RunOptions,
    cancel: &AtomicBool,
    mut record: RunRecord,
) -> Result<RunSummary, ExecError> {
    let history = History::load(cache, &record.pipeline);
    let mut pool = DevicePool::new(&opts.devices)?;
    record.devices = pool.kinds().iter().map(|k| k.to_string()).collect();
    let log_dir = cache.log_dir(&record.run_id)?;
    let lease = cache.lease(&record.run_id)?;
    let ui = progress::Ui::new(plan.nodes.len() as u64, opts.progress);
    // On Slurm, the cluster decides how many run at once; `max_queued` bounds what is queued.
    let opts = &RunOptions {
        jobs: opts.slurm.as_ref().map_or(opts.jobs, |p| p.max_queued),
        ..opts.clone()
    };
    let sched = scheduler::Scheduler::new(plan, cache, &history, opts, cancel, &lease, log_dir);
    let devices: Vec<(DeviceKind, candle_core::Device)> = pool
        .kinds()
        .into_iter()
        .map(|k| Ok((k, k.open()?)))
        .collect::<Result<_, device::DeviceError>>()?;
    let needs = estimate_needs(plan, opts.memory);
    let result = std::thread::scope(|scope| {
        let mut local = LocalExecutor::new(scope, plan, cache, &devices);
        match &opts.slurm {
            None => sched
                .run(&mut pool, &mut local, &ui, &mut record)
                .map_err(ExecError::from),
            Some(profile) => {
                let mut slurm = slurm::SlurmExecutor::new(
                    local, plan, cache, profile, &needs, cancel, &record,
                )?;
                let result = sched.run(&mut pool, &mut slurm, &ui, &mut record);
                record.jobs = slurm.jobs();
                Ok(result?)
            }
        }
    });
    ui.finish();
    let failures = result?;
    record.finish();
    cache.write_run(&record)?;
    Ok(RunSummary {
        interrupted: cancel.load(std::sync::atomic::Ordering::Relaxed),
        record,
        failures,
        _lease: lease,
    })
}

/// What a run left unrun (skipped or cancelled), one line a stage with why, for stderr; empty
/// when every stage ran or was cached. A run that leaves any stage unrun has not succeeded.
pub fn unrun_report(record: &RunRecord) -> String {
    let unrun: Vec<_> = record
        .stages
        .iter()
        .filter(|s| matches!(s.status, StageStatus::Skipped | StageStatus::Cancelled))
        .collect();
    if unrun.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "error: {} of {} stages were not run:\n",
        unrun.len(),
        record.stages.len()
    );
    for s in unrun {
        let why = match (&s.status, &s.error) {
            (_, Some(e)) => e.as_str(),
            (StageStatus::Cancelled, None) => "cancelled",
            _ => "not started",
        };
        out.push_str(&format!("  {}: {why}\n", s.instance));
    }
    out
}

/// `--jobs` when not given: one stage per device at a time (each device's memory still decides
/// what may share it).
pub fn default_jobs(devices: &[DeviceKind]) -> usize {
    let mut distinct: Vec<DeviceKind> = devices.to_vec();
    distinct.sort_by_key(|d| d.to_string());
    distinct.dedup();
    distinct.len().max(1)
}

/// `run --force`: sets aside the cache entries of `nodes` that are cached now, so the run
/// computes them again. Nodes below them keep their entries and rerun only if the recomputed
/// output differs (their keys hold their inputs' content).
pub fn force(
    plan: &Plan,
    cache: &Cache,
    history: &History,
    nodes: &[crate::plan::NodeId],
) -> Result<(), CacheError> {
    let statuses = crate::plan::resolve(plan, cache, history)?;
    for &i in nodes {
        if let crate::plan::Status::Cached { entry, .. } = &statuses[i] {
            cache.set_aside(entry, "run --force")?;
            tracing::info!(stage = %plan.nodes[i].label, "entry set aside by --force");
        }
    }
    Ok(())
}

/// Rough peak memory per node, each kind's estimate from the size of the model it works on:
/// enough to keep the scheduler from packing two large stages onto one device, and what a
/// cluster job asks for.
pub fn estimate_needs(plan: &Plan, memory: Option<u64>) -> Vec<Need> {
    // A stage may use the run's `--memory`, or its device's.
    let budget = memory.unwrap_or_else(|| DeviceKind::Cpu.total_memory());
    let mut model = vec![ModelSize::NONE; plan.nodes.len()];
    for (i, node) in plan.nodes.iter().enumerate() {
        model[i] = node.spec.source_model(&plan.pipeline).unwrap_or_else(|| {
            node.input("model")
                .map(|m| model[m])
                .unwrap_or(ModelSize::NONE)
        });
    }
    plan.nodes
        .iter()
        .zip(&model)
        .map(|(node, &m)| {
            let calibration = match &node.spec {
                StageSpec::Calibrate(c) => Some(c),
                _ => match node.input("calibration").map(|c| &plan.nodes[c].spec) {
                    Some(StageSpec::Calibrate(c)) => Some(c),
                    _ => None,
                },
            };
            let m = ModelSize {
                calib_tokens: calibration.map_or(0, |c| (c.samples * c.seqlen) as u64),
                ..m.within(budget)
            };
            Need {
                accelerated: node.kind().accelerated(),
                memory: node.spec.memory(m) + OVERHEAD,
            }
        })
        .collect()
}
