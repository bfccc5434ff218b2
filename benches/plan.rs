//! Planning plus cache lookup for a 10,000-point sweep, and a no-op rerun of the committed
//! `pipelines/wanda-sweep.yaml` as a whole process.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use whittle::cache::{Cache, FileHasher};
use whittle::plan::{self, History};

fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    p.join("models/stories260K").exists().then_some(p)
}

/// 100 sparsities × 100 seeds of calibration would be silly; 100 × 100 sweep points of prune and
/// evaluate on one load and one calibration is the shape of a real grid.
fn big_sweep(dir: &Path, shared: &Path) -> PathBuf {
    let sparsities: Vec<String> = (0..100)
        .map(|i| format!("{:.4}", i as f64 / 100.0))
        .collect();
    let patterns: Vec<String> = (0..100).map(|i| format!("{}", 256 + i)).collect();
    let text = format!(
        r#"
models:
  m: {s}/models/stories260K
datasets:
  d: {{path: {s}/data/tinystories/sample.txt, documents: separator, separator: "<|endoftext|>"}}
sweep:
  grid:
    sparsity: [{sp}]
    seqlen: [{sl}]
stages:
  base: {{kind: load, model: m}}
  calib: {{kind: calibrate, model: base, dataset: d, samples: 8, seqlen: 64}}
  pruned: {{kind: prune, model: base, method: wanda, sparsity: "${{sparsity}}", calibration: calib}}
  ppl: {{kind: evaluate, model: pruned, task: perplexity, dataset: d, seqlen: "${{seqlen}}"}}
"#,
        s = shared.display(),
        sp = sparsities.join(", "),
        sl = patterns.join(", ")
    );
    let path = dir.join("big.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn planning(c: &mut Criterion) {
    let Some(shared) = shared() else {
        eprintln!("skipping: ../shared not found");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = big_sweep(tmp.path(), &shared);
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    let hasher = FileHasher::load(&cache).unwrap();
    let mut g = c.benchmark_group("plan");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("10k-point sweep: load, expand, build, resolve", |b| {
        b.iter(|| {
            let pipeline = whittle::pipeline::load(&file).unwrap();
            let p = plan::build(pipeline, &hasher).unwrap();
            let statuses = plan::resolve(&p, &cache, &History::default()).unwrap();
            assert_eq!(statuses.len(), 2 + 100 + 100 * 100);
        })
    });
    // Resolving above stops at the calibration (nothing below it can be looked up before it
    // runs), so the lookups of a fully cached 10k sweep are measured on their own.
    let keys: Vec<whittle::cache::Digest> = (0..10_000u32)
        .map(|i| {
            let mut k = whittle::cache::KeyInputs::new("evaluate", 1);
            k.params.insert("i".into(), (i as i64).into());
            let w = cache.writer(k.digest()).unwrap();
            std::fs::write(w.dir().join("metrics.json"), format!("{{\"i\": {i}}}")).unwrap();
            w.finish(whittle::cache::EntryMeta::new(k.clone(), format!("e{i}")))
                .unwrap();
            k.digest()
        })
        .collect();
    g.bench_function("10k cache lookups", |b| {
        b.iter(|| {
            for k in &keys {
                assert!(matches!(
                    cache.lookup(k).unwrap(),
                    whittle::cache::Lookup::Hit(_)
                ));
            }
        })
    });
    g.finish();
}

fn noop_rerun(c: &mut Criterion) {
    let Some(_) = shared() else {
        eprintln!("skipping: ../shared not found");
        return;
    };
    let bin = env!("CARGO_BIN_EXE_whittle");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let run = || {
        let out = Command::new(bin)
            .current_dir(&repo)
            .args([
                "run",
                "pipelines/wanda-sweep.yaml",
                "--quiet",
                "--cache-dir",
            ])
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(); // fill the cache
    let mut g = c.benchmark_group("rerun");
    g.sample_size(20);
    g.bench_function("no-op rerun of wanda-sweep.yaml (whole process)", |b| {
        b.iter(run)
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = planning, noop_rerun
}
criterion_main!(benches);
