//! Issue 3 through the binary: a method × sparsity sweep sharing one dense calibration, the
//! reference's sequential calibration, module selection, and chains of compression stages.

mod common;

use common::{entry_meta, run_ok};

use std::path::{Path, PathBuf};

use whittle::cache::{Cache, Lookup, RunRecord, StageStatus};

fn write(dir: &Path, name: &str, shared: &Path, body: &str) -> PathBuf {
    let head = format!(
        r#"
models:
  stories: {s}/models/stories260K
datasets:
  stories:
    path: {s}/data/tinystories/valid-head.txt
    documents: separator
    separator: "<|endoftext|>"
"#,
        s = shared.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, head + body).unwrap();
    path
}

fn ppl(cache: &Path, run: &RunRecord, instance: &str) -> f64 {
    entry_meta(cache, run, instance)["metrics"]["ppl"]
        .as_f64()
        .unwrap()
}

#[test]
fn three_methods_three_sparsities_share_one_dense_calibration() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let file = write(
        tmp.path(),
        "sweep.yaml",
        &shared,
        r#"
sweep:
  grid:
    method: [magnitude, wanda, sparsegpt]
    sparsity: [0.2, 0.4, 0.6]
stages:
  base: {kind: load, model: stories}
  calib: {kind: calibrate, model: base, dataset: stories, samples: 128, seqlen: 64, statistics: [norms, hessian]}
  pruned:
    kind: prune
    model: base
    method: ${method}
    sparsity: ${sparsity}
    calibration: calib
    calibration_mode: dense
  ppl: {kind: evaluate, model: pruned, task: perplexity, dataset: stories, seqlen: 128, limit: 20}
  dense-ppl: {kind: evaluate, model: base, task: perplexity, dataset: stories, seqlen: 128, limit: 20}
"#,
    );
    let cache = tmp.path().join("cache");
    let r = run_ok(&cache, &file);
    let ran = |kind: &str| {
        r.stages
            .iter()
            .filter(|s| s.kind == kind && s.status == StageStatus::Ran)
            .count()
    };
    assert_eq!(
        ran("calibrate"),
        1,
        "one calibration serves the whole sweep"
    );
    assert_eq!(ran("prune"), 9);
    // Everything is pruned as asked, and at 60% the calibrated methods keep perplexity lower.
    for m in ["magnitude", "wanda", "sparsegpt"] {
        for s in [0.2, 0.4, 0.6] {
            let meta = entry_meta(&cache, &r, &format!("pruned[method={m},sparsity={s}]"));
            let actual = meta["actual_sparsity"].as_f64().unwrap();
            // Wanda and SparseGPT prune floor(cols·s) per row: at most one weight per row short.
            assert!((actual - s).abs() < 1.0 / 64.0, "{m} {s}: {actual}");
        }
    }
    let at = |m: &str| ppl(&cache, &r, &format!("ppl[method={m},sparsity=0.6]"));
    let dense = ppl(&cache, &r, "dense-ppl");
    println!(
        "ppl at 60%: dense {dense:.3} magnitude {:.3} wanda {:.3} sparsegpt {:.3}",
        at("magnitude"),
        at("wanda"),
        at("sparsegpt")
    );
    assert!(at("sparsegpt") < at("magnitude"));
    assert!(at("wanda") < at("magnitude"));
    assert!(dense < at("sparsegpt"));
}

#[test]
fn sequential_calibration_selection_and_chains() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let file = write(
        tmp.path(),
        "chains.yaml",
        &shared,
        r#"
stages:
  base: {kind: load, model: stories}
  calib: {kind: calibrate, model: base, dataset: stories, samples: 32, seqlen: 64, statistics: [norms, hessian]}
  wanda-seq: {kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}
  wanda-dense: {kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib, calibration_mode: dense}
  sgpt-seq: {kind: prune, model: base, method: sparsegpt, sparsity: 0.5, calibration: calib}
  mlp-40: {kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.4, modules: mlp}
  mlp-40-int8: {kind: quantize, model: mlp-40, method: dynamic-int8, modules: mlp}
  sgpt-4bit: {kind: quantize, model: sgpt-seq, method: rtn, bits: 4, group_size: 32}
  gptq-4bit: {kind: quantize, model: base, method: gptq, bits: 4, group_size: 32, calibration: calib}
  head-rows: {kind: prune, model: base, method: magnitude, pattern: rows, sparsity: 0.25, modules: lm_head}
  head-random: {kind: prune, model: base, method: random, seed: 1, sparsity: 0.5, modules: lm_head}
  layer0-light: {kind: prune, model: base, method: magnitude, sparsity: 0.5, overrides: {'layers\.0\.': 0.2}, ignore: ['down_proj']}
  e-dense: {kind: evaluate, model: base, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-wanda-seq: {kind: evaluate, model: wanda-seq, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-wanda-dense: {kind: evaluate, model: wanda-dense, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-int8: {kind: evaluate, model: mlp-40-int8, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-mlp-40: {kind: evaluate, model: mlp-40, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-sgpt-seq: {kind: evaluate, model: sgpt-seq, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-sgpt-4bit: {kind: evaluate, model: sgpt-4bit, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-gptq: {kind: evaluate, model: gptq-4bit, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-head-rows: {kind: evaluate, model: head-rows, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-head-random: {kind: evaluate, model: head-random, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
"#,
    );
    let cache = tmp.path().join("cache");
    let r = run_ok(&cache, &file);
    let p = |i: &str| ppl(&cache, &r, i);
    let dense = p("e-dense");
    // Sequential and dense calibration differ (block i sees pruned inputs), both prune as asked.
    assert_ne!(p("e-wanda-seq"), p("e-wanda-dense"));
    for i in ["wanda-seq", "wanda-dense", "sgpt-seq"] {
        let s = entry_meta(&cache, &r, i)["actual_sparsity"]
            .as_f64()
            .unwrap();
        assert!((s - 0.5).abs() < 1.0 / 64.0, "{i}: {s}");
    }
    // Global magnitude over the MLP: 40% of those weights overall, attention untouched.
    let mlp = entry_meta(&cache, &r, "mlp-40");
    assert!((mlp["actual_sparsity"].as_f64().unwrap() - 0.4).abs() < 0.01);
    // Dynamic int8 on top keeps the zeros and changes the numbers a little.
    let int8 = p("e-int8");
    assert_ne!(int8, p("e-mlp-40"));
    assert!(
        (int8 / p("e-mlp-40") - 1.0).abs() < 0.05,
        "int8 {int8} vs {}",
        p("e-mlp-40")
    );
    println!(
        "ppl: dense {dense:.3} wanda seq {:.3} dense {:.3} | mlp-40 {:.3} +int8 {int8:.3} | sgpt {:.3} sgpt+rtn4 {:.3} gptq4 {:.3} | head rows {:.3} random {:.3}",
        p("e-wanda-seq"), p("e-wanda-dense"), p("e-mlp-40"), p("e-sgpt-seq"), p("e-sgpt-4bit"), p("e-gptq"), p("e-head-rows"), p("e-head-random")
    );
    // 4-bit on top of SparseGPT costs a little more; GPTQ 4-bit alone stays close to dense.
    assert!(p("e-sgpt-4bit") > p("e-sgpt-seq") && p("e-sgpt-4bit") < 1.5 * p("e-sgpt-seq"));
    assert!(p("e-gptq") > dense && p("e-gptq") < 1.5 * dense);
    // LM-head experiments hurt.
    assert!(p("e-head-rows") > dense && p("e-head-random") > dense);
    // Per-layer overrides: block 0 at 20%, the rest at 50%; ignored weights untouched.
    let rec = r
        .stages
        .iter()
        .find(|s| s.instance == "layer0-light")
        .unwrap();
    let Lookup::Hit(e) = Cache::open(&cache)
        .unwrap()
        .lookup(&rec.key.unwrap())
        .unwrap()
    else {
        panic!("layer0-light not cached")
    };
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.path("sparsity.json")).unwrap()).unwrap();
    let matrices = report["matrices"].as_array().unwrap();
    assert_eq!(matrices.len(), 5 * 6, "down_proj is ignored");
    for m in matrices {
        let name = m["name"].as_str().unwrap();
        let want = if name.contains("layers.0.") { 0.2 } else { 0.5 };
        let got = m["sparsity"].as_f64().unwrap();
        assert!((got - want).abs() < 0.01, "{name}: {got} (want {want})");
    }
    // Stored sizes: masks and 4-bit codes are far smaller than dense f32.
    let size = &entry_meta(&cache, &r, "gptq-4bit")["size"];
    let (stored, dense_b) = (
        size["stored_bytes"].as_f64().unwrap(),
        size["dense_bytes"].as_f64().unwrap(),
    );
    assert!(stored < dense_b / 4.0, "gptq stored {stored} of {dense_b}");
}

#[test]
fn reference_accumulation_reaches_every_calibrated_method() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let file = write(
        tmp.path(),
        "accumulation.yaml",
        &shared,
        r#"
sweep:
  grid:
    acc: [exact, reference]
stages:
  base: {kind: load, model: stories}
  calib: {kind: calibrate, model: base, dataset: stories, samples: 20, seqlen: 64, statistics: [norms, hessian], accumulation: "${acc}"}
  windows: {kind: calibrate, model: base, dataset: stories, samples: 8, seqlen: 64, statistics: [], accumulation: "${acc}"}
  wanda-seq: {kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}
  wanda-windows: {kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: windows}
  wanda-dense: {kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib, calibration_mode: dense}
  sgpt-seq: {kind: prune, model: base, method: sparsegpt, sparsity: 0.5, calibration: calib}
  gptq: {kind: quantize, model: base, method: gptq, bits: 4, group_size: 32, calibration: calib}
  e-wanda-seq: {kind: evaluate, model: wanda-seq, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-sgpt-seq: {kind: evaluate, model: sgpt-seq, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
  e-gptq: {kind: evaluate, model: gptq, task: perplexity, dataset: stories, seqlen: 128, limit: 10}
"#,
    );
    let cache = tmp.path().join("cache");
    let r = run_ok(&cache, &file);
    for acc in ["exact", "reference"] {
        let meta = entry_meta(&cache, &r, &format!("calib[acc={acc}]"));
        assert_eq!(meta["accumulation"], acc, "the entry records how it summed");
    }
    // The reference mode stores the running averages under their own names.
    let e = common::entry(&cache, &r, "calib[acc=reference]");
    let stats =
        candle_core::safetensors::load(e.path("stats.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(stats.contains_key("layers.0.q_proj.scaler_row"));
    assert!(stats.contains_key("layers.0.attn_in.hessian"));
    assert!(!stats.keys().any(|k| k.ends_with("_sum")));
    // Windows alone hold the same tokens either way; the sequential prune reading them sums as
    // the calibration says, so its two entries must differ, not one be served twice.
    let e = |i: &str| common::entry(&cache, &r, i);
    let (exact, reference) = (e("windows[acc=exact]"), e("windows[acc=reference]"));
    assert_ne!(exact.content(), reference.content());
    assert!(!exact.path("accumulation.txt").exists());
    assert_eq!(
        std::fs::read_to_string(reference.path("accumulation.txt")).unwrap(),
        "reference\n"
    );
    let key = |i: &str| e(i).manifest().key;
    assert_ne!(
        key("wanda-windows[acc=exact]"),
        key("wanda-windows[acc=reference]")
    );
    // Both modes prune as asked; the numbers differ by f32 rounding only.
    let digest = |i: &str| entry_meta(&cache, &r, i)["weights"].clone();
    for m in ["wanda-seq", "wanda-dense", "sgpt-seq"] {
        for acc in ["exact", "reference"] {
            let s = entry_meta(&cache, &r, &format!("{m}[acc={acc}]"))["actual_sparsity"]
                .as_f64()
                .unwrap();
            assert!((s - 0.5).abs() < 1.0 / 64.0, "{m} {acc}: {s}");
        }
        println!(
            "{m}: same weights in both modes: {}",
            digest(&format!("{m}[acc=exact]")) == digest(&format!("{m}[acc=reference]"))
        );
    }
    for e in ["e-wanda-seq", "e-sgpt-seq", "e-gptq"] {
        let (a, b) = (
            ppl(&cache, &r, &format!("{e}[acc=exact]")),
            ppl(&cache, &r, &format!("{e}[acc=reference]")),
        );
        println!("{e}: ppl exact {a:.5} reference {b:.5}");
        assert!((a / b - 1.0).abs() < 0.01, "{e}: {a} vs {b}");
    }
}
