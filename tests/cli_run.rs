//! The command line around `run`: targets, `--force`, `--dry-run`, `show`, where reports go,
//! instance labels, exit codes, and output into a closed pipe.

mod common;

use common::{text, whittle, whittle_in};

use std::path::{Path, PathBuf};

use whittle::cache::{Cache, StageStatus};

/// A repository (`.git` marks its root) holding a small swept pipeline on stories260K.
fn small_repo(shared: &Path, name_line: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("a/b/repo");
    std::fs::create_dir_all(repo.join(".git")).unwrap();
    std::fs::create_dir_all(repo.join("pipelines")).unwrap();
    let text = format!(
        r#"{name_line}
{stories}sweep:
  grid:
    method: [magnitude, random]
    sparsity: [0.25, 0.5]
stages:
  base: {{kind: load, model: stories}}
  pruned: {{kind: prune, model: base, method: "${{method}}", sparsity: "${{sparsity}}"}}
  ppl: {{kind: evaluate, model: pruned, task: perplexity, dataset: stories, seqlen: 32, limit: 2}}
  table: {{kind: report, inputs: [ppl]}}
"#,
        stories = common::stories_sections(shared)
    );
    let file = repo.join("pipelines/small.yaml");
    std::fs::write(&file, text).unwrap();
    (tmp, file)
}

fn ran(cache: &Path) -> Vec<(String, StageStatus)> {
    let run = Cache::open(cache)
        .unwrap()
        .runs()
        .pop()
        .expect("a run record");
    run.stages
        .iter()
        .map(|s| (s.instance.clone(), s.status))
        .collect()
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pipeline_name_outside_reports_never_touches_it() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let (tmp, file) = small_repo(shared, "name: ../../victim");
    // `reports/../../victim` from the repository root.
    let victim = tmp.path().join("a/b/victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("thesis.tex"), "years of work").unwrap();
    let cache = tmp.path().join("cache");
    for cmd in ["report", "run"] {
        let out = whittle_in(tmp.path(), &cache, &[cmd, arg(&file)]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("small.yaml:1:7"), "{stderr}");
        assert!(stderr.contains("pipeline name `../../victim`"), "{stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(victim.join("thesis.tex")).unwrap(),
        "years of work"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
}

#[test]
fn instance_labels_match_in_any_axis_order() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let (tmp, file) = small_repo(shared, "");
    let cache = tmp.path().join("cache");
    for label in [
        "ppl[sparsity=0.5,method=random]",
        "ppl[method=random,sparsity=0.5]",
        "ppl[ sparsity=0.50, method=random ]",
    ] {
        let out = whittle(&cache, &["why", arg(&file), label]);
        assert!(out.status.success(), "{label}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ppl[")).collect();
        assert_eq!(lines.len(), 1, "{label}: {stdout}");
        assert!(
            lines[0].starts_with("ppl[method=random,sparsity=0.5]: "),
            "{stdout}"
        );
    }
    // Naming some axes selects every instance agreeing on them.
    let out = whittle(&cache, &["why", arg(&file), "ppl[sparsity=0.25]"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ppl[")).count(),
        2,
        "{stdout}"
    );
    let out = whittle(
        &cache,
        &["why", arg(&file), "ppl[sparsity=0.7,method=random]"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn run_targets_dry_run_force_show_and_reports_dir() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let (tmp, file) = small_repo(shared, "");
    let cache = tmp.path().join("cache");
    let target = "ppl[sparsity=0.25,method=magnitude]";

    // --dry-run: the plan of the target and what it needs; nothing runs or is recorded.
    let out = whittle(&cache, &["run", arg(&file), target, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for l in [
        "base",
        "pruned[method=magnitude,sparsity=0.25]",
        "ppl[method=magnitude,sparsity=0.25]",
    ] {
        assert!(stdout.contains(l), "{l} missing from: {stdout}");
    }
    assert!(!stdout.contains("sparsity=0.5"), "{stdout}");
    assert!(Cache::open(&cache).unwrap().runs().is_empty());

    // A target runs with its ancestors only.
    let out = whittle(&cache, &["run", arg(&file), target]);
    assert!(out.status.success(), "{}", text(&out));
    let mut got = ran(&cache);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("base".to_string(), StageStatus::Ran),
            (
                "ppl[method=magnitude,sparsity=0.25]".to_string(),
                StageStatus::Ran
            ),
            (
                "pruned[method=magnitude,sparsity=0.25]".to_string(),
                StageStatus::Ran
            ),
        ]
    );

    // `show` reads the metric the stage wrote, without running anything.
    let c = Cache::open(&cache).unwrap();
    let ppl_written: f64 = c
        .entries()
        .unwrap()
        .filter_map(|(k, m)| m.ok().filter(|m| m.stage.starts_with("ppl")).map(|_| k))
        .map(|k| {
            let p = c.entry_dir(&k).join("metrics.json");
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            v["ppl"].as_f64().unwrap()
        })
        .next()
        .expect("one evaluate entry");
    let runs_before = c.runs().len();
    let out = whittle(&cache, &["show", arg(&file), "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let cached: Vec<&serde_json::Value> = rows.iter().filter(|r| r["status"] == "cached").collect();
    assert_eq!(cached.len(), 1, "{rows:?}");
    assert_eq!(cached[0]["method"], "magnitude");
    assert_eq!(cached[0]["sparsity"], 0.25);
    assert_eq!(cached[0]["ppl"].as_f64().unwrap(), ppl_written);
    assert!(rows
        .iter()
        .filter(|r| r["status"] == "pending")
        .all(|r| r["ppl"].is_null()));
    let csv = whittle(&cache, &["show", arg(&file), "--format", "csv"]);
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert!(csv.starts_with("stage,method,sparsity,status,ppl"), "{csv}");
    assert_eq!(Cache::open(&cache).unwrap().runs().len(), runs_before);

    // --force recomputes the stage; what is below keeps its entry, the output being the same.
    let out = whittle(&cache, &["run", arg(&file), target, "--force", "base"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut got = ran(&cache);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("base".to_string(), StageStatus::Ran),
            (
                "ppl[method=magnitude,sparsity=0.25]".to_string(),
                StageStatus::Cached
            ),
            (
                "pruned[method=magnitude,sparsity=0.25]".to_string(),
                StageStatus::Cached
            ),
        ]
    );

    // Labels hold commas: `--only` and `--force` take one each, never split.
    let out = whittle(
        &cache,
        &[
            "run",
            arg(&file),
            "--only",
            target,
            "--force",
            "pruned[sparsity=0.25,method=magnitude]",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let mut got = ran(&cache);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("base".to_string(), StageStatus::Cached),
            (
                "ppl[method=magnitude,sparsity=0.25]".to_string(),
                StageStatus::Cached
            ),
            (
                "pruned[method=magnitude,sparsity=0.25]".to_string(),
                StageStatus::Ran
            ),
        ]
    );

    // Reports go where asked.
    let reports = tmp.path().join("elsewhere");
    let out = whittle(
        &cache,
        &["report", arg(&file), "--reports-dir", arg(&reports)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(reports.join("small/table").is_dir());
    assert!(!file
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("reports")
        .exists());
}

#[test]
fn help_states_the_exit_codes_and_jobs_follow_the_devices() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["run", "--help"]] {
        let out = whittle(&tmp.path().join("cache"), args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("Exit codes:"), "{stdout}");
        assert!(stdout.contains("130"), "{stdout}");
    }
    use whittle::exec::{default_jobs, DeviceKind};
    assert_eq!(default_jobs(&[DeviceKind::Cpu]), 1);
    assert_eq!(
        default_jobs(&[DeviceKind::Cpu, DeviceKind::Cuda(0), DeviceKind::Cuda(1)]),
        3
    );
    assert_eq!(default_jobs(&[DeviceKind::Cuda(0), DeviceKind::Cuda(0)]), 1);
}

#[test]
fn io_errors_exit_1_and_name_the_file() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let (tmp, file) = small_repo(shared, "");
    // The cache path is taken by a file: an I/O failure, not an invalid pipeline.
    let cache = tmp.path().join("not-a-dir");
    std::fs::write(&cache, "x").unwrap();
    let out = whittle(&cache, &["run", arg(&file)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(arg(&cache)),
        "{}",
        text(&out)
    );

    // candle's own I/O errors name no file; ours do.
    let missing = tmp.path().join("gone.safetensors");
    let e = whittle::stages::read_tensors(&missing, &candle_core::Device::Cpu).unwrap_err();
    assert!(e.to_string().contains(arg(&missing)), "{e}");
    assert!(!e.to_string().starts_with("tensor operation failed"), "{e}");
}

#[cfg(unix)]
#[test]
fn report_into_a_closed_pipe_exits_quietly() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let (tmp, file) = small_repo(shared, "");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_whittle"))
        .args(["report", arg(&file), "--quiet", "--cache-dir"])
        .arg(tmp.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before anything is written, as `| head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(out.status.code(), Some(0));
    // It still did its work.
    assert!(tmp.path().join("a/b/repo/reports/small/table").is_dir());
}

/// stories260K copied into `dir`, with `tokenizer.json` replaced when given.
fn model_copy(shared: &Path, dir: &Path, tokenizer: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(shared.join("models/stories260K").join(f), dir.join(f)).unwrap();
    }
    if let Some(t) = tokenizer {
        std::fs::write(dir.join("tokenizer.json"), t).unwrap();
    }
}

#[test]
fn a_tokenizer_that_does_not_parse_fails_load_and_is_not_cached() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    model_copy(shared, &model, Some("{\"version\": oops"));
    let file = tmp.path().join("p.yaml");
    std::fs::write(
        &file,
        format!(
            "models:\n  m: {}\nstages:\n  base: {{kind: load, model: m}}\n",
            model.display()
        ),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let out = whittle(&cache, &["run", arg(&file)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(arg(&model.join("tokenizer.json"))),
        "{}",
        text(&out)
    );
    assert_eq!(Cache::open(&cache).unwrap().entries().unwrap().count(), 0);
}

#[test]
fn an_empty_or_short_dataset_names_the_file_and_the_reason() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "Once upon a time.").unwrap();
    let file = tmp.path().join("p.yaml");
    std::fs::write(
        &file,
        format!(
            "models:\n  m: {s}/models/stories260K\ndatasets:\n  empty: {{path: {e}, documents: separator, separator: \"<|endoftext|>\"}}\n  short: {h}\nstages:\n  base: {{kind: load, model: m}}\n  a: {{kind: evaluate, model: base, task: perplexity, dataset: empty, seqlen: 32}}\n  b: {{kind: evaluate, model: base, task: perplexity, dataset: short, seqlen: 32}}\n",
            s = shared.display(),
            e = empty.display(),
            h = short.display()
        ),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let out = whittle(&cache, &["run", arg(&file), "--keep-going"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    let line = |label: &str| {
        all.lines()
            .find(|l| l.contains(&format!("failed: {label}:")))
            .unwrap_or_else(|| panic!("no failure of {label}: {all}"))
            .to_string()
    };
    let a = line("a");
    assert!(
        a.contains(arg(&empty)) && a.contains("holds no documents"),
        "{a}"
    );
    let b = line("b");
    assert!(b.contains(arg(&short)), "{b}");
    assert!(b.contains("too few for one window of seqlen = 32"), "{b}");
}
