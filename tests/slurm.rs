//! `whittle run --executor slurm` on a real Slurm cluster (`scripts/slurm-local.sh start` makes
//! a one-node one here): every node a Slurm job, the keys and results of a local run, nothing
//! submitted on a rerun; a cancelled job reported and finished by a rerun; a killed submitter's
//! queued jobs adopted on restart; two submitters on one cache computing each key once.
//!
//! Skipped with a printed reason where no Slurm cluster answers; under CI (`CI=true`) that is a
//! failure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_ok, text};
use whittle::cache::{Cache, Digest, Lookup, RunRecord, StageStatus};

const BIN: &str = env!("CARGO_BIN_EXE_whittle");

/// Whether a Slurm cluster answers with a usable node; skips (or fails under CI) otherwise.
fn slurm_up() -> bool {
    let state = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let why = match state {
        Err(e) => format!("no `sinfo` ({e})"),
        Ok(o) if !o.status.success() => format!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            if text
                .lines()
                .any(|s| ["idle", "mixed", "allocated", "completing"].contains(&s.trim()))
            {
                return true;
            }
            format!("no usable node (sinfo: {})", text.trim())
        }
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("Slurm is required under CI: {why}; scripts/slurm-local.sh start");
    }
    eprintln!("skipping: {why}; `scripts/slurm-local.sh start` starts a local cluster");
    false
}

/// load → prune at two sparsities (one job array) → perplexity of each.
fn pipeline(dir: &Path, shared: &Path) -> PathBuf {
    let file = dir.join("p.yaml");
    let text = format!(
        r#"{stories}sweep:
  grid:
    sparsity: [0.3, 0.5]
stages:
  base: {{kind: load, model: stories}}
  pruned:
    kind: prune
    model: base
    method: magnitude
    sparsity: ${{sparsity}}
    resources: {{cpus: 1, time: 10m}}
  ppl: {{kind: evaluate, model: pruned, task: perplexity, dataset: stories, seqlen: 32, limit: 2}}
"#,
        stories = common::stories_sections(shared)
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// A profile for the test cluster: 1 CPU a job, no GPUs, squeue every second.
fn profile(dir: &Path) -> PathBuf {
    let file = dir.join("profile.yaml");
    std::fs::write(
        &file,
        "executor:\n  kind: slurm\n  cpus: 1\n  gpus: 0\n  time: 10m\n  poll: 1s\n  retries: 0\n",
    )
    .unwrap();
    file
}

/// `whittle run FILE --profile PROFILE` (Slurm) with `cache`, as a child process.
fn spawn_run(cache: &Path, file: &Path, profile: &Path, pause: Option<&str>) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", file.to_str().unwrap(), "--quiet", "--profile"])
        .arg(profile)
        .arg("--cache-dir")
        .arg(cache)
        .env_remove("WHITTLE_CACHE_DIR")
        .env_remove("WHITTLE_TEST_PAUSE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = pause {
        // Exported to the jobs: sbatch passes the submitting environment on.
        cmd.env("WHITTLE_TEST_PAUSE", p);
    }
    cmd.spawn().unwrap()
}

fn slurm_run(cache: &Path, file: &Path, profile: &Path) -> std::process::Output {
    spawn_run(cache, file, profile, None)
        .wait_with_output()
        .unwrap()
}

/// Each instance's (key, content digest) in a run.
fn results(cache: &Path, run: &RunRecord) -> BTreeMap<String, (Digest, Digest)> {
    let c = Cache::open(cache).unwrap();
    run.stages
        .iter()
        .map(|s| {
            let key = s.key.unwrap_or_else(|| panic!("{} has no key", s.instance));
            let Lookup::Hit(e) = c.lookup(&key).unwrap() else {
                panic!("{} not cached", s.instance)
            };
            (s.instance.clone(), (key, e.manifest().content))
        })
        .collect()
}

/// The run records of `cache`, oldest first.
fn runs(cache: &Path) -> Vec<RunRecord> {
    Cache::open(cache).unwrap().runs()
}

/// Jobs Slurm lists as finished whose working directory is under `dir`, with their states:
/// `sacct`, from the job completion log (`-c`) where there is no accounting database.
fn finished_jobs(dir: &Path) -> Vec<(String, String)> {
    let dir = dir.canonicalize().unwrap().display().to_string();
    let parse = |out: &[u8]| -> Vec<(String, String)> {
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                (f.len() >= 3 && f[2].starts_with(&dir)).then(|| (f[0].into(), f[1].into()))
            })
            .collect()
    };
    let args = ["-n", "-P", "-o", "JobID,State,WorkDir"];
    let comp = Command::new("sacct").arg("-c").args(args).output().unwrap();
    let jobs = parse(&comp.stdout);
    if !jobs.is_empty() {
        return jobs;
    }
    let acct = Command::new("sacct")
        .args(["-X", "-S", "now-1hours"])
        .args(args)
        .output()
        .unwrap();
    parse(&acct.stdout)
}

/// Waits until `cond` holds, failing after two minutes or if `child` exits first.
fn wait_for(child: &mut Child, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(120), "never: {what}");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("whittle exited ({status}) before: {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The job ids the newest run record of `cache` lists for instances starting with `prefix`.
fn jobs_of(cache: &Path, prefix: &str) -> Vec<String> {
    runs(cache)
        .last()
        .map(|r| {
            r.jobs
                .iter()
                .filter(|j| j.instance.starts_with(prefix))
                .map(|j| j.job_id.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// A job's state; a task of an array that never started is listed under the array's id.
fn squeue_state(job: &str) -> String {
    let base = job.split('_').next().unwrap();
    let out = Command::new("squeue")
        .args(["-h", "-r", "-t", "all", "-o", "%i|%T", "-j", base])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let states: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('|')).collect();
    states
        .get(job)
        .or_else(|| states.get(base))
        .unwrap_or(&"")
        .to_string()
}

#[test]
fn a_sweep_on_slurm_gives_the_keys_and_results_of_a_local_run() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    if !slurm_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = pipeline(tmp.path(), shared);
    let profile = profile(tmp.path());

    let local_cache = tmp.path().join("local");
    let local = run_ok(&local_cache, &file);
    let want = results(&local_cache, &local);

    // What would be submitted: a dry run writes nothing.
    let cache = tmp.path().join("cache");
    let out = Command::new(BIN)
        .args(["plan", file.to_str().unwrap(), "--profile"])
        .arg(&profile)
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("5 of 5 stages to run on Slurm"), "{plan}");
    assert!(
        plan.contains("--cpus-per-task=1") && plan.contains("--time=0-00:10:00"),
        "{plan}"
    );
    assert!(
        plan.contains("(array of 2)") && plan.contains("--array=0-1"),
        "{plan}"
    );
    assert!(!cache.exists(), "plan wrote {}", cache.display());

    let out = slurm_run(&cache, &file, &profile);
    assert!(out.status.success(), "{}", text(&out));
    let run = runs(&cache).pop().unwrap();
    assert_eq!(results(&cache, &run), want, "Slurm and local runs differ");
    assert!(run.stages.iter().all(|s| s.status == StageStatus::Ran));

    // Every node was a Slurm job; the two prune points one array.
    let mut instances: Vec<&str> = run.jobs.iter().map(|j| j.instance.as_str()).collect();
    instances.sort_unstable();
    let mut labels: Vec<&str> = run.stages.iter().map(|s| s.instance.as_str()).collect();
    labels.sort_unstable();
    assert_eq!(instances, labels);
    let prune_ids = jobs_of(&cache, "pruned[");
    assert_eq!(prune_ids.len(), 2);
    let array = prune_ids[0].split('_').next().unwrap();
    assert_eq!(prune_ids, [format!("{array}_0"), format!("{array}_1")]);
    let finished = finished_jobs(&cache.join("slurm").join(&run.run_id));
    assert_eq!(finished.len(), 5, "sacct lists {finished:?}");
    assert!(
        finished.iter().all(|(_, s)| s == "COMPLETED"),
        "{finished:?}"
    );

    // A rerun submits nothing.
    let out = slurm_run(&cache, &file, &profile);
    assert!(out.status.success(), "{}", text(&out));
    let rerun = runs(&cache).pop().unwrap();
    assert!(rerun.jobs.is_empty(), "{:?}", rerun.jobs);
    assert!(rerun.stages.iter().all(|s| s.status == StageStatus::Cached));
}

#[test]
fn a_cancelled_job_is_reported_and_a_rerun_finishes_the_rest() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    if !slurm_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = pipeline(tmp.path(), shared);
    let profile = profile(tmp.path());
    let cache = tmp.path().join("cache");

    let mut child = spawn_run(&cache, &file, &profile, Some("prune:8000"));
    let mut victim = String::new();
    wait_for(&mut child, "a prune job running", || {
        let ids = jobs_of(&cache, "pruned[sparsity=0.3]");
        match ids.first() {
            Some(id) if squeue_state(id) == "RUNNING" => {
                victim = id.clone();
                true
            }
            _ => false,
        }
    });
    let out = Command::new("scancel").arg(&victim).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("Slurm job {victim} ended CANCELLED")),
        "{}",
        text(&out)
    );
    let run = runs(&cache).pop().unwrap();
    let failed = run
        .stages
        .iter()
        .find(|s| s.instance == "pruned[sparsity=0.3]")
        .unwrap();
    assert_eq!(failed.status, StageStatus::Failed);
    let log = failed.log.as_deref().unwrap();
    assert!(stdout.contains(&format!("log: {log}")), "{stdout}");
    assert!(Path::new(log).exists(), "{log}");

    // A rerun computes what is left, and only that.
    let out = slurm_run(&cache, &file, &profile);
    assert!(out.status.success(), "{}", text(&out));
    let rerun = runs(&cache).pop().unwrap();
    let ran: Vec<&str> = rerun
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Ran)
        .map(|s| s.instance.as_str())
        .collect();
    assert!(ran.contains(&"pruned[sparsity=0.3]"), "{ran:?}");
    assert!(!ran.contains(&"base"), "{ran:?}");
    assert_eq!(rerun.jobs.len(), ran.len());
}

#[test]
fn a_restarted_submitter_adopts_its_queued_jobs() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    if !slurm_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = pipeline(tmp.path(), shared);
    let profile = profile(tmp.path());
    let local_cache = tmp.path().join("local");
    let want = results(&local_cache, &run_ok(&local_cache, &file));

    // Killed while both prune jobs are queued or running.
    let cache = tmp.path().join("cache");
    let mut child = spawn_run(&cache, &file, &profile, Some("prune:6000"));
    wait_for(&mut child, "the prune jobs submitted", || {
        jobs_of(&cache, "pruned[").len() == 2
    });
    child.kill().unwrap(); // SIGKILL: no chance to cancel anything
    child.wait().unwrap();
    let submitted = jobs_of(&cache, "pruned[");
    assert!(
        submitted
            .iter()
            .all(|j| ["PENDING", "RUNNING"].contains(&squeue_state(j).as_str())),
        "the jobs outlive their submitter"
    );

    let out = slurm_run(&cache, &file, &profile);
    assert!(out.status.success(), "{}", text(&out));
    let run = runs(&cache).pop().unwrap();
    assert_eq!(
        jobs_of(&cache, "pruned["),
        submitted,
        "the restart follows the same jobs"
    );
    assert_eq!(results(&cache, &run), want);
    for s in &run.stages {
        if s.instance.starts_with("pruned[") {
            assert_eq!(
                s.status,
                StageStatus::Ran,
                "{}: adopted, so this run's",
                s.instance
            );
        }
    }
}

/// How many of `records` computed each instance; every instance ran or was found cached.
fn computed(records: &[RunRecord]) -> BTreeMap<String, usize> {
    let mut computed: BTreeMap<String, usize> = BTreeMap::new();
    for r in records {
        for s in &r.stages {
            assert!(
                matches!(s.status, StageStatus::Ran | StageStatus::Cached),
                "{}: {:?}",
                s.instance,
                s.status
            );
            *computed.entry(s.instance.clone()).or_default() +=
                usize::from(s.status == StageStatus::Ran);
        }
    }
    computed
}

#[test]
fn two_submitters_on_one_cache_compute_each_key_once() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    if !slurm_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = pipeline(tmp.path(), shared);
    let profile = profile(tmp.path());

    // Started at once, they race for every key: both submit, the build lock lets one job
    // compute it and the other reuse it.
    let cache = tmp.path().join("race");
    let a = spawn_run(&cache, &file, &profile, Some("prune:3000"));
    let b = spawn_run(&cache, &file, &profile, Some("prune:3000"));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let records = runs(&cache);
    assert_eq!(records.len(), 2);
    let once = computed(&records);
    assert_eq!(once.len(), 5);
    assert!(once.values().all(|&n| n == 1), "computed twice: {once:?}");

    // Started while the first one's prune jobs are queued or running, the second follows those
    // jobs instead of submitting its own, and counts their entries as the first one's.
    let cache = tmp.path().join("follow");
    let mut a = spawn_run(&cache, &file, &profile, Some("prune:5000"));
    wait_for(&mut a, "the prune jobs submitted", || {
        jobs_of(&cache, "pruned[").len() == 2
    });
    let first = jobs_of(&cache, "pruned[");
    let b = spawn_run(&cache, &file, &profile, None);
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let records = runs(&cache);
    assert_eq!(records.len(), 2);
    let second: Vec<String> = records
        .iter()
        .find(|r| {
            r.stages
                .iter()
                .any(|s| s.instance == "base" && s.status == StageStatus::Cached)
        })
        .expect("the second run found base cached")
        .jobs
        .iter()
        .filter(|j| j.instance.starts_with("pruned["))
        .map(|j| j.job_id.clone())
        .collect();
    assert_eq!(second, first, "the second run follows the first one's jobs");
    let once = computed(&records);
    assert!(once.values().all(|&n| n == 1), "computed twice: {once:?}");
}

/// Needs no cluster: what `resources:` says never enters a key, so a pipeline run locally with
/// it is all cached, under the same keys, for the same file without it.
#[test]
fn resources_never_change_a_key() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = pipeline(tmp.path(), shared);
    let cache = tmp.path().join("cache");
    let run = run_ok(&cache, &file);
    let with: BTreeMap<String, Digest> = run
        .stages
        .iter()
        .map(|s| (s.instance.clone(), s.key.unwrap()))
        .collect();

    let plain = tmp.path().join("plain.yaml");
    let source = std::fs::read_to_string(&file).unwrap();
    assert!(source.contains("    resources: {cpus: 1, time: 10m}\n"));
    std::fs::write(
        &plain,
        source.replace("    resources: {cpus: 1, time: 10m}\n", ""),
    )
    .unwrap();
    let out = common::whittle(
        &cache,
        &["plan", plain.to_str().unwrap(), "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let without: BTreeMap<String, Digest> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["status"], "cached", "{n}");
            let key = Digest::from_hex(n["key"].as_str().unwrap()).unwrap();
            (n["label"].as_str().unwrap().to_string(), key)
        })
        .collect();
    assert_eq!(with, without);
}

/// Needs no cluster: a profile with a mistake is refused before anything runs, naming the key.
#[test]
fn a_bad_profile_exits_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("p.yaml");
    std::fs::write(&file, "stages:\n  t: {kind: report, inputs: []}\n").unwrap();
    let profile = tmp.path().join("profile.yaml");
    std::fs::write(&profile, "executor:\n  kind: slurm\n  partitoin: gpu\n").unwrap();
    let cache = tmp.path().join("cache");
    let out = common::whittle(
        &cache,
        &[
            "run",
            file.to_str().unwrap(),
            "--profile",
            profile.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `partitoin`") && err.contains("line 3"),
        "{err}"
    );
    assert!(!cache.exists(), "nothing ran");
}

#[test]
fn ctrl_c_cancels_the_submitted_jobs_and_exits_130() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    if !slurm_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = pipeline(tmp.path(), shared);
    let profile = profile(tmp.path());
    let cache = tmp.path().join("cache");

    let mut child = spawn_run(&cache, &file, &profile, Some("prune:8000"));
    wait_for(&mut child, "the prune jobs submitted", || {
        jobs_of(&cache, "pruned[").len() == 2
    });
    let submitted = jobs_of(&cache, "pruned[");
    let out = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    for job in &submitted {
        let start = Instant::now();
        loop {
            let state = squeue_state(job);
            if state == "CANCELLED" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "job {job} is {state}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let run = runs(&cache).pop().unwrap();
    assert!(run.finished.is_some());
    for s in &run.stages {
        if s.instance != "base" {
            assert_eq!(s.status, StageStatus::Cancelled, "{}", s.instance);
        }
    }
    // Nothing half-written: the cache holds base and nothing else.
    let entries = std::fs::read_dir(cache.join("v1/entries"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    assert_eq!(entries, 1);
}

/// Needs no cluster: a GPU job from a build without CUDA is refused before anything is
/// submitted, naming the stage and what to do.
#[test]
fn gpu_jobs_need_a_cuda_build() {
    if cfg!(feature = "cuda") {
        return;
    }
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = pipeline(tmp.path(), shared);
    let source = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, source.replace("{cpus: 1, time: 10m}", "{gpus: 1}")).unwrap();
    let cache = tmp.path().join("cache");
    let out = common::whittle(
        &cache,
        &["run", file.to_str().unwrap(), "--executor", "slurm"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stage pruned[sparsity=0.3] asks for 1 GPU(s)")
            && err.contains("--features cuda"),
        "{err}"
    );
    assert!(runs(&cache).is_empty(), "nothing ran");
}
