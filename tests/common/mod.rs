//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The project's shared assets (`../shared` beside the repository root).
///
/// Under CI (`CI=true`) a missing asset is a failure; elsewhere the test is skipped with a reason.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared");
    let path = root.join(rel);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("shared asset {} is missing under CI", path.display());
    }
    eprintln!("skipping: shared asset {} not found", path.display());
    None
}

/// Returns early from the test when a shared asset is missing (outside CI).
#[macro_export]
macro_rules! require_shared {
    ($rel:expr) => {
        match common::shared($rel) {
            Some(p) => p,
            None => return,
        }
    };
}

/// The `models:` and `datasets:` sections most pipeline tests share: stories260K and its sample
/// stories, from the shared assets at `shared`.
pub fn stories_sections(shared: &std::path::Path) -> String {
    let s = shared.display();
    format!(
        r#"models:
  stories: {s}/models/stories260K
datasets:
  stories:
    path: {s}/data/tinystories/sample.txt
    documents: separator
    separator: "<|endoftext|>"
"#
    )
}

/// Runs the `whittle` binary with a cache of its own, no progress bars, and none of the
/// environment that could change what it does.
pub fn whittle(cache: &std::path::Path, args: &[&str]) -> std::process::Output {
    whittle_in(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        cache,
        args,
    )
}

/// `whittle ARGS --cache-dir CACHE --quiet`, run from `dir` as a user would.
pub fn whittle_in(
    dir: &std::path::Path,
    cache: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_whittle"))
        .current_dir(dir)
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--quiet")
        .env_remove("WHITTLE_CACHE_DIR")
        .env_remove("WHITTLE_TEST_PAUSE")
        .output()
        .expect("the whittle binary runs")
}

/// Everything a command printed.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `whittle run FILE`, which must succeed; the run record it wrote.
pub fn run_ok(cache: &std::path::Path, pipeline: &std::path::Path) -> whittle::cache::RunRecord {
    let out = whittle(cache, &["run", pipeline.to_str().unwrap()]);
    assert!(out.status.success(), "whittle run failed:\n{}", text(&out));
    last_run(cache)
}

/// The newest run record in `cache`.
pub fn last_run(cache: &std::path::Path) -> whittle::cache::RunRecord {
    whittle::cache::Cache::open(cache)
        .unwrap()
        .runs()
        .pop()
        .expect("a run record")
}

/// The cache entry a run produced (or found) for `instance`.
pub fn entry(
    cache: &std::path::Path,
    run: &whittle::cache::RunRecord,
    instance: &str,
) -> whittle::cache::Entry {
    use whittle::cache::{Cache, Lookup};
    let rec = run
        .stages
        .iter()
        .find(|s| s.instance == instance)
        .unwrap_or_else(|| {
            panic!(
                "no {instance} in {:?}",
                run.stages.iter().map(|s| &s.instance).collect::<Vec<_>>()
            )
        });
    match Cache::open(cache)
        .unwrap()
        .lookup(&rec.key.unwrap())
        .unwrap()
    {
        Lookup::Hit(e) => e,
        _ => panic!("{instance} not cached"),
    }
}

/// The manifest metadata of [`entry`].
pub fn entry_meta(
    cache: &std::path::Path,
    run: &whittle::cache::RunRecord,
    instance: &str,
) -> serde_json::Value {
    entry(cache, run, instance).manifest().meta.clone()
}

/// A checkpoint loaded for a test: config, model (in `dtype`) and tokenizer.
pub struct Loaded {
    pub cfg: whittle::model::ModelConfig,
    pub model: whittle::model::Llama,
    pub tok: whittle::model::Tokenizer,
}

/// Loads the Hugging Face folder (or GGUF) at `dir` on the CPU.
pub fn load_model(dir: &std::path::Path, dtype: candle_core::DType) -> Loaded {
    use whittle::model::*;
    let ckpt = Checkpoint::resolve(dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let weights = load_weights(&ckpt, &cfg, dtype, &candle_core::Device::Cpu).unwrap();
    let model = Llama::new(&cfg, &weights).unwrap();
    let tok = Tokenizer::from_file(&ckpt.tokenizer).unwrap();
    Loaded { cfg, model, tok }
}

/// A progress callback that ignores progress.
pub fn no_tick() -> impl FnMut(u64) -> Result<(), whittle::cancel::Cancelled> {
    |_| Ok(())
}

/// The logits at every position of one unpadded sequence, as rows of f32.
pub fn logit_rows(model: &whittle::model::Llama, tokens: &[u32]) -> Vec<Vec<f32>> {
    let ids = candle_core::Tensor::new(tokens, &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&ids)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// log softmax(row)[target], written out in f64.
pub fn log_prob_f64(row: &[f32], target: u32) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row[target as usize] as f64 - lse
}

/// Everything the stage instance `instance` logged in `run`.
pub fn log_of(cache: &std::path::Path, run: &whittle::cache::RunRecord, instance: &str) -> String {
    let dir = whittle::cache::Cache::open(cache)
        .unwrap()
        .log_dir(&run.run_id)
        .unwrap();
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(&format!("-{instance}.log")) {
            out.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
    out
}

/// A world of twelve people with short biographies (it trains in seconds), written into `dir`
/// as `whittle synth` writes one; returns its best constant-answer P@1.
pub fn small_world(dir: &std::path::Path) -> f64 {
    use whittle::train::synth::{self, SynthConfig};
    let cfg = SynthConfig {
        entities: 12,
        train_docs_per_entity: 10,
        filler_min: 0,
        filler_max: 1,
        ..SynthConfig::default()
    };
    let corpus = synth::generate(&cfg).unwrap();
    corpus.write(dir).unwrap();
    corpus.chance_p_at_1()
}

/// Metric `name` of `instance` in `run`.
pub fn metric(
    cache: &std::path::Path,
    run: &whittle::cache::RunRecord,
    instance: &str,
    name: &str,
) -> f64 {
    let meta = entry_meta(cache, run, instance);
    meta["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("{instance}: no metric {name} in {meta}"))
}

/// The per-matrix records of a compression stage's `sparsity.json`.
pub fn sparsity_records(
    cache: &std::path::Path,
    run: &whittle::cache::RunRecord,
    instance: &str,
) -> Vec<serde_json::Value> {
    let e = entry(cache, run, instance);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.path("sparsity.json")).unwrap()).unwrap();
    report["matrices"].as_array().unwrap().clone()
}

/// The names of the matrices a compression stage changed.
pub fn sparsity_names(
    cache: &std::path::Path,
    run: &whittle::cache::RunRecord,
    instance: &str,
) -> Vec<String> {
    sparsity_records(cache, run, instance)
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// The JSON header of a safetensors file.
pub fn safetensors_header(path: &std::path::Path) -> serde_json::Value {
    let st = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&st[8..8 + n]).unwrap()
}

/// An exported folder: where it is, its `config.json` and its safetensors header.
pub struct Exported {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub header: serde_json::Value,
}

/// `whittle export FILE STAGE --out DIR/hf-STAGE`, which must succeed.
pub fn export(
    cache: &std::path::Path,
    file: &std::path::Path,
    stage: &str,
    dir: &std::path::Path,
) -> Exported {
    let hf = dir.join(format!("hf-{stage}"));
    let (f, out) = (file.to_str().unwrap(), hf.to_str().unwrap());
    let o = whittle(cache, &["export", f, stage, "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let config =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    let header = safetensors_header(&hf.join("model.safetensors"));
    Exported {
        dir: hf,
        config,
        header,
    }
}

/// A second pipeline, `DIR/again-NAME.yaml`, that loads the folder `model` as `m` (f32) with the
/// YAML `datasets:` section `datasets` and runs `stages` (YAML lines of the `stages:` section
/// after `m`'s); it must succeed.
pub fn run_loaded(
    cache: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    model: &std::path::Path,
    datasets: &str,
    stages: &str,
) -> whittle::cache::RunRecord {
    let file = dir.join(format!("again-{name}.yaml"));
    let text = format!(
        "version: 1\nmodels:\n  exported: {}\n{datasets}stages:\n  \
         m: {{kind: load, model: exported, dtype: f32}}\n{stages}",
        model.display()
    );
    std::fs::write(&file, text).unwrap();
    run_ok(cache, &file)
}

/// A model trained by a pipeline on a small synthetic world, probed dense and after global
/// magnitude pruning of every block matrix to 50% and 90%.
pub struct TrainedRecall {
    pub cache: PathBuf,
    pub run: whittle::cache::RunRecord,
    /// The best constant-answer P@1 of the world.
    pub chance: f64,
    /// Knowledge-probe P@1: dense, 50%, 90%.
    pub p1: [f64; 3],
    pub _tmp: tempfile::TempDir,
}

/// Trains with `train` (the keys of a `train` stage, dataset aside) on [`small_world`], prunes,
/// probes; `name` labels the lines it
/// prints.
pub fn trained_recall(name: &str, train: &str) -> TrainedRecall {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("world");
    let chance = small_world(&w);
    let wd = w.display();
    let text = format!(
        r#"version: 1
datasets:
  bio: {{path: {wd}/train.txt, documents: separator, separator: "<|endoftext|>"}}
  facts: {{path: {wd}/facts, format: lama}}
stages:
  base: {{kind: train, dataset: bio, {train}}}
  g50: {{kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.5, modules: all}}
  g90: {{kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.9, modules: all}}
  recall-base: {{kind: evaluate, model: base, task: knowledge, dataset: facts}}
  recall-g50: {{kind: evaluate, model: g50, task: knowledge, dataset: facts}}
  recall-g90: {{kind: evaluate, model: g90, task: knowledge, dataset: facts}}
"#
    );
    let file = tmp.path().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    let cache = tmp.path().join("cache");
    let started = std::time::Instant::now();
    let run = run_ok(&cache, &file);
    let trained = entry_meta(&cache, &run, "base");
    eprintln!(
        "{name}: pipeline ran in {:.1} s; training {:.1} s, final loss {:.3}",
        started.elapsed().as_secs_f64(),
        trained["seconds"].as_f64().unwrap(),
        trained["final_loss"].as_f64().unwrap()
    );
    let p1 = |m: &str| {
        let meta = entry_meta(&cache, &run, &format!("recall-{m}"));
        meta["metrics"]["p@1"].as_f64().unwrap()
    };
    let p1 = [p1("base"), p1("g50"), p1("g90")];
    eprintln!(
        "{name}: P@1 base {:.3}, global 50% {:.3}, global 90% {:.3} (best constant answer {chance:.3})",
        p1[0], p1[1], p1[2]
    );
    TrainedRecall {
        cache,
        run,
        chance,
        p1,
        _tmp: tmp,
    }
}
