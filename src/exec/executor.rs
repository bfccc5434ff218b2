//! The executor seam: the scheduler decides what runs when and where, an [`Executor`] runs it.
//! [`LocalExecutor`] runs each job on a thread of this process; another executor may hand the
//! same [`Job`] (plain data) to another process, such as `whittle run-node` in a cluster job.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::Scope;
use std::time::{Duration, Instant};

use super::device::DeviceKind;
use super::job::{self, Built, Handle, Job, JobError};
use crate::cache::Cache;
use crate::plan::{NodeId, Plan};

/// A job that ended, and how.
#[derive(Debug)]
pub struct Event {
    pub node: NodeId,
    pub outcome: Result<Built, JobError>,
    pub duration: Duration,
    /// The job's own log, where it is not the stage log of the run (a cluster job's output).
    pub log: Option<PathBuf>,
}

/// Where a node's job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On a device of this run's pool, which the scheduler reserves (memory included).
    Pool,
    /// Elsewhere, on this device there: the cluster reserves what it needs.
    Remote(DeviceKind),
}

/// Runs the jobs the scheduler starts; tells it, one [`Event`] each, when they end.
pub trait Executor<'a> {
    /// Starts `job` for the plan's node `node`. `handle` shows its progress and carries the
    /// run's cancel flag.
    fn start(&mut self, node: NodeId, job: Job, handle: Handle<'a>);
    /// The next job to end, waiting at most `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<Event>;
    /// Where `node`'s job will run.
    fn placement(&self, _node: NodeId) -> Placement {
        Placement::Pool
    }
}

/// Each job on a scoped thread of this process, on the devices opened for the run.
pub struct LocalExecutor<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    plan: &'env Plan,
    cache: &'env Cache,
    devices: &'env [(DeviceKind, candle_core::Device)],
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
}

impl<'scope, 'env> LocalExecutor<'scope, 'env> {
    pub fn new(
        scope: &'scope Scope<'scope, 'env>,
        plan: &'env Plan,
        cache: &'env Cache,
        devices: &'env [(DeviceKind, candle_core::Device)],
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        LocalExecutor {
            scope,
            plan,
            cache,
            devices,
            tx,
            rx,
        }
    }
}

impl<'env> Executor<'env> for LocalExecutor<'_, 'env> {
    fn start(&mut self, node: NodeId, job: Job, handle: Handle<'env>) {
        let (plan, cache, tx) = (self.plan, self.cache, self.tx.clone());
        let device = self
            .devices
            .iter()
            .find(|(kind, _)| *kind == job.device)
            .map(|(_, d)| d.clone())
            .expect("the scheduler picks devices of the pool");
        self.scope.spawn(move || {
            let start = Instant::now();
            let outcome = job::execute(plan, cache, &job, &device, &handle);
            let _ = tx.send(Event {
                node,
                outcome,
                duration: start.elapsed(),
                log: None,
            });
        });
    }

    fn next(&mut self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }
}
