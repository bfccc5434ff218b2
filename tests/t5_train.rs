//! A T5 trained through a pipeline (`kind: train, architecture: t5`) on a small synthetic world:
//! the sentinel knowledge probe finds its facts far above the best constant answer, and global
//! magnitude pruning of every block matrix takes them away.

mod common;

use common::{entry, entry_meta, run_ok, small_world};

#[test]
fn t5_trains_by_span_corruption_and_pruning_takes_its_facts() {
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
  base: {{kind: train, architecture: t5, dataset: bio, dim: 48, layers: 2, heads: 4, hidden: 128, steps: 800}}
  g50: {{kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.5, modules: all}}
  g90: {{kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.9, modules: all}}
  recall-base: {{kind: evaluate, model: base, task: knowledge, dataset: facts}}
  recall-g50: {{kind: evaluate, model: g50, task: knowledge, dataset: facts}}
  recall-g90: {{kind: evaluate, model: g90, task: knowledge, dataset: facts}}
"#
    );
    let file = tmp.path().join("t5.yaml");
    std::fs::write(&file, text).unwrap();
    let cache = tmp.path().join("cache");
    let started = std::time::Instant::now();
    let run = run_ok(&cache, &file);
    let trained = entry_meta(&cache, &run, "base");
    eprintln!(
        "t5: pipeline ran in {:.1} s; training {:.1} s, final loss {:.3}",
        started.elapsed().as_secs_f64(),
        trained["seconds"].as_f64().unwrap(),
        trained["final_loss"].as_f64().unwrap()
    );

    // The folder is a T5 with sentinels in its vocabulary, starting the decoder at `<pad>`.
    let folder = entry(&cache, &run, "base").path(whittle::stages::train::MODEL_DIR);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "T5ForConditionalGeneration");
    assert_eq!(config["decoder_start_token_id"], 0);
    let tok = std::fs::read_to_string(folder.join("tokenizer.json")).unwrap();
    assert!(tok.contains("<extra_id_0>") && tok.contains("<extra_id_1>"));

    let p1 = |m: &str| {
        let meta = entry_meta(&cache, &run, &format!("recall-{m}"));
        meta["metrics"]["p@1"].as_f64().unwrap()
    };
    let (base, g50, g90) = (p1("base"), p1("g50"), p1("g90"));
    eprintln!("t5: P@1 base {base:.3}, global 50% {g50:.3}, global 90% {g90:.3} (best constant answer {chance:.3})");
    assert!(base > chance + 0.4, "P@1 {base} vs {chance}");
    assert!(g50 <= base && g90 < base, "{base} {g50} {g90}");
    assert!(g90 < g50, "{g50} {g90}");
}
