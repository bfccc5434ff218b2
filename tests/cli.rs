//! The binary as a user meets it: exit codes, error messages, failures and `--keep-going`.

mod common;

use common::{text, whittle};

use std::path::{Path, PathBuf};

use whittle::cache::{Cache, StageStatus};

#[test]
fn a_broken_pipeline_exits_2_and_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("broken.yaml");
    std::fs::write(
        &file,
        "models:\n  m: ./nowhere\nstages:\n  base: {kind: load, model: m}\n  p:\n    kind: prune\n    model: base\n    method: magnitude\n    sparsty: 0.5\n",
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let out = whittle(&cache, &["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml:9:5"), "{stderr}");
    assert!(stderr.contains("did you mean `sparsity`"), "{stderr}");
    assert!(
        stderr.contains("broken.yaml:2:6"),
        "the missing model dir too: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !cache.join("v1/runs").exists()
            || std::fs::read_dir(cache.join("v1/runs")).unwrap().count() == 0
    );
}

fn failing_pipeline(dir: &Path, shared: &Path) -> PathBuf {
    // No story in the sample is 4000 tokens long: the calibration fails, the Wanda prune that
    // needs it cannot run, and the magnitude branch does not care.
    let text = format!(
        r#"
{stories}stages:
  base: {{kind: load, model: stories}}
  calib: {{kind: calibrate, model: base, dataset: stories, samples: 4, seqlen: 4000}}
  wanda: {{kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}}
  mag: {{kind: prune, model: base, method: magnitude, sparsity: 0.5}}
  ppl-wanda: {{kind: evaluate, model: wanda, task: perplexity, dataset: stories, seqlen: 64}}
  ppl-mag: {{kind: evaluate, model: mag, task: perplexity, dataset: stories, seqlen: 64}}
"#,
        stories = common::stories_sections(shared)
    );
    let path = dir.join("failing.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_failing_stage_fails_only_its_dependents_with_keep_going() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let file = failing_pipeline(tmp.path(), &shared);
    let cache = tmp.path().join("cache");

    let out = whittle(&cache, &["run", file.to_str().unwrap(), "--keep-going"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = Cache::open(&cache).unwrap().runs().pop().unwrap();
    let status = |name: &str| {
        run.stages
            .iter()
            .find(|s| s.instance == name)
            .unwrap()
            .status
    };
    assert_eq!(status("calib"), StageStatus::Failed);
    assert_eq!(status("wanda"), StageStatus::Skipped);
    assert_eq!(status("ppl-wanda"), StageStatus::Skipped);
    assert_eq!(status("mag"), StageStatus::Ran);
    assert_eq!(status("ppl-mag"), StageStatus::Ran);
    // The summary names the failure, why, and where its log is; the log holds the error.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("failed: calib"), "{stdout}");
    assert!(stdout.contains("longer than seqlen = 4000"), "{stdout}");
    let log = run
        .stages
        .iter()
        .find(|s| s.instance == "calib")
        .unwrap()
        .log
        .clone()
        .unwrap();
    assert!(stdout.contains(&log), "{stdout}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("failed:"));

    // Without --keep-going the run stops scheduling after the failure; finished work is kept.
    let cache2 = tmp.path().join("cache2");
    let out = whittle(&cache2, &["run", file.to_str().unwrap(), "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = Cache::open(&cache2).unwrap().runs().pop().unwrap();
    assert!(run.stages.iter().any(|s| s.status == StageStatus::Failed));
    assert!(run.stages.iter().any(|s| s.status == StageStatus::Skipped));

    // What ran is cached: the next run redoes only what failed.
    let out = whittle(&cache, &["run", file.to_str().unwrap(), "--keep-going"]);
    assert_eq!(out.status.code(), Some(1));
    let run = Cache::open(&cache).unwrap().runs().pop().unwrap();
    let ran: Vec<&str> = run
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Ran || s.status == StageStatus::Failed)
        .map(|s| s.instance.as_str())
        .collect();
    assert_eq!(ran, vec!["calib"]);
}

#[test]
fn plan_renders_json_dot_and_mermaid() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let file = failing_pipeline(tmp.path(), &shared);
    let cache = tmp.path().join("cache");
    let out = whittle(
        &cache,
        &["plan", file.to_str().unwrap(), "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["schema"], 1);
    let nodes = plan["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    assert!(nodes.iter().all(|n| n["status"] == "run"));
    // Nothing is cached: the load has a key, everything below it waits on it.
    assert!(nodes[0]["key"].is_string());
    assert!(nodes[1]["key"].is_null());
    assert_eq!(nodes[0]["reason"], "never run before");

    let dot = whittle(&cache, &["plan", file.to_str().unwrap(), "--format", "dot"]);
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(
        dot.starts_with("digraph plan {") && dot.contains("n0 -> n1"),
        "{dot}"
    );
    let mermaid = whittle(
        &cache,
        &["plan", file.to_str().unwrap(), "--format", "mermaid"],
    );
    assert!(String::from_utf8_lossy(&mermaid.stdout).starts_with("flowchart LR"));
}

#[test]
fn a_run_that_leaves_stages_unrun_exits_nonzero_and_says_why_on_stderr() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let file = failing_pipeline(tmp.path(), &shared);
    let cache = tmp.path().join("cache");
    let out = whittle(&cache, &["run", file.to_str().unwrap(), "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = Cache::open(&cache).unwrap().runs().pop().unwrap();
    let unrun: Vec<&str> = run
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Skipped)
        .map(|s| s.instance.as_str())
        .collect();
    assert!(!unrun.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} of 6 stages were not run", unrun.len())),
        "{stderr}"
    );
    for s in unrun {
        assert!(
            stderr.contains(&format!("  {s}: ")),
            "{s} not named: {stderr}"
        );
    }
}
