//! The README's first command, as a newcomer runs it: the quickstart pipeline from a copy of the
//! repository's own files in a temporary directory, with no `../shared` beside it and no
//! network. It trains the embedded default model, prunes it, and must show fact recall falling
//! faster than held-out perplexity rises.

mod common;

use std::path::Path;

use common::{entry_meta, text, whittle_in};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn quickstart_runs_offline_from_the_repository_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("whittle");
    for dir in ["pipelines", "data", "tasks"] {
        copy_dir(&root.join(dir), &clone.join(dir));
    }
    assert!(!tmp.path().join("shared").exists());
    let cache = clone.join("cache");
    let out = whittle_in(&clone, &cache, &["run", "pipelines/quickstart.yaml"]);
    let printed = text(&out);
    assert!(out.status.success(), "quickstart failed:\n{printed}");
    assert!(printed.contains("fact recall P@1"), "{printed}");
    let run = common::last_run(&cache);

    let trained = entry_meta(&cache, &run, "base");
    let loss = trained["final_loss"].as_f64().unwrap();
    let first = trained["losses"][0].as_f64().unwrap();
    assert!(loss < 0.3 * first, "training: loss {first} → {loss}");

    let recall = |instance: &str| {
        entry_meta(&cache, &run, instance)["metrics"]["p@1"]
            .as_f64()
            .unwrap()
    };
    let ppl = |instance: &str| {
        entry_meta(&cache, &run, instance)["metrics"]["ppl"]
            .as_f64()
            .unwrap()
    };
    // A genuinely trained model: recall far above the best constant answer (about 0.09).
    let (r0, p0) = (recall("recall-base"), ppl("ppl-base"));
    assert!(r0 > 0.8, "dense recall {r0}");
    // At 60% sparsity every method has lost a large share of the facts, while perplexity has
    // risen by a smaller fraction than recall fell.
    for method in ["magnitude", "wanda", "sparsegpt"] {
        let at = format!("[method={method},sparsity=0.6]");
        let (r, p) = (recall(&format!("recall{at}")), ppl(&format!("ppl{at}")));
        let lost = 1.0 - r / r0;
        let rise = p / p0 - 1.0;
        assert!(lost > 0.1, "{method}: recall {r0} → {r}");
        assert!(
            lost > rise,
            "{method}: recall lost {lost:.3}, ppl rose {rise:.3}"
        );
    }
    let png = clone.join("reports/quickstart/table/recall-and-perplexity.png");
    assert!(png.is_file(), "no plot at {}", png.display());

    // A second run finds everything in the cache.
    let again = whittle_in(&clone, &cache, &["run", "pipelines/quickstart.yaml"]);
    assert!(again.status.success());
    let rerun = common::last_run(&cache);
    assert!(
        rerun
            .stages
            .iter()
            .all(|s| s.status == whittle::cache::StageStatus::Cached),
        "{:?}",
        rerun
            .stages
            .iter()
            .map(|s| (&s.instance, &s.status))
            .collect::<Vec<_>>()
    );
}
