//! Every evaluation task through the binary: divergence against the base model as sparsity
//! grows, a multiple-choice and a generation task on fixture files with known answers, the
//! knowledge probe on a fixture fact and on the shared T-REx relations, and per-sample outputs.

mod common;

use std::path::{Path, PathBuf};

use common::{entry, entry_meta, run_ok};
use serde_json::Value;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn metric(meta: &Value, name: &str) -> f64 {
    meta["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no metric {name} in {meta}"))
}

fn samples(cache: &Path, run: &whittle::cache::RunRecord, instance: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(entry(cache, run, instance).path("samples.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn divergence_choice_and_generation_on_stories260k() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Two-choice items whose answers stories260K gives with near certainty; `gold` indexes the
    // right choice.
    write(
        dir,
        "data/choice.jsonl",
        concat!(
            "{\"ctx\": \"Once upon a\", \"a\": \"time\", \"b\": \"dog\", \"gold\": 0}\n",
            "{\"ctx\": \"Lily and Tom went to the\", \"a\": \"park\", \"b\": \"upon\", \"gold\": 0}\n",
            "{\"ctx\": \"Once upon a\", \"a\": \"banana\", \"b\": \"time\", \"gold\": 1}\n",
        ),
    );
    write(
        dir,
        "tasks/fixture-choice.yaml",
        "context: \"{{ctx}}\"\nchoices: [\"{{a}}\", \"{{b}}\"]\ngold: {field: gold}\n",
    );
    write(
        dir,
        "data/gen.jsonl",
        concat!(
            "{\"prompt\": \"Once upon a\", \"answer\": \"time\"}\n",
            "{\"prompt\": \"Once upon a\", \"answer\": [\"elephant\", \"a big elephant\"]}\n",
        ),
    );
    write(
        dir,
        "tasks/fixture-gen.yaml",
        "name: fixture\nprompt: \"{{prompt}}\"\nreferences: answer\nmax_new_tokens: 1\n",
    );
    let file = write(
        dir,
        "eval.yaml",
        &format!(
            r#"
models:
  stories: {s}/models/stories260K
datasets:
  stories:
    path: {s}/data/tinystories/valid-head.txt
    documents: separator
    separator: "<|endoftext|>"
  choice: data/choice.jsonl
  gen: data/gen.jsonl
sweep:
  grid:
    sparsity: [0.3, 0.7]
stages:
  base: {{kind: load, model: stories}}
  pruned: {{kind: prune, model: base, method: magnitude, sparsity: "${{sparsity}}"}}
  self-div: {{kind: evaluate, model: base, task: divergence, dataset: stories, seqlen: 128, limit: 6}}
  div: {{kind: evaluate, model: pruned, task: divergence, dataset: stories, seqlen: 128, limit: 6, batch_size: 4}}
  docs: {{kind: evaluate, model: base, task: perplexity, mode: documents, dataset: stories, seqlen: 256, limit: 10}}
  choice: {{kind: evaluate, model: base, task: multiple-choice, dataset: choice, task_file: tasks/fixture-choice.yaml}}
  gen: {{kind: evaluate, model: base, task: generation, dataset: gen, task_file: tasks/fixture-gen.yaml}}
"#,
            s = shared.display()
        ),
    );
    let cache = dir.join("cache");
    let run = run_ok(&cache, &file);

    let own = entry_meta(&cache, &run, "self-div");
    assert!(metric(&own, "js").abs() < 1e-7, "{own}");
    assert!(metric(&own, "kl").abs() < 1e-6, "{own}");
    assert_eq!(metric(&own, "top1"), 1.0);
    assert_eq!(own["settings"]["log_base"], "e");
    assert_eq!(metric(&own, "positions"), 6.0 * 128.0);
    assert_eq!(samples(&cache, &run, "self-div").len(), 6);

    let low = entry_meta(&cache, &run, "div[sparsity=0.3]");
    let high = entry_meta(&cache, &run, "div[sparsity=0.7]");
    assert!(
        0.0 < metric(&low, "js") && metric(&low, "js") < metric(&high, "js"),
        "JS must grow with sparsity: {low} {high}"
    );
    assert!(metric(&high, "js") <= std::f64::consts::LN_2);
    assert!(metric(&low, "top1") > metric(&high, "top1"));
    assert!(metric(&low, "kl") < metric(&high, "kl"));

    let docs = entry_meta(&cache, &run, "docs");
    assert_eq!(docs["settings"]["mode"], "documents");
    assert_eq!(
        samples(&cache, &run, "docs").len() as f64,
        metric(&docs, "windows")
    );

    let choice = entry_meta(&cache, &run, "choice");
    assert_eq!(metric(&choice, "samples"), 3.0);
    let per_item = samples(&cache, &run, "choice");
    let preds: Vec<i64> = per_item
        .iter()
        .map(|s| s["pred"].as_i64().unwrap())
        .collect();
    // " time" after "Once upon a" in both orders of the choices; " park" after "went to the".
    assert_eq!(preds, [0, 0, 1]);
    assert_eq!(metric(&choice, "acc"), 1.0);

    let gen = entry_meta(&cache, &run, "gen");
    let out = samples(&cache, &run, "gen");
    assert_eq!(out[0]["prediction"], "time", "{}", out[0]);
    assert_eq!(out[0]["em"], 1.0);
    assert_eq!(out[1]["em"], 0.0);
    assert!((metric(&gen, "em") - 0.5).abs() < 1e-12, "{gen}");
}

#[test]
fn knowledge_probe_on_smollm2_fixture_fact_and_trex() {
    let shared = require_shared!("");
    let _ = require_shared!("models/smollm2-135m");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        dir,
        "facts/relations.jsonl",
        "{\"relation\": \"C1\", \"template\": \"The capital of [X] is [Y] .\", \"label\": \"capital\"}\n",
    );
    write(
        dir,
        "facts/TREx/C1.jsonl",
        "{\"sub_label\": \"France\", \"obj_label\": \"Paris\"}\n",
    );
    let file = write(
        dir,
        "lama.yaml",
        &format!(
            r#"
models:
  smollm2: {s}/models/smollm2-135m
datasets:
  fixture: {{path: facts, format: lama}}
  lama: {{path: {s}/data/lama, format: lama}}
stages:
  base: {{kind: load, model: smollm2}}
  fact: {{kind: evaluate, model: base, task: knowledge, dataset: fixture}}
  trex: {{kind: evaluate, model: base, task: knowledge, dataset: lama, relations: [P103, P1412, P178], limit: 20, batch_size: 16}}
"#,
            s = shared.display()
        ),
    );
    let cache = dir.join("cache");
    let run = run_ok(&cache, &file);
    let fact = entry_meta(&cache, &run, "fact");
    assert_eq!(metric(&fact, "p@1"), 1.0, "{fact}");
    let probed = samples(&cache, &run, "fact");
    assert_eq!(probed[0]["rank"], 1);
    assert_eq!(
        probed[0]["top_prediction"].as_str().unwrap().trim(),
        "Paris"
    );

    let trex = entry_meta(&cache, &run, "trex");
    assert_eq!(metric(&trex, "facts"), 60.0, "{trex}");
    let p1 = metric(&trex, "p@1");
    let p10 = metric(&trex, "p@10");
    assert!(0.0 < p1 && p1 <= p10 && p10 <= 1.0, "{trex}");
    eprintln!("smollm2-135m on T-REx P103/P1412/P178 (20 facts each): P@1 {p1:.3}, P@10 {p10:.3}");
}
