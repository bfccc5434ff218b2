//! `whittle run-node`: one node computed by a process of its own, into the cache a run uses,
//! gives the entry a whole run gives (same key, same content), and a run afterwards finds it.

mod common;

use std::path::Path;

use common::{entry, last_run, run_ok, text, whittle};

use whittle::cache::key::Digest;
use whittle::cache::{Cache, Lookup, StageStatus};

fn pipeline(dir: &Path, shared: &Path) -> std::path::PathBuf {
    let file = dir.join("p.yaml");
    let text = format!(
        r#"{stories}stages:
  base: {{kind: load, model: stories}}
  pruned: {{kind: prune, model: base, method: magnitude, sparsity: 0.5}}
  ppl: {{kind: evaluate, model: pruned, task: perplexity, dataset: stories, seqlen: 32, limit: 2}}
"#,
        stories = common::stories_sections(shared)
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// The content digest of the entry with this key.
fn content(cache: &Path, key: Digest) -> Digest {
    match Cache::open(cache).unwrap().lookup(&key).unwrap() {
        Lookup::Hit(e) => e.manifest().content,
        other => panic!("no entry {key}: {other:?}"),
    }
}

#[test]
fn run_node_computes_the_entry_a_run_computes() {
    let shared = require_shared!("models/stories260K");
    let shared = shared.parent().unwrap().parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = pipeline(tmp.path(), shared);
    let f = file.to_str().unwrap();

    // What a plain run makes.
    let whole = tmp.path().join("whole");
    let run = run_ok(&whole, &file);
    let pruned = entry(&whole, &run, "pruned").manifest().clone();
    let ppl = entry(&whole, &run, "ppl").manifest().clone();

    // Another cache holding only what `pruned` reads.
    let cache = tmp.path().join("cache");
    let out = whittle(&cache, &["run", f, "--only", "base"]);
    assert!(out.status.success(), "{}", text(&out));

    // A node whose input is not cached: exit 1, naming the input; nothing is written.
    let out = whittle(&cache, &["run-node", f, "--node", "ppl"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ppl: input pruned is not in the cache"),
        "{stderr}"
    );
    // No such node, or no such key: exit 2.
    let out = whittle(&cache, &["run-node", f, "--node", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = whittle(&cache, &["run-node", f, "--key", &ppl.key.hex()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // By label: the entry a run makes, same key and same content.
    let out = whittle(&cache, &["run-node", f, "--node", "pruned"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pruned.key.hex()
    );
    assert_eq!(content(&cache, pruned.key), pruned.content);

    // By key, once its input is cached.
    let out = whittle(&cache, &["run-node", f, "--key", &ppl.key.hex()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ppl.key.hex());
    assert_eq!(content(&cache, ppl.key), ppl.content);

    // Again: already cached, the same key, nothing recomputed.
    let out = whittle(&cache, &["run-node", f, "--node", "ppl"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ppl.key.hex());

    // A run afterwards finds everything cached.
    run_ok(&cache, &file);
    let statuses: Vec<StageStatus> = last_run(&cache).stages.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [StageStatus::Cached; 3]);
}
