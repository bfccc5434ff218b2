//! The Slurm executor: each node the scheduler starts becomes an `sbatch` job running
//! `whittle run-node` on the node's key, into the shared cache; nodes of one stage started
//! together go as one job array. Slurm schedules; this only submits, follows (`squeue`, then
//! `sacct`), reruns what failed for transient reasons, and cancels (`scancel`) on Ctrl-C.
//!
//! ```text
//! <cache>/slurm/<run-id>/NNN-<label>.sh            the batch script (NNN: the first node's id)
//! <cache>/slurm/<run-id>/NNN-<label>.out           its output (`-<task>.out` per array task)
//! <cache>/slurm/<run-id>/NNN-<label>.result.json   what run-node did: key, computed or reused
//! ```
//!
//! The run record lists each job as it is submitted (`RunRecord::jobs`). A run started while
//! an unfinished run's jobs are still queued or running follows those jobs instead of
//! submitting their keys again ("adopts" them); the build lock on each key keeps two jobs that
//! did start from computing it twice.

mod commands;
mod profile;
mod script;
mod shared;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use commands::{CommandError, JobState};
pub use profile::{ExecutorKind, GpuRequest, Profile, ProfileError};
pub use script::{requests, sbatch_options, slurm_time, Request};
pub use shared::Verdict;

use super::device::Need;
use super::executor::{Event, Executor, LocalExecutor, Placement};
use super::job::{log_path, Built, Handle, Job, JobError};
use super::node::NodeResult;
use crate::cache::key::Digest;
use crate::cache::{Cache, CacheError, ClusterJob, Lookup, RunRecord};
use crate::plan::{NodeId, Plan};
use crate::stages::Cancelled;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{0}")]
    NotShared(String),
    #[error(
        "stage {stage} asks for {gpus} GPU(s), but this whittle was built without CUDA: build \
         it with `--features cuda`, or give the stage `resources: {{gpus: 0}}` (or the profile \
         `gpus: 0`)"
    )]
    NoCuda { stage: String, gpus: u32 },
    #[error("cannot find the path of this whittle binary, which the jobs run: {0}")]
    NoExe(std::io::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The log is the event's: the run's summary prints it beside the message.
    #[error("Slurm job {job_id} ended {state}{detail}{message}")]
    Job {
        job_id: String,
        state: String,
        /// ` (NonZeroExitCode)`, ` (exit code 1:0)`, or empty.
        detail: String,
        /// `: <the last error line of the log>`, or empty.
        message: String,
        log: PathBuf,
    },
    #[error("Slurm job {job_id} completed but the cache has no entry {key}")]
    NoEntry {
        job_id: String,
        key: Digest,
        log: PathBuf,
    },
    #[error("Slurm no longer knows job {job_id} and it left no result")]
    Lost { job_id: String, log: PathBuf },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// States after which a job is run again (up to the profile's `retries`).
const TRANSIENT: [&str; 4] = ["NODE_FAIL", "PREEMPTED", "TIMEOUT", "BOOT_FAIL"];
/// Polls in a row a job may go unseen by `squeue` and `sacct` before it counts as lost.
const LOST_AFTER: u32 = 3;

/// A submitted job this run follows.
struct Tracked<'a> {
    node: NodeId,
    job: Job,
    handle: Handle<'a>,
    job_id: String,
    log: PathBuf,
    result: PathBuf,
    /// Submissions so far (1 for the first).
    attempt: u32,
    /// Its time limit, seconds.
    time: u64,
    since: Instant,
    /// Submitted by this run, or adopted from a dead one: cancelled with it. A job another live
    /// run submitted is followed, never cancelled.
    owned: bool,
    unseen: u32,
    last_state: String,
}

/// Runs each node as a Slurm job, and those the profile keeps local on `local`.
pub struct SlurmExecutor<'scope, 'env> {
    local: LocalExecutor<'scope, 'env>,
    local_running: usize,
    plan: &'env Plan,
    cache: &'env Cache,
    profile: &'env Profile,
    requests: Vec<Request>,
    cancel: &'env AtomicBool,
    whittle: PathBuf,
    dir: PathBuf,
    record: RunRecord,
    pending: Vec<(NodeId, Job, Handle<'env>)>,
    tracked: Vec<Tracked<'env>>,
    adoptable: HashMap<Digest, (ClusterJob, bool)>,
    events: VecDeque<Event>,
    last_poll: Option<Instant>,
    cancelled: bool,
}

impl<'scope, 'env> SlurmExecutor<'scope, 'env> {
    /// An executor for `plan`'s run `record` (a copy of it, re-written as jobs are submitted).
    /// Refuses a cache that compute nodes cannot share, and GPU jobs from a build without
    /// CUDA.
    pub fn new(
        local: LocalExecutor<'scope, 'env>,
        plan: &'env Plan,
        cache: &'env Cache,
        profile: &'env Profile,
        needs: &[Need],
        cancel: &'env AtomicBool,
        record: &RunRecord,
    ) -> Result<Self, SlurmError> {
        let requests = requests(plan, profile, needs);
        if !cfg!(feature = "cuda") {
            if let Some((i, r)) = requests
                .iter()
                .enumerate()
                .find(|(_, r)| !r.local && r.gpus > 0)
            {
                return Err(SlurmError::NoCuda {
                    stage: plan.nodes[i].label.clone(),
                    gpus: r.gpus,
                });
            }
        }
        match shared::check(cache.root()) {
            Verdict::Shared => {}
            Verdict::Warn(m) => {
                eprintln!("warning: {m}");
                tracing::warn!("{m}");
            }
            Verdict::Refuse(m) => return Err(SlurmError::NotShared(m)),
        }
        let whittle = std::env::current_exe().map_err(SlurmError::NoExe)?;
        let dir = cache.root().join("slurm").join(&record.run_id);
        std::fs::create_dir_all(&dir).map_err(|source| SlurmError::Write {
            path: dir.clone(),
            source,
        })?;
        let adoptable = adoptable(cache, &record.run_id)?;
        Ok(SlurmExecutor {
            local,
            local_running: 0,
            plan,
            cache,
            profile,
            requests,
            cancel,
            whittle,
            dir,
            record: record.clone(),
            pending: Vec::new(),
            tracked: Vec::new(),
            adoptable,
            events: VecDeque::new(),
            last_poll: None,
            cancelled: false,
        })
    }

    /// The jobs this run submitted or adopted, for its final record.
    pub fn jobs(&self) -> Vec<ClusterJob> {
        self.record.jobs.clone()
    }

    fn save_record(&self) {
        if let Err(e) = self.cache.write_run(&self.record) {
            tracing::warn!("cannot record the submitted jobs: {e}");
        }
    }

    /// Submits what was started since the last call: one job array per stage and request
    /// where the profile allows arrays, else one job each.
    fn flush(&mut self) {
        let mut groups: Vec<Vec<(NodeId, Job, Handle<'env>)>> = Vec::new();
        for item in std::mem::take(&mut self.pending) {
            let node = item.0;
            let fits = |g: &Vec<(NodeId, Job, Handle)>| {
                let first = g[0].0;
                self.profile.arrays
                    && self.plan.nodes[first].stage == self.plan.nodes[node].stage
                    && self.requests[first].same_shape(&self.requests[node])
            };
            match groups.iter_mut().find(|g| fits(g)) {
                Some(g) => g.push(item),
                None => groups.push(vec![item]),
            }
        }
        for group in groups {
            let time = self.requests[group[0].0].time;
            self.submit(group, time, 1);
        }
    }

    /// Submits `group` (one job, or an array of several) with time limit `time`.
    fn submit(&mut self, group: Vec<(NodeId, Job, Handle<'env>)>, time: u64, attempt: u32) {
        let first = group[0].0;
        let label = &self.plan.nodes[first].label;
        let stem = if group.len() > 1 {
            format!("{first:03}-{}-array", self.plan.nodes[first].stage)
        } else {
            log_path(Path::new(""), first, label)
                .with_extension("")
                .display()
                .to_string()
        };
        let stem = if attempt > 1 {
            format!("{stem}.retry{}", attempt - 1)
        } else {
            stem
        };
        let array = group.len() > 1;
        let mut req = self.requests[first].clone();
        req.time = time;
        let tasks: Vec<script::Task> = group
            .iter()
            .map(|(node, job, _)| script::Task {
                label: job.label.clone(),
                key: job.key.digest().hex(),
                pipeline: job.pipeline.clone(),
                device: req.device(),
                memory: job.memory,
                result: self.dir.join(format!(
                    "{}.result.json",
                    log_path(Path::new(""), *node, &job.label)
                        .with_extension("")
                        .display()
                )),
            })
            .collect();
        let output = if array {
            self.dir.join(format!("{stem}-%a.out"))
        } else {
            self.dir.join(format!("{stem}.out"))
        };
        let name = format!("whittle:{}", self.plan.nodes[first].stage);
        let spec = script::ScriptSpec {
            whittle: &self.whittle,
            cache: self.cache.root(),
            run_id: &self.record.run_id,
            output: &output,
            options: sbatch_options(&req, self.profile, &name),
            array: array.then_some(self.profile.array_throttle),
        };
        let text = script::render(&spec, &tasks);
        let path = self.dir.join(format!("{stem}.sh"));
        for t in &tasks {
            let _ = std::fs::remove_file(&t.result);
        }
        let submitted = std::fs::write(&path, text)
            .map_err(|source| SlurmError::Write {
                path: path.clone(),
                source,
            })
            .and_then(|()| Ok(commands::sbatch(&path)?));
        let id = match submitted {
            Ok(id) => id,
            Err(e) => {
                let msg = e.to_string();
                for (node, _, handle) in group {
                    handle.progress.0.finish_and_clear();
                    self.events.push_back(Event {
                        node,
                        outcome: Err(JobError::Slurm(Box::new(SlurmError::Command(
                            CommandError::Failed {
                                command: "sbatch",
                                message: format!("{msg} (script {})", path.display()),
                            },
                        )))),
                        duration: Duration::ZERO,
                        log: Some(path.clone()),
                    });
                }
                return;
            }
        };
        for (i, ((node, job, handle), task)) in group.into_iter().zip(tasks).enumerate() {
            let (job_id, log) = if array {
                (
                    format!("{id}_{i}"),
                    self.dir.join(format!("{stem}-{i}.out")),
                )
            } else {
                (id.clone(), output.clone())
            };
            tracing::info!(stage = %job.label, job = %job_id, "submitted to Slurm");
            handle
                .progress
                .0
                .set_message(format!("job {job_id} submitted"));
            self.record.jobs.push(ClusterJob {
                instance: job.label.clone(),
                key: job.key.digest(),
                job_id: job_id.clone(),
                log: log.display().to_string(),
                result: task.result.display().to_string(),
            });
            self.tracked.push(Tracked {
                node,
                job,
                handle,
                job_id,
                log,
                result: task.result,
                attempt,
                time,
                since: Instant::now(),
                owned: true,
                unseen: 0,
                last_state: String::new(),
            });
        }
        self.save_record();
    }

    /// Follows `cj`, a job an earlier run submitted for this node's key.
    fn adopt(&mut self, node: NodeId, job: Job, handle: Handle<'env>, cj: ClusterJob, owned: bool) {
        tracing::info!(stage = %job.label, job = %cj.job_id, "adopted a queued Slurm job");
        handle
            .progress
            .0
            .set_message(format!("job {} adopted", cj.job_id));
        self.record.jobs.push(cj.clone());
        self.save_record();
        self.tracked.push(Tracked {
            node,
            time: self.requests[node].time,
            job,
            handle,
            job_id: cj.job_id,
            log: PathBuf::from(cj.log),
            result: PathBuf::from(cj.result),
            attempt: 1,
            since: Instant::now(),
            owned,
            unseen: 0,
            last_state: String::new(),
        });
    }

    /// Asks Slurm about every job followed; ends those that ended.
    fn poll(&mut self) {
        self.last_poll = Some(Instant::now());
        let mut bases: Vec<String> = self
            .tracked
            .iter()
            .map(|t| t.job_id.split('_').next().unwrap_or("").to_string())
            .collect();
        bases.sort();
        bases.dedup();
        let mut states = match commands::squeue(&bases) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("squeue: {e}");
                return;
            }
        };
        let unseen: Vec<String> = self
            .tracked
            .iter()
            .filter(|t| {
                let base = t.job_id.split('_').next().unwrap_or("");
                !states.contains_key(&t.job_id) && !states.contains_key(base)
            })
            .map(|t| t.job_id.clone())
            .collect();
        states.extend(commands::sacct(&unseen));
        for t in std::mem::take(&mut self.tracked) {
            // An array whose tasks never started is one record: the array's id.
            let base = t.job_id.split('_').next().unwrap_or("");
            let state = states.get(&t.job_id).or_else(|| states.get(base)).cloned();
            match state {
                Some(st) if st.is_live() => self.follow(t, &st),
                Some(st) => self.ended(t, st),
                None if t.result.exists() => self.ended(
                    t,
                    JobState {
                        state: "COMPLETED".into(),
                        detail: String::new(),
                    },
                ),
                None => {
                    let mut t = t;
                    t.unseen += 1;
                    if t.unseen >= LOST_AFTER {
                        let e = SlurmError::Lost {
                            job_id: t.job_id.clone(),
                            log: t.log.clone(),
                        };
                        self.finish(t, Err(JobError::Slurm(Box::new(e))));
                    } else {
                        self.tracked.push(t);
                    }
                }
            }
        }
    }

    fn follow(&mut self, mut t: Tracked<'env>, st: &JobState) {
        t.unseen = 0;
        if st.state != t.last_state {
            let why = match st.detail.as_str() {
                "" | "None" => String::new(),
                d => format!(" ({d})"),
            };
            t.handle
                .progress
                .0
                .set_message(format!("job {} {}{why}", t.job_id, st.state));
            tracing::debug!(job = %t.job_id, state = %st.state, "slurm");
            t.last_state = st.state.clone();
        }
        self.tracked.push(t);
    }

    fn ended(&mut self, t: Tracked<'env>, st: JobState) {
        match st.state.as_str() {
            "COMPLETED" => {
                let outcome = self.entry_of(&t);
                self.finish(t, outcome);
            }
            "CANCELLED" if self.cancelled => self.finish(t, Err(JobError::Cancelled(Cancelled))),
            s if TRANSIENT.contains(&s) && t.attempt <= self.profile.retries => {
                let time = if s == "TIMEOUT" {
                    (t.time as f64 * self.profile.timeout_factor).ceil() as u64
                } else {
                    t.time
                };
                tracing::warn!(job = %t.job_id, state = s, "rerunning with time {time}s");
                t.handle
                    .progress
                    .0
                    .set_message(format!("job {} {s}: submitting again", t.job_id));
                let attempt = t.attempt + 1;
                self.submit(vec![(t.node, t.job, t.handle)], time, attempt);
            }
            s => {
                // squeue gives a reason (`NonZeroExitCode`), sacct an exit code (`1:0`).
                let detail = match st.detail.as_str() {
                    "" | "None" | "0:0" => String::new(),
                    d if d.contains(':') => format!(" (exit code {d})"),
                    d => format!(" ({d})"),
                };
                let message = last_error(&t.log)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                let e = SlurmError::Job {
                    job_id: t.job_id.clone(),
                    state: s.to_string(),
                    detail,
                    message,
                    log: t.log.clone(),
                };
                self.finish(t, Err(JobError::Slurm(Box::new(e))));
            }
        }
    }

    /// The entry a completed job left, and whether it computed it.
    fn entry_of(&self, t: &Tracked) -> Result<Built, JobError> {
        let key = t.job.key.digest();
        // A job another live run submitted is that run's work: here it was reused.
        let ran = t.owned && NodeResult::read(&t.result).is_some_and(|r| r.key == key && r.ran);
        match self.cache.lookup(&key)? {
            Lookup::Hit(entry) => Ok(Built { entry, ran }),
            _ => Err(JobError::Slurm(Box::new(SlurmError::NoEntry {
                job_id: t.job_id.clone(),
                key,
                log: t.log.clone(),
            }))),
        }
    }

    fn finish(&mut self, t: Tracked<'env>, outcome: Result<Built, JobError>) {
        t.handle.progress.0.finish_and_clear();
        self.events.push_back(Event {
            node: t.node,
            outcome,
            duration: t.since.elapsed(),
            log: Some(t.log),
        });
    }

    /// Ctrl-C: cancels every job this run owns (`scancel`); each ends as cancelled.
    fn cancel_all(&mut self) {
        self.cancelled = true;
        let ids: Vec<String> = self
            .tracked
            .iter()
            .filter(|t| t.owned)
            .map(|t| t.job_id.clone())
            .collect();
        if let Err(e) = commands::scancel(&ids) {
            eprintln!("warning: cancelling the Slurm jobs {}: {e}", ids.join(" "));
        }
        for t in std::mem::take(&mut self.tracked) {
            self.finish(t, Err(JobError::Cancelled(Cancelled)));
        }
        for (node, _, handle) in std::mem::take(&mut self.pending) {
            handle.progress.0.finish_and_clear();
            self.events.push_back(Event {
                node,
                outcome: Err(JobError::Cancelled(Cancelled)),
                duration: Duration::ZERO,
                log: None,
            });
        }
    }
}

impl<'env> Executor<'env> for SlurmExecutor<'_, 'env> {
    fn start(&mut self, node: NodeId, job: Job, handle: Handle<'env>) {
        if self.requests[node].local {
            self.local_running += 1;
            self.local.start(node, job, handle);
            return;
        }
        if let Some((cj, alive)) = self.adoptable.remove(&job.key.digest()) {
            // A job of a live run is that run's to cancel.
            self.adopt(node, job, handle, cj, !alive);
            return;
        }
        self.pending.push((node, job, handle));
    }

    fn next(&mut self, timeout: Duration) -> Option<Event> {
        if self.cancel.load(Ordering::Relaxed) && !self.cancelled {
            self.cancel_all();
        }
        if !self.pending.is_empty() {
            self.flush();
        }
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        let due = self
            .last_poll
            .is_none_or(|t| t.elapsed() >= self.profile.poll);
        if !self.tracked.is_empty() && due {
            self.poll();
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
        }
        if self.local_running > 0 {
            let e = self.local.next(timeout);
            if e.is_some() {
                self.local_running -= 1;
            }
            return e;
        }
        std::thread::sleep(timeout);
        None
    }

    fn placement(&self, node: NodeId) -> Placement {
        let r = &self.requests[node];
        if r.local {
            Placement::Pool
        } else {
            Placement::Remote(r.device())
        }
    }
}

/// Jobs of unfinished runs still queued or running, by key, with whether their run is alive.
fn adoptable(
    cache: &Cache,
    run_id: &str,
) -> Result<HashMap<Digest, (ClusterJob, bool)>, SlurmError> {
    let mut candidates: HashMap<Digest, (ClusterJob, bool)> = HashMap::new();
    for run in cache.runs() {
        if run.finished.is_some() || run.run_id == run_id || run.jobs.is_empty() {
            continue;
        }
        let alive = cache.run_alive(&run.run_id);
        for j in run.jobs {
            candidates.insert(j.key, (j, alive));
        }
    }
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let mut bases: Vec<String> = candidates
        .values()
        .map(|(j, _)| j.job_id.split('_').next().unwrap_or("").to_string())
        .collect();
    bases.sort();
    bases.dedup();
    let states = commands::squeue(&bases)?;
    candidates.retain(|_, (j, _)| {
        let base = j.job_id.split('_').next().unwrap_or("");
        states
            .get(&j.job_id)
            .or_else(|| states.get(base))
            .is_some_and(JobState::is_live)
    });
    Ok(candidates)
}

/// The last line of a job's log that reads as an error, for the failure message.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("cancelled") || l.contains("killed")
        })
        .map(|l| l.trim().chars().take(300).collect())
}

/// What `whittle plan --executor slurm` shows: per node that must run, its job's request and
/// `sbatch` options; nodes of one stage that would go as an array are marked so.
pub fn dry_run(plan: &Plan, profile: &Profile, needs: &[Need], run: &[bool]) -> String {
    use std::fmt::Write;
    let reqs = requests(plan, profile, needs);
    let mut out = String::new();
    let todo: Vec<usize> = (0..plan.nodes.len()).filter(|&i| run[i]).collect();
    let _ = writeln!(
        out,
        "{} of {} stages to run on Slurm{}:",
        todo.len(),
        plan.nodes.len(),
        profile
            .path
            .as_ref()
            .map(|p| format!(" (profile {})", p.display()))
            .unwrap_or_default()
    );
    let mut seen_arrays: Vec<(String, Request)> = Vec::new();
    for &i in &todo {
        let n = &plan.nodes[i];
        let r = &reqs[i];
        if r.local {
            let _ = writeln!(out, "  {:<40} in this process", n.label);
            continue;
        }
        let siblings = todo
            .iter()
            .filter(|&&j| plan.nodes[j].stage == n.stage && reqs[j].same_shape(r) && !reqs[j].local)
            .count();
        let array = profile.arrays && siblings > 1;
        let gpus = if r.gpus > 0 {
            format!(" gpus={}", r.gpus)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<40} partition={} cpus={} mem={}M{gpus} time={}{}",
            n.label,
            r.partition.as_deref().unwrap_or("(default)"),
            r.cpus,
            r.mem_mib(),
            slurm_time(r.time),
            if array {
                format!(" (array of {siblings})")
            } else {
                String::new()
            }
        );
        let shape = (n.stage.clone(), r.clone());
        if array && seen_arrays.contains(&shape) {
            continue;
        }
        if array {
            seen_arrays.push(shape);
        }
        let mut opts = sbatch_options(r, profile, &format!("whittle:{}", n.stage));
        if array {
            let mut a = format!("--array=0-{}", siblings - 1);
            if let Some(t) = profile.array_throttle {
                a.push_str(&format!("%{t}"));
            }
            opts.push(a);
        }
        let _ = writeln!(out, "      sbatch {}", opts.join(" "));
    }
    out
}

/// `shared::check` for a dry run: what a run would say about the cache's filesystem.
pub fn check_cache(cache: &Path) -> Verdict {
    shared::check(cache)
}
