//! The engine end to end on a real model: a committed sweep runs, reruns nothing, reruns exactly
//! what an edit touches, and survives being killed mid-stage.

mod common;

use common::{run_ok, whittle};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, D};
use whittle::cache::{Cache, Lookup, RunRecord, StageStatus};

const BIN: &str = env!("CARGO_BIN_EXE_whittle");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn by_status(run: &RunRecord, status: StageStatus) -> Vec<String> {
    let mut v: Vec<String> = run
        .stages
        .iter()
        .filter(|s| s.status == status)
        .map(|s| s.instance.clone())
        .collect();
    v.sort();
    v
}

/// The committed sweep with `../../shared` made absolute, so a copy can live in a temp dir.
fn sweep_copy(dir: &Path, shared: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("pipelines/wanda-sweep.yaml")).unwrap();
    let text = edit(text.replace("../../shared", shared.to_str().unwrap()));
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Rows of the report entry of the run, as JSON objects.
fn report_rows(cache: &Path, run: &RunRecord) -> Vec<serde_json::Value> {
    let rec = run
        .stages
        .iter()
        .find(|s| s.kind == "report")
        .expect("a report");
    let Lookup::Hit(entry) = Cache::open(cache)
        .unwrap()
        .lookup(&rec.key.unwrap())
        .unwrap()
    else {
        panic!("report entry missing")
    };
    std::fs::read_to_string(entry.path("report.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metric(rows: &[serde_json::Value], stage: &str, method: Option<&str>, s: Option<f64>) -> f64 {
    rows.iter()
        .find(|r| {
            r["stage"] == stage && r["method"].as_str() == method && r["sparsity"].as_f64() == s
        })
        .unwrap_or_else(|| panic!("no row {stage} {method:?} {s:?}"))["ppl"]
        .as_f64()
        .unwrap()
}

/// Perplexity by the WikiText protocol computed independently: the tokenizers crate and
/// candle-transformers' LLaMA, decoding token by token with its KV cache, NLL in f64.
fn reference_wikitext_ppl(shared: &Path, seqlen: usize, limit: usize) -> f64 {
    use candle_transformers::models::llama as ct;
    let dir = shared.join("models/stories260K");
    let raw = std::fs::read_to_string(shared.join("data/wikitext-2-raw/wiki.test.raw")).unwrap();
    // Python reads the file in text mode: CRLF becomes LF.
    let raw = raw.replace("\r\n", "\n");
    // Hugging Face's rows: each line with its newline, blank lines empty; joined with "\n\n".
    let rows: Vec<&str> = raw
        .split_inclusive('\n')
        .map(|l| if l.trim().is_empty() { "" } else { l })
        .collect();
    let text = rows.join("\n\n");
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let ids = tok.encode(text, true).unwrap().get_ids().to_vec();

    let cfg: ct::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = cfg.into_config(false);
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = ct::Llama::load(vb, &cfg).unwrap();
    let mut nll = 0.0f64;
    let mut count = 0usize;
    for w in ids.chunks_exact(seqlen).take(limit) {
        let mut cache = ct::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap();
        for pos in 0..seqlen - 1 {
            let x = Tensor::new(&[w[pos]], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits = model.forward(&x, pos, &mut cache).unwrap();
            let logp: Vec<f32> = candle_nn::ops::log_softmax(&logits, D::Minus1)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap();
            nll -= logp[w[pos + 1] as usize] as f64;
            count += 1;
        }
    }
    (nll / count as f64).exp()
}

#[test]
fn wanda_sweep_end_to_end() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let committed = repo().join("pipelines/wanda-sweep.yaml");

    // 1. The committed file runs to a table.
    let run = run_ok(&cache, &committed);
    assert!(by_status(&run, StageStatus::Failed).is_empty());
    let rows = report_rows(&cache, &run);
    assert_eq!(
        rows.len(),
        2 + 2 * 6,
        "dense + 6 sweep points, on two datasets"
    );

    // Dense perplexity equals an independent computation.
    let dense = metric(&rows, "wiki-dense", None, None);
    let reference = reference_wikitext_ppl(&shared, 256, 40);
    let rel = (dense - reference).abs() / reference;
    assert!(
        rel < 1e-4,
        "dense ppl {dense} vs reference {reference} (rel {rel:e})"
    );

    // Perplexity rises with sparsity for both methods (in-domain TinyStories).
    let base = metric(&rows, "ppl-dense", None, None);
    for method in ["magnitude", "wanda"] {
        let mut last = base;
        for s in [0.1, 0.3, 0.5] {
            let p = metric(&rows, "ppl", Some(method), Some(s));
            assert!(p > last, "{method} at {s}: ppl {p} not above {last}");
            last = p;
        }
    }

    // Each pruned matrix's sparsity is the request, to within one weight per row.
    let c = Cache::open(&cache).unwrap();
    let mut checked = 0;
    for rec in run.stages.iter().filter(|s| s.kind == "prune") {
        let Lookup::Hit(entry) = c.lookup(&rec.key.unwrap()).unwrap() else {
            panic!()
        };
        let s = entry.manifest().meta["requested_sparsity"]
            .as_f64()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry.path("sparsity.json")).unwrap())
                .unwrap();
        for m in report["matrices"].as_array().unwrap() {
            let (zeros, numel, rows) = (
                m["zeros"].as_f64().unwrap(),
                m["numel"].as_f64().unwrap(),
                m["rows"].as_f64().unwrap(),
            );
            assert!(
                (zeros - s * numel).abs() <= rows,
                "{}: {zeros} zeros of {numel} at sparsity {s}",
                m["name"]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6 * 5 * 7, "6 prunes × 5 layers × 7 linear layers");

    // 2. Running the same file again executes nothing.
    let again = run_ok(&cache, &committed);
    assert!(
        by_status(&again, StageStatus::Ran).is_empty(),
        "{:?}",
        by_status(&again, StageStatus::Ran)
    );

    // A copy elsewhere reuses everything: keys are about content, not file names.
    let copy = sweep_copy(tmp.path(), &shared, |t| t);
    let moved = run_ok(&cache, &copy);
    assert!(by_status(&moved, StageStatus::Ran).is_empty());

    // Adding one sparsity value runs exactly the new prune and evaluate stages (and the table).
    let wider = sweep_copy(tmp.path(), &shared, |t| {
        t.replace(
            "sparsity: [0.1, 0.3, 0.5]",
            "sparsity: [0.1, 0.3, 0.5, 0.7]",
        )
    });
    let run = run_ok(&cache, &wider);
    let mut expected: Vec<String> = ["magnitude", "wanda"]
        .iter()
        .flat_map(|m| ["pruned", "ppl", "wiki"].map(|s| format!("{s}[method={m},sparsity=0.7]")))
        .collect();
    expected.push("table".into());
    expected.sort();
    assert_eq!(by_status(&run, StageStatus::Ran), expected);
    assert!(by_status(&run, StageStatus::Cached).contains(&"calib".to_string()));

    // 3. A new calibration seed reruns calibration, the Wanda prunes and their evaluations only.
    let reseeded = sweep_copy(tmp.path(), &shared, |t| {
        t.replace(
            "sparsity: [0.1, 0.3, 0.5]",
            "sparsity: [0.1, 0.3, 0.5, 0.7]",
        )
        .replace("seed: 0", "seed: 1")
    });
    let run = run_ok(&cache, &reseeded);
    let ran = by_status(&run, StageStatus::Ran);
    let mut expected: Vec<String> = [0.1, 0.3, 0.5, 0.7]
        .iter()
        .flat_map(|s| {
            ["pruned", "ppl", "wiki"].map(|st| format!("{st}[method=wanda,sparsity={s}]"))
        })
        .collect();
    expected.extend(["calib".to_string(), "table".to_string()]);
    expected.sort();
    assert_eq!(ran, expected);
    assert!(ran.iter().all(|r| !r.contains("magnitude")));

    // `why` names what changed.
    let out = whittle(&cache, &["why", reseeded.to_str().unwrap(), "calib"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("calib: cached"), "{text}");
}

fn small_pipeline(dir: &Path, shared: &Path) -> PathBuf {
    let text = format!(
        r#"
{stories}sweep:
  grid:
    method: [magnitude, wanda]
stages:
  base: {{kind: load, model: stories}}
  calib: {{kind: calibrate, model: base, dataset: stories, samples: 8, seqlen: 64}}
  pruned: {{kind: prune, model: base, method: "${{method}}", sparsity: 0.5, calibration: calib}}
  ppl: {{kind: evaluate, model: pruned, task: perplexity, dataset: stories, seqlen: 64}}
  table: {{kind: report, inputs: [ppl]}}
"#,
        stories = common::stories_sections(shared)
    );
    let path = dir.join("small.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every entry in the cache is complete: a manifest, and files matching it.
fn assert_entries_complete(cache: &Path) {
    let c = Cache::open(cache).unwrap();
    let entries_dir = cache.join("v1/entries");
    for shard in std::fs::read_dir(&entries_dir).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let dir = e.unwrap().path();
            assert!(
                dir.join("manifest.json").exists(),
                "partial entry {}",
                dir.display()
            );
            let key = whittle::cache::Digest::from_hex(dir.file_name().unwrap().to_str().unwrap())
                .unwrap();
            let Lookup::Hit(entry) = c.lookup(&key).unwrap() else {
                panic!("entry {} is not readable", dir.display())
            };
            entry.verify().unwrap();
        }
    }
}

#[test]
fn killed_during_prune_then_resumed_gives_identical_results() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = small_pipeline(tmp.path(), &shared);

    // Uninterrupted, for comparison.
    let clean_cache = tmp.path().join("clean");
    let clean = run_ok(&clean_cache, &pipeline);
    let want = report_rows(&clean_cache, &clean);

    // Killed while a prune stage has staged its files but not committed its entry.
    let cache = tmp.path().join("cache");
    let mut child = Command::new(BIN)
        .args(["run", pipeline.to_str().unwrap(), "--quiet", "--cache-dir"])
        .arg(&cache)
        .env("WHITTLE_TEST_PAUSE", "prune:5000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let staged = |cache: &Path| -> bool {
        std::fs::read_dir(cache.join("v1/tmp"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.path().join("overlay/overlay.json").exists())
            })
            .unwrap_or(false)
    };
    let start = Instant::now();
    while !staged(&cache) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the prune never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "whittle exited before the prune"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_entries_complete(&cache);

    // A new run completes and gives exactly the same numbers.
    let resumed = run_ok(&cache, &pipeline);
    assert!(by_status(&resumed, StageStatus::Cached).contains(&"base".to_string()));
    let got = report_rows(&cache, &resumed);
    let strip = |rows: Vec<serde_json::Value>| -> Vec<BTreeMap<String, serde_json::Value>> {
        rows.into_iter()
            .map(|r| serde_json::from_value(r).unwrap())
            .collect()
    };
    assert_eq!(strip(got), strip(want));
    assert_entries_complete(&cache);
}

/// The cache entry of `instance` in `run`.
fn entry_of(cache: &Path, run: &RunRecord, instance: &str) -> whittle::cache::Entry {
    common::entry(cache, run, instance)
}

/// Flips one bit in the middle of a file: same size, different content.
fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Every file under `dir` with its size and modification time: equal snapshots, nothing written.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d).unwrap();
        out.insert(d.clone(), (meta.len(), meta.modified().unwrap()));
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

/// Rows of a report as comparable maps.
fn rows_of(rows: Vec<serde_json::Value>) -> Vec<BTreeMap<String, serde_json::Value>> {
    rows.into_iter()
        .map(|r| serde_json::from_value(r).unwrap())
        .collect()
}

fn output_text(o: &std::process::Output) -> String {
    common::text(o)
}

#[test]
fn same_size_corruption_is_found_by_verify() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = small_pipeline(tmp.path(), &shared);
    let file = pipeline.to_str().unwrap();
    let cache = tmp.path().join("cache");
    let first = run_ok(&cache, &pipeline);
    let want = rows_of(report_rows(&cache, &first));

    // One flipped byte in an overlay blob, in calibration statistics and tokens, in metrics.json.
    let pruned = entry_of(&cache, &first, "pruned[method=wanda]");
    flip_byte(&pruned.path("overlay/t0000.bin"));
    let calib = entry_of(&cache, &first, "calib");
    flip_byte(&calib.path("stats.safetensors"));
    flip_byte(&calib.path("tokens.safetensors"));
    let ppl = entry_of(&cache, &first, "ppl[method=magnitude]");
    flip_byte(&ppl.path("metrics.json"));

    let out = whittle(&cache, &["verify", file]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for label in ["pruned[method=wanda]", "calib", "ppl[method=magnitude]"] {
        assert!(stderr.contains(label), "{label} not reported: {stderr}");
    }
    assert!(stderr.contains("t0000.bin"), "{stderr}");
    assert!(stderr.contains("metrics.json"), "{stderr}");
    assert!(!stderr.contains("pruned[method=magnitude]"), "{stderr}");
    let quarantined = std::fs::read_dir(cache.join("v1/quarantine"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(quarantined, 3);
    for e in [&pruned, &calib, &ppl] {
        assert!(!e.dir().exists(), "{} left in place", e.dir().display());
    }

    // What is left is sound, for the pipeline and for the whole cache.
    let out = whittle(&cache, &["verify", file]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let out = whittle(&cache, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    // The next run recomputes exactly the quarantined entries, to the same numbers.
    let again = run_ok(&cache, &pipeline);
    let ran = by_status(&again, StageStatus::Ran);
    for label in ["calib", "pruned[method=wanda]", "ppl[method=magnitude]"] {
        assert!(
            ran.contains(&label.to_string()),
            "{label} not rerun: {ran:?}"
        );
    }
    assert!(by_status(&again, StageStatus::Cached).contains(&"pruned[method=magnitude]".into()));
    assert_eq!(rows_of(report_rows(&cache, &again)), want);
}

#[test]
fn reports_never_read_metrics_from_an_edited_manifest() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = small_pipeline(tmp.path(), &shared);
    let file = pipeline.to_str().unwrap();
    let cache = tmp.path().join("cache");
    let first = run_ok(&cache, &pipeline);
    let ppl = entry_of(&cache, &first, "ppl[method=magnitude]");
    let real = ppl.manifest().meta["metrics"]["ppl"].as_f64().unwrap();

    let mut m = ppl.manifest().clone();
    m.meta["metrics"]["ppl"] = serde_json::json!(1.25);
    std::fs::write(
        ppl.dir().join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();

    let out = whittle(
        &cache,
        &[
            "report",
            file,
            "--out",
            tmp.path().join("r").to_str().unwrap(),
        ],
    );
    let all = output_text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("meta.metrics"), "{all}");
    assert!(
        !all.contains("1.25"),
        "the edited value reached the report: {all}"
    );

    // verify finds it too; after it, the run recomputes the real value.
    let out = whittle(&cache, &["verify", file]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let again = run_ok(&cache, &pipeline);
    let fresh = entry_of(&cache, &again, "ppl[method=magnitude]");
    assert_eq!(fresh.manifest().meta["metrics"]["ppl"].as_f64(), Some(real));
}

#[test]
fn plan_and_status_never_change_the_cache() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = small_pipeline(tmp.path(), &shared);
    let file = pipeline.to_str().unwrap();
    let cache = tmp.path().join("cache");
    let first = run_ok(&cache, &pipeline);
    // A truncated file: the cheap check behind plan and status sees it.
    let calib = entry_of(&cache, &first, "calib");
    let stats = calib.path("stats.safetensors");
    let len = std::fs::metadata(&stats).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stats)
        .unwrap()
        .set_len(len - 8)
        .unwrap();

    let before = snapshot(&cache);
    let plan = whittle(&cache, &["plan", file]);
    assert!(plan.status.success(), "{}", output_text(&plan));
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("corrupt"),
        "{}",
        output_text(&plan)
    );
    let status = whittle(&cache, &["status", file]);
    assert!(status.status.success(), "{}", output_text(&status));
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(text.contains("corrupt"), "{text}");
    let json = whittle(&cache, &["status", file, "--format", "json"]);
    assert!(json.status.success(), "{}", output_text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let stage = |name: &str| {
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(stage("calib")["corrupt"], 1);
    assert_eq!(stage("calib")["cached"], 0);
    assert_eq!(stage("base")["cached"], 1);
    assert_eq!(stage("pruned")["instances"], 2);
    assert_eq!(v["last_run"]["run_id"], first.run_id.as_str());
    let why = whittle(&cache, &["why", file, "calib"]);
    assert!(
        output_text(&why).contains("corrupt"),
        "{}",
        output_text(&why)
    );
    assert_eq!(
        snapshot(&cache),
        before,
        "a read-only command wrote to the cache"
    );
    assert!(calib.dir().exists(), "plan or status moved the entry");

    // Status of a cache that does not exist creates none.
    let nowhere = tmp.path().join("no-cache");
    let out = whittle(&nowhere, &["status", file]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("never run"));
    let out = whittle(&nowhere, &["plan", file]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        !nowhere.exists(),
        "status or plan created {}",
        nowhere.display()
    );
    // Nor does the default `./cache` appear outside a repository.
    let cwd = tmp.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    for cmd in ["status", "plan"] {
        let out = Command::new(BIN)
            .current_dir(&cwd)
            .args([cmd, file, "--quiet"])
            .env_remove("WHITTLE_CACHE_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "wrote into {}",
        cwd.display()
    );

    // The run quarantines and recomputes it.
    let again = run_ok(&cache, &pipeline);
    assert!(by_status(&again, StageStatus::Ran).contains(&"calib".to_string()));
}

#[test]
fn a_corrupt_input_found_mid_run_is_recomputed_not_skipped() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = small_pipeline(tmp.path(), &shared);
    let cache = tmp.path().join("cache");
    let first = run_ok(&cache, &pipeline);
    // Same size: only the full check when a stage is about to read it finds it.
    flip_byte(&entry_of(&cache, &first, "calib").path("stats.safetensors"));
    // The evaluations change, so they run and re-hash what they read, calib included.
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        "task: perplexity, dataset: stories, seqlen: 64",
        "task: perplexity, dataset: stories, seqlen: 48",
    );
    std::fs::write(&pipeline, text).unwrap();

    let out = whittle(&cache, &["run", pipeline.to_str().unwrap(), "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let run = common::last_run(&cache);
    assert!(by_status(&run, StageStatus::Skipped).is_empty(), "{run:?}");
    assert_eq!(
        by_status(&run, StageStatus::Ran),
        [
            "calib",
            "ppl[method=magnitude]",
            "ppl[method=wanda]",
            "table"
        ]
    );
    // The recomputed calibration is the same, so the prunes below it stay cached.
    assert_eq!(
        by_status(&run, StageStatus::Cached),
        ["base", "pruned[method=magnitude]", "pruned[method=wanda]"]
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 skipped"));
    assert_entries_complete(&cache);
}

/// What the rebuilder re-hashes before a node runs: the cached entries it reads, nearest the
/// base first; once one fails, what lies below it is left alone (it is looked up again after
/// the recomputation) and stays where it is.
#[test]
fn a_corrupt_input_is_quarantined_and_nothing_below_it_checked() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let path = small_pipeline(tmp.path(), &shared);
    let pipeline = whittle::pipeline::load(&path).unwrap_or_else(|d| panic!("{d}"));
    let hasher = whittle::cache::filehash::FileHasher::empty(tmp.path().join("memo"));
    let plan = whittle::plan::build(pipeline, &hasher).unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    // An entry per node, its key the node's structural digest (any key serves here).
    let entries: Vec<whittle::cache::Entry> = plan
        .nodes
        .iter()
        .map(|n| {
            let mut k = whittle::cache::key::KeyInputs::new(n.kind().as_str(), n.version);
            k.params
                .insert("structure".into(), n.structural.hex().into());
            let w = cache.writer(k.digest()).unwrap();
            std::fs::write(w.dir().join("out.bin"), n.label.repeat(8)).unwrap();
            w.finish(whittle::cache::EntryMeta::new(k, n.label.clone()))
                .unwrap()
        })
        .collect();
    let id = |label: &str| plan.nodes.iter().position(|n| n.label == label).unwrap();
    let ppl = id("ppl[method=wanda]");
    let labels = |c: Vec<whittle::plan::Corrupt>| -> Vec<String> {
        c.iter().map(|c| plan.nodes[c.node].label.clone()).collect()
    };

    assert!(whittle::plan::corrupt_inputs(&plan, ppl, |a| Some(&entries[a])).is_empty());
    let base = &entries[id("base")];
    let pruned = &entries[id("pruned[method=wanda]")];
    flip_byte(&base.path("out.bin"));
    flip_byte(&pruned.path("out.bin"));
    let found = whittle::plan::corrupt_inputs(&plan, ppl, |a| Some(&entries[a]));
    assert!(matches!(
        found[0].reason(),
        whittle::plan::Reason::Corrupt(_)
    ));
    assert_eq!(labels(found), ["base"]);
    assert!(!base.dir().exists(), "quarantined");
    assert!(
        pruned.dir().exists(),
        "below the corrupt input: not checked, not moved"
    );
    // Only the entries the caller says are cached are checked.
    let found = whittle::plan::corrupt_inputs(&plan, ppl, |a| {
        (a == id("pruned[method=wanda]")).then(|| &entries[a])
    });
    assert_eq!(labels(found), ["pruned[method=wanda]"]);
}

/// Two runs of one pipeline started together on one cold cache.
#[test]
fn concurrent_runs_compute_every_stage_once() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = small_pipeline(tmp.path(), &shared);
    let cache = tmp.path().join("cache");
    let spawn = || {
        Command::new(BIN)
            .args(["run", pipeline.to_str().unwrap(), "--quiet", "--cache-dir"])
            .arg(&cache)
            .env_remove("WHITTLE_TEST_PAUSE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", output_text(&a));
    assert!(b.status.success(), "{}", output_text(&b));

    let runs = Cache::open(&cache).unwrap().runs();
    assert_eq!(runs.len(), 2);
    let nodes = runs[0].stages.len();
    let mut computed: BTreeMap<String, usize> = BTreeMap::new();
    for r in &runs {
        assert_eq!(r.stages.len(), nodes);
        for s in &r.stages {
            assert!(
                matches!(s.status, StageStatus::Ran | StageStatus::Cached),
                "{}: {:?}",
                s.instance,
                s.status
            );
            *computed.entry(s.instance.clone()).or_default() +=
                (s.status == StageStatus::Ran) as usize;
        }
    }
    assert_eq!(computed.len(), nodes);
    for (instance, n) in &computed {
        assert_eq!(*n, 1, "{instance} computed {n} times");
    }
    let rows_a = rows_of(report_rows(&cache, &runs[0]));
    assert_eq!(rows_a, rows_of(report_rows(&cache, &runs[1])));
    assert_eq!(
        runs[0].stages.iter().map(|s| s.key).collect::<Vec<_>>(),
        runs[1].stages.iter().map(|s| s.key).collect::<Vec<_>>()
    );
    assert_entries_complete(&cache);
}

/// Waits until a staging directory in `cache` holds `file` (a stage paused before committing).
fn wait_for_staged(cache: &Path, file: &str, child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        let staged = std::fs::read_dir(cache.join("v1/tmp"))
            .map(|d| d.flatten().any(|e| e.path().join(file).exists()))
            .unwrap_or(false);
        if staged {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "nothing staged {file}"
        );
        assert!(child.try_wait().unwrap().is_none(), "whittle exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn gc_never_removes_what_a_running_job_holds() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = small_pipeline(tmp.path(), &shared);
    let cache = tmp.path().join("cache");
    let first = run_ok(&cache, &pipeline);
    // The evaluations change: the second run reuses base, calib and the prunes, runs the rest.
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        "task: perplexity, dataset: stories, seqlen: 64",
        "task: perplexity, dataset: stories, seqlen: 48",
    );
    let second = tmp.path().join("second.yaml");
    std::fs::write(&second, text).unwrap();

    let mut child = Command::new(BIN)
        .args([
            "run",
            second.to_str().unwrap(),
            "--quiet",
            "--jobs",
            "1",
            "--cache-dir",
        ])
        .arg(&cache)
        .env("WHITTLE_TEST_PAUSE", "evaluate:3000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_staged(&cache, "metrics.json", &mut child);

    let held = [
        "base",
        "calib",
        "pruned[method=magnitude]",
        "pruned[method=wanda]",
    ];
    let dry = whittle(&cache, &["gc", "--older-than", "0s", "--dry-run", "-v"]);
    assert!(dry.status.success(), "{}", output_text(&dry));
    let listing = String::from_utf8_lossy(&dry.stdout).to_string();
    for instance in ["ppl[method=magnitude]", "ppl[method=wanda]", "table"] {
        let key = entry_of(&cache, &first, instance).key().short();
        assert!(
            listing.contains(&format!("would remove {key}  {instance}  (")),
            "{instance} not listed: {listing}"
        );
    }
    for instance in held {
        assert!(
            !listing.contains(&format!("{instance}  (")),
            "{instance} listed: {listing}"
        );
    }
    assert!(
        listing.contains("kept 4 entries a running job holds"),
        "{listing}"
    );

    let gc = whittle(&cache, &["gc", "--older-than", "0s"]);
    assert!(gc.status.success(), "{}", output_text(&gc));
    for instance in held {
        assert!(
            entry_of(&cache, &first, instance).dir().exists(),
            "{instance} removed"
        );
    }

    let status = child.wait().unwrap();
    assert!(status.success());
    let run = common::last_run(&cache);
    assert_eq!(
        by_status(&run, StageStatus::Ran),
        ["ppl[method=magnitude]", "ppl[method=wanda]", "table"]
    );
    assert_entries_complete(&cache);
}

/// SIGKILL at random instants of a cold run, resumed each time: never an incomplete entry, and
/// the same numbers as a run never interrupted.
#[test]
fn killed_at_random_instants_then_resumed_gives_identical_results() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = small_pipeline(tmp.path(), &shared);
    let clean_cache = tmp.path().join("clean");
    let started = Instant::now();
    let clean = run_ok(&clean_cache, &pipeline);
    let full = started.elapsed();
    let want = rows_of(report_rows(&clean_cache, &clean));

    let cache = tmp.path().join("cache");
    for _ in 0..5 {
        let mut child = Command::new(BIN)
            .args(["run", pipeline.to_str().unwrap(), "--quiet", "--cache-dir"])
            .arg(&cache)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let ms = rand::random_range(0..full.as_millis().max(2) as u64);
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL (a no-op when it already finished)
        child.wait().unwrap();
        if cache.join("v1/entries").exists() {
            assert_entries_complete(&cache);
        }
    }
    let resumed = run_ok(&cache, &pipeline);
    assert_eq!(rows_of(report_rows(&cache, &resumed)), want);
    assert_entries_complete(&cache);
}
