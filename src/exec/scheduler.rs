//! The scheduler: walks the plan in dependency order, asks the rebuilder whether each node is
//! cached, and hands the rest, as [`Job`]s on a device of the pool, to an [`Executor`], `jobs`
//! at a time.
//!
//! It decides only *what runs when and where*; whether a node must run is `plan::lookup`'s call,
//! how a job is run is the executor's, and what it does is `stages::execute`'s. Stopping (a
//! failure without `--keep-going`, or Ctrl-C) means scheduling nothing new: running stages
//! finish, or stop at their next cancellation check.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::device::{DevicePool, Need};
use super::executor::{Executor, Placement};
use super::job::{Built, Handle, Job, JobError};
use super::progress::Ui;
use super::RunOptions;
use crate::cache::key::KeyInputs;
use crate::cache::{Cache, Entry, Lease, RunRecord, StageRecord, StageStatus};
use crate::plan::{self, ancestors, History, NodeId, Plan, Reason, Status};
use crate::stages::Progress;

#[derive(Debug)]
enum State {
    /// Waiting for these inputs.
    Waiting(BTreeSet<NodeId>),
    /// Ready to run with this key.
    Queued(KeyInputs, Reason),
    Running,
    Done {
        entry: Entry,
        ran: bool,
    },
    Failed(String),
    Skipped(String),
    Cancelled,
}

/// One stage that failed, for the summary.
#[derive(Debug, Clone)]
pub struct Failure {
    pub label: String,
    pub error: String,
    pub log: PathBuf,
}

pub(super) struct Scheduler<'a> {
    plan: &'a Plan,
    cache: &'a Cache,
    history: &'a History,
    opts: &'a RunOptions,
    cancel: &'a AtomicBool,
    lease: &'a Lease,
    states: Vec<State>,
    queue: VecDeque<NodeId>,
    records: Vec<Option<StageRecord>>,
    keys: Vec<Option<KeyInputs>>,
    durations: Vec<f64>,
    /// Logs the executor named (cluster jobs' output).
    logs: Vec<Option<PathBuf>>,
    failures: Vec<Failure>,
    log_dir: PathBuf,
    stopping: bool,
    needs: Vec<Need>,
    /// The device slot and memory each running node holds.
    reserved: Vec<Option<(usize, u64)>>,
}

impl<'a> Scheduler<'a> {
    pub(super) fn new(
        plan: &'a Plan,
        cache: &'a Cache,
        history: &'a History,
        opts: &'a RunOptions,
        cancel: &'a AtomicBool,
        lease: &'a Lease,
        log_dir: PathBuf,
    ) -> Self {
        let n = plan.nodes.len();
        let states = plan
            .nodes
            .iter()
            .map(|node| State::Waiting(node.inputs.iter().map(|(_, i)| *i).collect()))
            .collect();
        Scheduler {
            plan,
            cache,
            history,
            opts,
            cancel,
            lease,
            states,
            queue: VecDeque::new(),
            records: vec![None; n],
            keys: vec![None; n],
            durations: vec![0.0; n],
            logs: vec![None; n],
            failures: Vec::new(),
            log_dir,
            stopping: false,
            needs: super::estimate_needs(plan, opts.memory),
            reserved: vec![None; n],
        }
    }

    /// The node's log: the job's own where the executor named one, else the stage log.
    fn log_path(&self, node: NodeId) -> PathBuf {
        self.logs[node].clone().unwrap_or_else(|| {
            super::job::log_path(&self.log_dir, node, &self.plan.nodes[node].label)
        })
    }

    /// A node whose inputs are all done: cached, or queued to run.
    fn activate(&mut self, ui: &Ui, node: NodeId) -> Result<(), crate::cache::CacheError> {
        let n = &self.plan.nodes[node];
        let mut content = BTreeMap::new();
        for (role, i) in &n.inputs {
            let State::Done { entry, .. } = &self.states[*i] else {
                unreachable!("activated before its inputs were done")
            };
            content.insert(role.clone(), entry.manifest().content);
        }
        let k = plan::key_inputs(n, &content);
        self.keys[node] = Some(k.clone());
        // Leased before the lookup, so a concurrent gc either removed it already or keeps it.
        self.lease.hold(&k.digest())?;
        match plan::lookup_to_serve(self.cache, n, &k, self.history.last(&n.label))? {
            Status::Cached { entry, .. } => {
                self.states[node] = State::Done { entry, ran: false };
                ui.done(1);
                self.complete(ui, node)?;
            }
            Status::Run { reason, .. } => {
                if let Reason::Corrupt(r) = &reason {
                    ui.println(&format!("warning: {}: {r}; recomputing", n.label));
                    tracing::warn!(stage = %n.label, "corrupt cache entry: {r}");
                }
                self.states[node] = State::Queued(k, reason);
                self.queue.push_back(node);
            }
        }
        Ok(())
    }

    /// `node` is done: dependents waiting only on it become active.
    fn complete(&mut self, ui: &Ui, node: NodeId) -> Result<(), crate::cache::CacheError> {
        for &d in self.plan.dependents(node) {
            let ready = match &mut self.states[d] {
                State::Waiting(pending) => {
                    pending.remove(&node);
                    pending.is_empty()
                }
                _ => false,
            };
            if ready {
                self.activate(ui, d)?;
            }
        }
        Ok(())
    }

    fn skip_dependents(&mut self, ui: &Ui, node: NodeId, why: &str) {
        let mut stack = self.plan.dependents(node).to_vec();
        while let Some(d) = stack.pop() {
            if matches!(self.states[d], State::Waiting(_) | State::Queued(..)) {
                self.states[d] = State::Skipped(why.to_string());
                self.queue.retain(|q| *q != d);
                ui.done(1);
                stack.extend(self.plan.dependents(d));
            }
        }
    }

    /// Re-hashes the entries `node` will read (`plan::corrupt_inputs`); a corrupt one is
    /// requeued, to be recomputed first.
    fn verify_inputs(&mut self, ui: &Ui, node: NodeId) -> Result<bool, crate::cache::CacheError> {
        let corrupt = plan::corrupt_inputs(self.plan, node, |a| match &self.states[a] {
            State::Done { entry, .. } => Some(entry),
            _ => None,
        });
        for c in &corrupt {
            let label = &self.plan.nodes[c.node].label;
            let e = &c.error;
            ui.println(&format!(
                "warning: cache entry of {label} is corrupt ({e}); recomputing it"
            ));
            tracing::warn!(stage = %label, "corrupt cache entry: {e}");
            self.requeue(ui, c.node, c.reason());
        }
        Ok(corrupt.is_empty())
    }

    /// Puts the done node `a` back in the queue, and everything below it that has not started
    /// back to waiting on its inputs: their keys, made of `a`'s content, are known again only
    /// once `a` has been recomputed. Nothing below `a` has started, since starting re-hashes `a`.
    fn requeue(&mut self, ui: &Ui, a: NodeId, reason: Reason) {
        let k = self.keys[a].clone().expect("done nodes have keys");
        self.states[a] = State::Queued(k, reason);
        self.queue.push_front(a);
        ui.undo(1);
        let below: BTreeSet<NodeId> = (0..self.plan.nodes.len())
            .filter(|&d| d != a && ancestors(self.plan, &[d]).contains(&a))
            .collect();
        for &d in &below {
            let waiting = matches!(self.states[d], State::Waiting(_) | State::Queued(..));
            let done = matches!(self.states[d], State::Done { .. });
            if !waiting && !done {
                continue; // failed or skipped for another reason
            }
            if done {
                ui.undo(1);
            }
            self.queue.retain(|q| *q != d);
            let pending = self.plan.nodes[d]
                .inputs
                .iter()
                .map(|(_, i)| *i)
                .filter(|i| {
                    *i == a || below.contains(i) || !matches!(self.states[*i], State::Done { .. })
                })
                .collect();
            self.states[d] = State::Waiting(pending);
        }
    }

    /// The job that computes `node` (key `k`) on `device`: plain data, the entries it reads
    /// named by their keys.
    fn job(&self, node: NodeId, k: KeyInputs, device: super::DeviceKind) -> Job {
        let inputs = ancestors(self.plan, &[node])
            .into_iter()
            .filter_map(|a| match &self.states[a] {
                State::Done { entry, .. } => {
                    Some((self.plan.nodes[a].label.clone(), entry.manifest().key))
                }
                _ => None,
            })
            .collect();
        Job {
            pipeline: self.plan.pipeline.path.clone(),
            label: self.plan.nodes[node].label.clone(),
            key: k,
            inputs,
            device,
            memory: self.opts.memory,
            log: self.log_path(node),
        }
    }

    pub(super) fn run(
        mut self,
        pool: &mut DevicePool,
        executor: &mut dyn Executor<'a>,
        ui: &Ui,
        record: &mut RunRecord,
    ) -> Result<Vec<Failure>, crate::cache::CacheError> {
        for i in 0..self.plan.nodes.len() {
            if self.plan.nodes[i].inputs.is_empty() {
                self.activate(ui, i)?;
            }
        }
        let mut running = 0usize;
        loop {
            if self.cancel.load(Ordering::Relaxed) && !self.stopping {
                self.stopping = true;
                ui.println("interrupted: finishing the stages that run, starting no new one (Ctrl-C again to abort)");
            }
            // Dispatch what fits: on the pool, or wherever the executor places it.
            while !self.stopping && running < self.opts.jobs.max(1) {
                let Some(pos) = self.queue.iter().position(|&n| {
                    matches!(executor.placement(n), Placement::Remote(_))
                        || pool
                            .acquire(&self.needs[n])
                            .map(|(s, m)| pool.release(s, m))
                            .is_some()
                }) else {
                    break;
                };
                let node = self.queue[pos];
                if !self.verify_inputs(ui, node)? {
                    continue;
                }
                let node = self.queue.remove(pos).expect("position is in range");
                let device = match executor.placement(node) {
                    Placement::Remote(device) => device,
                    Placement::Pool => {
                        let Some((slot, reserved)) = pool.acquire(&self.needs[node]) else {
                            self.queue.push_front(node);
                            break;
                        };
                        self.reserved[node] = Some((slot, reserved));
                        pool.kind(slot)
                    }
                };
                let State::Queued(k, reason) =
                    std::mem::replace(&mut self.states[node], State::Running)
                else {
                    unreachable!("only queued nodes are in the queue")
                };
                let label = self.plan.nodes[node].label.clone();
                tracing::info!(stage = %label, %device, "run: {reason}");
                let job = self.job(node, k, device);
                let handle = Handle {
                    progress: Progress(ui.stage_bar(&label)),
                    cancel: self.cancel,
                };
                running += 1;
                executor.start(node, job, handle);
            }
            if running == 0 {
                break;
            }
            let Some(done) = executor.next(Duration::from_millis(100)) else {
                continue;
            };
            running -= 1;
            if let Some((slot, reserved)) = self.reserved[done.node].take() {
                pool.release(slot, reserved);
            }
            self.durations[done.node] = done.duration.as_secs_f64();
            if let Some(log) = done.log {
                self.logs[done.node] = Some(log);
            }
            let label = self.plan.nodes[done.node].label.clone();
            ui.done(1);
            match done.outcome {
                Ok(Built { entry, ran }) => {
                    if ran {
                        ui.println(&format!(
                            "  ran  {label}  ({:.1}s)",
                            done.duration.as_secs_f64()
                        ));
                    } else {
                        ui.println(&format!("  reused {label}  (built by another run)"));
                    }
                    self.states[done.node] = State::Done { entry, ran };
                    self.complete(ui, done.node)?;
                }
                Err(JobError::Cancelled(_)) => {
                    self.states[done.node] = State::Cancelled;
                }
                Err(e) => {
                    let log = self.log_path(done.node);
                    ui.println(&format!("  FAILED {label}: {e}"));
                    self.failures.push(Failure {
                        label: label.clone(),
                        error: e.to_string(),
                        log,
                    });
                    self.states[done.node] = State::Failed(e.to_string());
                    self.skip_dependents(ui, done.node, &format!("input {label} failed"));
                    if !self.opts.keep_going {
                        self.stopping = true;
                    }
                }
            }
        }

        // Whatever never started.
        let interrupted = self.cancel.load(Ordering::Relaxed);
        let why = if self.failures.is_empty() {
            "not started: its inputs never became ready"
        } else {
            "not started: the run stopped after a failure (use --keep-going)"
        };
        for s in &mut self.states {
            if matches!(s, State::Waiting(_) | State::Queued(..)) {
                *s = if interrupted {
                    State::Cancelled
                } else {
                    State::Skipped(why.into())
                };
            }
        }
        for (i, s) in self.states.iter().enumerate() {
            let n = &self.plan.nodes[i];
            let (status, error) = match s {
                State::Done { ran: true, .. } => (StageStatus::Ran, None),
                State::Done { ran: false, .. } => (StageStatus::Cached, None),
                State::Failed(e) => (StageStatus::Failed, Some(e.clone())),
                State::Skipped(why) => (StageStatus::Skipped, Some(why.clone())),
                _ => (StageStatus::Cancelled, None),
            };
            let key_inputs = match s {
                State::Done { .. } => self.keys[i].clone(),
                _ => None,
            };
            let ran = matches!(status, StageStatus::Ran | StageStatus::Failed);
            self.records[i] = Some(StageRecord {
                instance: n.label.clone(),
                stage: n.stage.clone(),
                kind: n.kind().as_str().to_string(),
                key: key_inputs.as_ref().map(KeyInputs::digest),
                status,
                duration_s: self.durations[i],
                key_inputs,
                error,
                log: ran.then(|| self.log_path(i).display().to_string()),
            });
        }
        record.stages = self.records.into_iter().flatten().collect();
        Ok(self.failures)
    }
}
