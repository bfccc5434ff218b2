//! The cache keys of every committed pipeline, against the ones recorded before the stage kinds
//! were restructured (`tests/fixtures/keys/<pipeline>.json`).
//!
//! A node's key is its kind, version, parameters and files, and its inputs' *content*; content is
//! known only after running, so each input here stands in by its structural digest (everything that
//! determines it, recursively). Equal records mean every key of the pipeline is unchanged.
//!
//! A deliberate key change re-records with `WHITTLE_RECORD_KEYS=1 cargo test --test keys` and
//! commits the diff, which then shows exactly which parameters of which stages moved.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use whittle::cache::filehash::FileHasher;

fn pipelines() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// Every node's key inputs (inputs by structural digest) and the key they give, by label.
fn record(path: &Path) -> serde_json::Value {
    let pipeline = whittle::pipeline::load(path).unwrap_or_else(|d| panic!("{d}"));
    let tmp = tempfile::tempdir().unwrap();
    let hasher = FileHasher::empty(tmp.path().join("memo"));
    let plan = whittle::plan::build(pipeline, &hasher).unwrap();
    let mut nodes = serde_json::Map::new();
    for node in &plan.nodes {
        let inputs: BTreeMap<String, _> = node
            .inputs
            .iter()
            .map(|(role, i)| (role.clone(), plan.nodes[*i].structural))
            .collect();
        let k = whittle::plan::key_inputs(node, &inputs);
        assert_eq!(k.digest(), node.structural, "{}", node.label);
        nodes.insert(
            node.label.clone(),
            serde_json::json!({ "key": k.digest(), "key_inputs": k }),
        );
    }
    serde_json::Value::Object(nodes)
}

#[test]
fn keys_of_every_committed_pipeline_are_unchanged() {
    let _ = require_shared!("models");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
    let record_mode = std::env::var("WHITTLE_RECORD_KEYS").is_ok_and(|v| v == "1");
    let mut changed = Vec::new();
    for path in pipelines() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let got = record(&path);
        let file = fixtures.join(format!("{name}.json"));
        if record_mode {
            let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
            std::fs::write(&file, text).unwrap();
            continue;
        }
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
        )
        .unwrap();
        let (got, want) = (got.as_object().unwrap(), want.as_object().unwrap());
        for label in want.keys().chain(got.keys()) {
            if got.get(label) != want.get(label) {
                changed.push(format!(
                    "{name}: {label}\n  recorded: {}\n  now:      {}",
                    want.get(label).map_or("absent".into(), |v| v.to_string()),
                    got.get(label).map_or("absent".into(), |v| v.to_string()),
                ));
            }
        }
    }
    changed.dedup();
    assert!(changed.is_empty(), "keys changed:\n{}", changed.join("\n"));
}
