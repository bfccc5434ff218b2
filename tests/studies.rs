//! The two study pipelines, run end to end on a slice of their grids (CI's two cores cannot run
//! every point in its time budget), then rendered by `whittle report`: every expected row and
//! column is in the tables, and the plots decode.
//!
//! The slice keeps every stage, task, table and plot of the committed file; only the values of
//! some sweep axes and the sample counts are cut, by rewriting lines of a copy in a temporary
//! directory. The studies' numbers are the release runs' (README); this checks the plumbing.

mod common;

use std::path::{Path, PathBuf};

use common::{run_ok, text, whittle};

/// A copy of `pipelines/<name>` in `dir`, with shared paths made absolute and each
/// `(text, replacement)` applied wherever the text occurs (it must occur).
fn sliced_copy(dir: &Path, name: &str, shared: &Path, cuts: &[(&str, &str)]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut src = std::fs::read_to_string(root.join("pipelines").join(name)).unwrap();
    for (line, with) in cuts {
        assert!(src.contains(line), "{line:?} in {name}");
        src = src.replace(line, with);
    }
    let src = src
        .replace("../../shared", &shared.display().to_string())
        .replace("../tasks/", &format!("{}/tasks/", root.display()));
    let path = dir.join(name);
    std::fs::write(&path, src).unwrap();
    path
}

/// The rows of a Markdown table: cells of each line after the header rule.
fn md_rows(md: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let lines: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    let cells = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let header = cells(lines[0]);
    (header, lines[2..].iter().map(|l| cells(l)).collect())
}

/// A rendered Markdown table under `out`: its header and rows, every cell computed (none
/// `pending` or `failed`).
fn complete_table(out: &Path, rel: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let md = std::fs::read_to_string(out.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let (header, rows) = md_rows(&md);
    assert!(
        rows.iter()
            .flatten()
            .all(|c| c != "pending" && c != "failed"),
        "{md}"
    );
    (header, rows)
}

fn check_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; dec.output_buffer_size().unwrap()];
    let info = dec.next_frame(&mut buf).unwrap();
    assert!(
        info.width >= 400 && info.height >= 200,
        "{}",
        path.display()
    );
    let px = &buf[..info.buffer_size()];
    assert!(
        px.chunks(3).any(|p| p != [255, 255, 255]),
        "{} is blank",
        path.display()
    );
}

/// `whittle report FILE --out DIR` must succeed; returns what it printed.
fn report(cache: &Path, file: &Path, out: &Path) -> String {
    let o = whittle(
        cache,
        &[
            "report",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "whittle report failed:\n{}", text(&o));
    text(&o)
}

#[test]
fn task_specific_study_runs_and_reports() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let file = sliced_copy(
        tmp.path(),
        "task-specific.yaml",
        &shared,
        &[
            ("sparsity: [0.3, 0.5]", "sparsity: [0.5]"),
            ("calibration: [c4, alpaca-calib]", "calibration: [c4]"),
            // Calibration windows; perplexity windows and generation prompts (8 each), and
            // divergence windows (4); the length of Alpaca's answers.
            ("samples: 16", "samples: 4"),
            ("limit: 8", "limit: 2"),
            ("limit: 4", "limit: 2"),
            ("max_new_tokens: 32", "max_new_tokens: 8"),
        ],
    );
    let cache = tmp.path().join("cache");
    run_ok(&cache, &file);
    let out = tmp.path().join("reports");
    report(&cache, &file, &out);
    let (header, rows) = complete_table(&out, "table/task-specific.md");
    for col in [
        "WikiText ppl",
        "JS (nats)",
        "top-1 agree",
        "Alpaca F1",
        "Alpaca ROUGE-1",
        "SQuAD EM",
        "SQuAD F1",
    ] {
        assert!(
            header.iter().any(|h| h == col),
            "no column {col}: {header:?}"
        );
    }
    // The base model, then magnitude, sparsegpt, wanda at 50% on C4.
    assert_eq!(rows.len(), 4, "{rows:?}");
    let method = header.iter().position(|h| h == "method").unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r[method].as_str()).collect();
    assert_eq!(
        &methods[1..],
        ["magnitude", "sparsegpt", "wanda"],
        "{rows:?}"
    );
    for name in ["damage-vs-sparsity", "task-score-vs-perplexity"] {
        check_png(&out.join(format!("table/{name}.png")));
        assert!(out.join(format!("table/{name}.svg")).is_file());
    }
    assert!(out.join("table/task-specific.tex").is_file());
    assert!(out.join("table/task-specific.csv").is_file());
}

#[test]
fn cost_of_compression_study_runs_and_reports() {
    let shared = require_shared!("");
    let tmp = tempfile::tempdir().unwrap();
    let file = sliced_copy(
        tmp.path(),
        "cost-of-compression.yaml",
        &shared,
        &[
            (
                "sparsity: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]",
                "sparsity: [0.2, 0.6]",
            ),
            ("group: [attention, mlp, all]", "group: [all]"),
            ("combined: [0.2, 0.4]", "combined: [0.2]"),
            ("head_sparsity: [0.2, 0.5]", "head_sparsity: [0.5]"),
            // Perplexity windows (before the next cut makes more 4s), facts per relation,
            // items of each multiple-choice task.
            ("limit: 4\n", "limit: 1\n"),
            ("limit: 30", "limit: 5"),
            ("limit: 16", "limit: 4"),
        ],
    );
    let cache = tmp.path().join("cache");
    run_ok(&cache, &file);
    let out = tmp.path().join("reports");
    report(&cache, &file, &out);
    let (header, rows) = complete_table(&out, "pruning/pruning.md");
    for col in [
        "LAMA P@1",
        "LAMA P@5",
        "BoolQ",
        "PIQA",
        "WinoGrande",
        "WikiText ppl",
    ] {
        assert!(
            header.iter().any(|h| h == col),
            "no column {col}: {header:?}"
        );
    }
    // Dense, then all × {0.2, 0.6}.
    assert_eq!(rows.len(), 3, "{rows:?}");
    for name in [
        "knowledge-and-tasks-vs-sparsity",
        "perplexity-vs-sparsity",
        "knowledge-loss-vs-perplexity",
    ] {
        check_png(&out.join(format!("pruning/{name}.png")));
    }
    for name in ["lm-head-knowledge", "lm-head-perplexity"] {
        check_png(&out.join(format!("lm-head/{name}.png")));
    }
    // Dense, int8 of `all`, then 20% pruning followed by int8.
    let (header, rows) = complete_table(&out, "quantization/quantization.md");
    let want = [
        "group",
        "combined",
        "model (MB)",
        "LAMA P@1",
        "LAMA P@5",
        "BoolQ",
        "PIQA",
        "WinoGrande",
        "WikiText ppl",
    ];
    assert_eq!(header, want);
    let keys: Vec<(&str, &str)> = rows.iter().map(|r| (&*r[0], &*r[1])).collect();
    assert_eq!(
        keys,
        [("dense", "—"), ("all", "—"), ("all", "0.2")],
        "{rows:?}"
    );
    // Dense, then each way of pruning the head at 50%.
    let (header, rows) = complete_table(&out, "lm-head/lm-head.md");
    let want = [
        "head_pattern",
        "head_method",
        "head_sparsity",
        "LAMA P@1",
        "LAMA P@5",
        "LAMA P@10",
        "MRR",
        "WikiText ppl",
    ];
    assert_eq!(header, want);
    let keys: Vec<(&str, &str)> = rows.iter().map(|r| (&*r[0], &*r[1])).collect();
    assert_eq!(
        keys,
        [
            ("dense", "—"),
            ("unstructured", "magnitude"),
            ("rows", "magnitude"),
            ("unstructured", "random"),
        ],
        "{rows:?}"
    );
}
