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
use whittle::pipeline::spec::StageKind;

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

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

/// Compares the keys of the pipeline at `path` with `fixtures/<name>.json`, adding each node
/// whose record differs to `changed`; under `WHITTLE_RECORD_KEYS=1`, records them instead.
fn check(name: &str, path: &Path, changed: &mut Vec<String>) {
    let got = record(path);
    let file = fixtures().join(format!("{name}.json"));
    if std::env::var("WHITTLE_RECORD_KEYS").is_ok_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        std::fs::write(&file, text).unwrap();
        return;
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

#[test]
fn keys_of_every_committed_pipeline_are_unchanged() {
    let _ = require_shared!("models");
    let mut changed = Vec::new();
    for path in pipelines() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        check(&name, &path, &mut changed);
    }
    changed.dedup();
    assert!(changed.is_empty(), "keys changed:\n{}", changed.join("\n"));
}

/// The golden key of every stage kind, method and variant (`fixtures/keys/every-kind.yaml`): a
/// change to how any kind's parameters enter its key shows here, node by node.
#[test]
fn keys_of_every_stage_kind_are_unchanged() {
    let _ = require_shared!("models");
    let mut changed = Vec::new();
    check(
        "every-kind",
        &fixtures().join("every-kind.yaml"),
        &mut changed,
    );
    changed.dedup();
    assert!(changed.is_empty(), "keys changed:\n{}", changed.join("\n"));
}

/// A new stage kind needs a golden key: an instance of it in `every-kind.yaml`, recorded.
#[test]
fn every_stage_kind_has_a_recorded_key() {
    let file = fixtures().join("every-kind.json");
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let kinds: Vec<&str> = recorded
        .as_object()
        .unwrap()
        .values()
        .filter_map(|n| n["key_inputs"]["kind"].as_str())
        .collect();
    let missing: Vec<&str> = StageKind::ALL
        .iter()
        .map(|k| k.as_str())
        .filter(|k| !kinds.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "no recorded key for the stage kinds {missing:?}: add an instance of each to \
         tests/fixtures/keys/every-kind.yaml and record it (WHITTLE_RECORD_KEYS=1)"
    );
}
