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
models:
  stories: {s}/models/stories260K
datasets:
  stories:
    path: {s}/data/tinystories/sample.txt
    documents: separator
    separator: "<|endoftext|>"
sweep:
  grid:
    method: [magnitude, wanda]
stages:
  base: {{kind: load, model: stories}}
  calib: {{kind: calibrate, model: base, dataset: stories, samples: 8, seqlen: 64}}
  pruned: {{kind: prune, model: base, method: "${{method}}", sparsity: 0.5, calibration: calib}}
  ppl: {{kind: evaluate, model: pruned, task: perplexity, dataset: stories, seqlen: 64}}
  table: {{kind: report, inputs: [ppl]}}
"#,
        s = shared.display()
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
