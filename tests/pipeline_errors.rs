//! Broken pipeline files (tests/fixtures/pipelines/*.yaml), each with one mistake, and the exact
//! diagnostics they must produce. Each fixture is copied into a temp dir beside a fake model
//! (`models/tiny/config.json`), a model dir without config.json (`models/empty`) and small data
//! files, so the tests do not depend on the shared assets.

mod common;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use whittle::pipeline::{self, Diagnostic, Diagnostics};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines")
}

/// A temp dir with the files the fixtures refer to.
fn env() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    for d in ["models/tiny", "models/empty", "data"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    // Validation reads the config and looks for the tokenizer and weights files.
    std::fs::write(root.join("models/tiny/config.json"), r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 512}"#).expect("write");
    std::fs::write(root.join("models/tiny/tokenizer.json"), "{}").expect("write");
    std::fs::write(root.join("models/tiny/model.safetensors"), "").expect("write");
    std::fs::write(root.join("data/wiki.txt"), "a\nb\n").expect("write");
    std::fs::write(root.join("data/stories.txt"), "x<|endoftext|>y").expect("write");
    std::fs::write(root.join("data/c4.jsonl"), "{\"text\":\"x\"}\n").expect("write");
    dir
}

fn load_fixture(name: &str) -> Diagnostics {
    let src = std::fs::read_to_string(fixtures_dir().join(name)).expect("fixture");
    let dir = env();
    let path = dir.path().join(name);
    std::fs::write(&path, src).expect("write");
    match pipeline::load(&path) {
        Ok(_) => panic!("{name} should not load"),
        Err(d) => d,
    }
}

/// Asserts the fixture gives exactly one diagnostic, at `line:col`, for `key_path`, whose
/// message contains every fragment.
#[track_caller]
fn one(name: &str, line: usize, col: usize, key_path: &str, fragments: &[&str]) -> Diagnostic {
    let d = load_fixture(name);
    assert_eq!(d.len(), 1, "{name}: expected one diagnostic, got:\n{d}");
    let x = d.0[0].clone();
    check(&x, line, col, key_path, fragments);
    x
}

#[track_caller]
fn check(x: &Diagnostic, line: usize, col: usize, key_path: &str, fragments: &[&str]) {
    assert_eq!((x.line, x.col), (line, col), "position of: {x}");
    assert_eq!(x.key_path, key_path, "key path of: {x}");
    for f in fragments {
        assert!(x.message.contains(f), "message lacks {f:?}: {x}");
    }
}

#[test]
fn misspelled_key_is_reported_with_a_suggestion() {
    let d = load_fixture("misspelled-key.yaml");
    assert_eq!(d.len(), 2, "{d}");
    // The stage lacks `sparsity` (reported at the stage's key), and has an unknown key.
    check(
        &d.0[0],
        6,
        3,
        "stages.pruned.sparsity",
        &["missing required key `sparsity`"],
    );
    check(
        &d.0[1],
        10,
        5,
        "stages.pruned.sparsty",
        &["unknown key `sparsty`", "did you mean `sparsity`?"],
    );
}

#[test]
fn wrong_type() {
    one(
        "wrong-type.yaml",
        8,
        68,
        "stages.calib.samples",
        &["expected an integer ≥ 1, found `many`"],
    );
}

#[test]
fn sparsity_out_of_range_renders_with_a_caret() {
    let x = one(
        "sparsity-out-of-range.yaml",
        10,
        15,
        "stages.pruned.sparsity",
        &["expected a number in [0, 1), found `1.5`"],
    );
    let text = x.to_string();
    assert!(
        text.contains("10 |     sparsity: 1.5\n   |               ^^^\n"),
        "{text}"
    );
    assert!(text.contains("sparsity-out-of-range.yaml:10:15"), "{text}");
}

#[test]
fn pattern_needs_n_below_m() {
    let x = one(
        "pattern-4-2.yaml",
        6,
        66,
        "stages.pruned.pattern",
        &["pattern `4:2` needs 0 < N < M"],
    );
    assert!(x.help.unwrap().contains("`2:4`"));
}

#[test]
fn unknown_stage_reference_with_suggestion() {
    one(
        "unknown-stage-ref.yaml",
        9,
        32,
        "stages.ppl.model",
        &["unknown stage `prunned`; did you mean `pruned`?"],
    );
}

#[test]
fn reference_to_a_stage_of_the_wrong_kind() {
    one(
        "wrong-kind-ref.yaml",
        9,
        32,
        "stages.ppl.model",
        &["`model:` of stage `ppl` must name a stage that outputs weights (load, train, prune, quantize); \
           `calib` is a calibrate stage"],
    );
}

#[test]
fn cycle_is_reported_with_its_path() {
    one("cycle.yaml", 6, 27, "stages.a.model", &["cycle: a → b → a"]);
}

#[test]
fn missing_model_directory() {
    one(
        "missing-model-dir.yaml",
        5,
        11,
        "models.big.path",
        &["model directory `models/nope` does not exist"],
    );
}

#[test]
fn model_directory_without_config() {
    one(
        "model-dir-without-config.yaml",
        3,
        10,
        "models.empty",
        &["`models/empty` has no config.json"],
    );
}

#[test]
fn missing_dataset_file() {
    one(
        "missing-dataset-file.yaml",
        5,
        16,
        "datasets.wiki.path",
        &["dataset file `data/wiki-typo.txt` does not exist"],
    );
}

#[test]
fn unknown_axis_in_interpolation() {
    let d = load_fixture("unknown-axis.yaml");
    assert_eq!(d.len(), 2, "{d}");
    // The misspelling leaves the real axis unused; the placeholder is not type-checked as well.
    check(
        &d.0[0],
        7,
        5,
        "sweep.grid.sparsity",
        &["axis `sparsity` is not used by any stage"],
    );
    check(
        &d.0[1],
        10,
        69,
        "stages.pruned.sparsity",
        &["unknown sweep axis `sparsty`", "did you mean `sparsity`?"],
    );
}

#[test]
fn zip_lists_of_unequal_length() {
    one(
        "zip-length-mismatch.yaml",
        7,
        19,
        "sweep.zip[0].group_size",
        &["equal lengths", "`bits` has 2 values, `group_size` has 3"],
    );
}

#[test]
fn include_point_missing_an_axis() {
    one(
        "include-missing-axis.yaml",
        10,
        7,
        "sweep.include[1]",
        &["missing axis `method`"],
    );
}

#[test]
fn everything_excluded() {
    one(
        "everything-excluded.yaml",
        7,
        3,
        "sweep.exclude",
        &["every sweep point is excluded"],
    );
}

#[test]
fn wanda_without_calibration() {
    let x = one(
        "wanda-without-calibration.yaml",
        9,
        3,
        "stages.pruned.calibration",
        &["wanda needs `calibration:`"],
    );
    assert!(x.help.unwrap().contains("calibration: calib"));
}

#[test]
fn duplicate_key() {
    one(
        "duplicate-key.yaml",
        11,
        5,
        "stages.pruned.method",
        &["duplicate key `method` (first given on line 9)"],
    );
}

#[test]
fn yaml_syntax_error_has_the_parser_position() {
    one(
        "yaml-syntax-error.yaml",
        6,
        54,
        "",
        &["YAML syntax error", "flow sequence"],
    );
}

#[test]
fn unknown_kind_with_suggestion() {
    one(
        "unknown-kind.yaml",
        6,
        18,
        "stages.pruned.kind",
        &["unknown stage kind `prnue`; did you mean `prune`?"],
    );
}

#[test]
fn bits_out_of_range() {
    one(
        "bits-out-of-range.yaml",
        6,
        42,
        "stages.q.bits",
        &["expected an integer from 2 to 8, found `16`"],
    );
}

#[test]
fn swept_value_error_points_into_the_sweep() {
    let d = load_fixture("swept-value-out-of-range.yaml");
    // One message per stage the value flows into (each instance's repeat is dropped).
    assert_eq!(d.len(), 2, "{d}");
    for (x, stage) in d.iter().zip(["pruned", "pruned2"]) {
        let kp = format!("stages.{stage}.sparsity");
        check(
            x,
            6,
            22,
            &kp,
            &["found `1.5`", "sweep axis `sparsity`", &kp],
        );
    }
}

#[test]
fn unsupported_version() {
    one(
        "unsupported-version.yaml",
        2,
        10,
        "version",
        &["unsupported pipeline version `2`"],
    );
}

#[test]
fn nm_pattern_fixes_the_sparsity() {
    one(
        "nm-sparsity-mismatch.yaml",
        6,
        83,
        "stages.pruned.sparsity",
        &["sparsity 0.3 does not match pattern `2:4`, which prunes 0.5"],
    );
}

#[test]
fn unused_axis_is_an_error() {
    one(
        "unused-axis.yaml",
        7,
        5,
        "sweep.grid.seed",
        &["sweep axis `seed` is not used by any stage"],
    );
}

#[test]
fn axis_in_grid_and_zip() {
    one(
        "axis-in-grid-and-zip.yaml",
        8,
        8,
        "sweep.zip[0].bits",
        &["axis `bits` is declared twice (first on line 6)"],
    );
}

#[test]
fn several_mistakes_are_all_reported_at_once() {
    let d = load_fixture("several-mistakes.yaml");
    let expected: &[(usize, usize, &str, &str)] = &[
        (3, 1, "modls", "did you mean `models`?"),
        (
            6,
            39,
            "datasets.wiki.format",
            "found `txt`; did you mean `text`?",
        ),
        (8, 29, "stages.base.model", "unknown model `tiny`"),
        (8, 42, "stages.base.dtype", "found `f64`"),
        (
            9,
            64,
            "stages.calib.seqlen",
            "expected an integer ≥ 2, found `1`",
        ),
        (10, 63, "stages.pruned.sparsity", "found `-0.1`"),
        (
            10,
            82,
            "stages.pruned.calibration",
            "must name a calibrate stage; `base` is a load stage",
        ),
        (
            11,
            59,
            "stages.q.group_size",
            "or -1 for per-channel, found `0`",
        ),
        (11, 62, "stages.q.symetric", "did you mean `symmetric`?"),
        (12, 41, "stages.ppl.task", "`generation`, found `accuracy`"),
        (
            12,
            60,
            "stages.ppl.dataset",
            "unknown dataset `wikitext`; did you mean `wiki`?",
        ),
        (
            12,
            77,
            "stages.ppl.limit",
            "expected an integer ≥ 1, found `0`",
        ),
        (13, 39, "stages.table.inputs", "cycle: table → table"),
        (
            13,
            39,
            "stages.table.inputs[1]",
            "`table` is a report stage",
        ),
        (13, 62, "stages.table.formats[1]", "found `html`"),
    ];
    assert_eq!(d.len(), expected.len(), "{d}");
    for (x, (line, col, kp, frag)) in d.iter().zip(expected) {
        check(x, *line, *col, kp, &[frag]);
    }
    let text = d.to_string();
    assert!(
        text.ends_with("error: 15 problems in the pipeline file\n"),
        "{text}"
    );
}

// ---- Compression keys (issue 3) ----

#[test]
fn global_scope_needs_an_unstructured_pattern() {
    let x = one(
        "global-scope-with-nm.yaml",
        10,
        12,
        "stages.pruned.scope",
        &["`scope: global` needs `pattern: unstructured`, found `2:4`"],
    );
    assert!(x.help.unwrap().contains("use `scope: layer`"));
}

#[test]
fn dense_sparsegpt_needs_a_recorded_hessian() {
    let x = one(
        "sparsegpt-dense-without-hessian.yaml",
        15,
        23,
        "stages.pruned.calibration_mode",
        &["sparsegpt with `calibration_mode: dense` reads the Hessian from `calib`, which records only [norms]"],
    );
    assert_eq!(
        x.help.as_deref(),
        Some("add `statistics: [norms, hessian]` to stage `calib`")
    );
}

#[test]
fn invalid_regex_in_targets_gives_the_regex_crate_reason() {
    let x = one(
        "invalid-regex-in-targets.yaml",
        11,
        25,
        "stages.pruned.targets[1]",
        &[r"invalid regex `layers\.(1|2\.`: unclosed group"],
    );
    assert!(!x.message.contains('\n'), "{x}");
    assert!(x.help.unwrap().contains("regex"));
}

#[test]
fn override_sparsity_must_be_a_fraction() {
    one(
        "override-sparsity-out-of-range.yaml",
        13,
        20,
        "stages.pruned.overrides.down_proj",
        &["expected a number in [0, 1), found `1.2`"],
    );
}

#[test]
fn rows_pattern_is_magnitude_only() {
    one(
        "rows-with-wanda.yaml",
        9,
        82,
        "stages.pruned.pattern",
        &["pattern `rows` is only supported by magnitude pruning, not wanda"],
    );
}

#[test]
fn rows_pattern_needs_a_sparsity() {
    let x = one(
        "rows-without-sparsity.yaml",
        6,
        3,
        "stages.pruned.sparsity",
        &["missing required key `sparsity`"],
    );
    assert!(x.help.unwrap().contains("rows"));
}

#[test]
fn percdamp_must_be_positive() {
    one(
        "percdamp-zero.yaml",
        9,
        102,
        "stages.pruned.percdamp",
        &["expected a number in (0, 1], found `0`"],
    );
}

#[test]
fn percdamp_is_only_for_sparsegpt_and_gptq() {
    let x = one(
        "percdamp-on-wanda.yaml",
        15,
        5,
        "stages.pruned.percdamp",
        &["`percdamp` is only used by sparsegpt/gptq, not by wanda"],
    );
    assert_eq!(x.help.as_deref(), Some("remove `percdamp`"));
}

#[test]
fn dynamic_int8_takes_no_bits() {
    one(
        "dynamic-int8-with-bits.yaml",
        10,
        5,
        "stages.q.bits",
        &["dynamic-int8 takes no `bits`: weights are int8 per tensor"],
    );
}

#[test]
fn gptq_without_calibration() {
    let x = one(
        "gptq-without-calibration.yaml",
        9,
        3,
        "stages.q.calibration",
        &["gptq needs `calibration:` (stage `q`)"],
    );
    assert!(x.help.unwrap().contains("add `calibration: calib`"));
}

#[test]
fn unknown_module_group_with_suggestion() {
    let x = one(
        "unknown-module-group.yaml",
        6,
        54,
        "stages.q.modules",
        &["found `atention`; did you mean `attention`?"],
    );
    assert!(x.expected.unwrap().contains("`lm_head`"));
}

#[test]
fn statistics_listed_twice() {
    one(
        "duplicate-statistics.yaml",
        12,
        34,
        "stages.calib.statistics[2]",
        &["`hessian` is listed twice in `statistics`"],
    );
}

#[test]
fn overrides_need_an_unstructured_pattern() {
    one(
        "overrides-with-nm.yaml",
        11,
        5,
        "stages.pruned.overrides",
        &["`overrides` cannot be used with pattern `2:4`"],
    );
}

#[test]
fn swept_method_mismatch_names_the_axis() {
    // Only the `random` point fails; magnitude takes 2:4.
    one(
        "swept-method-with-random-pattern.yaml",
        9,
        68,
        "stages.pruned.pattern",
        &["random pruning supports only `pattern: unstructured`, found `2:4` (method `random` from sweep axis `method`)"],
    );
}

#[test]
fn every_fixture_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && !n.starts_with("valid-"))
        .collect();
    names.sort();
    assert!(names.len() >= 39, "{names:?}");
    // Every broken fixture fails, and renders without panicking.
    for n in &names {
        let d = load_fixture(n);
        assert!(!d.is_empty() && !d.to_string().is_empty(), "{n}");
    }
}

#[test]
fn valid_example_on_the_shared_assets() {
    let _ = require_shared!("models/stories260K");
    let p = pipeline::load(&fixtures_dir().join("valid-wanda-sweep.yaml"))
        .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(p.name, "wanda-sweep");
    let counts: Vec<(&str, usize)> = p
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.instances.len()))
        .collect();
    assert_eq!(
        counts,
        [
            ("base", 1),
            ("calib", 1),
            ("pruned", 6),
            ("ppl", 6),
            ("ppl-dense", 1),
            ("table", 1)
        ]
    );
    assert!(p.models["stories"].dir.join("config.json").is_file());
    assert!(p.path.is_absolute());
}

fn valid_source() -> String {
    std::fs::read_to_string(fixtures_dir().join("valid-wanda-sweep.yaml"))
        .expect("fixture")
        .replace("../../../../shared/models/stories260K", "models/tiny")
        .replace(
            "../../../../shared/data/wikitext-2-raw/wiki.test.raw",
            "data/wiki.txt",
        )
        .replace(
            "../../../../shared/data/tinystories/valid-head.txt",
            "data/stories.txt",
        )
        .replace(
            "../../../../shared/data/c4/c4-train-head1000.jsonl",
            "data/c4.jsonl",
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random edits of a valid file: always Ok or Diagnostics, never a panic.
    #[test]
    fn mutated_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..8)
    ) {
        let dir = env();
        let mut bytes = valid_source().into_bytes();
        let pool = b":-[]{}&*<>!|'\"#,${} \n\t0.5xa";
        for (at, op, b) in edits {
            let i = at.index(bytes.len().max(1)).min(bytes.len());
            let c = if b % 2 == 0 { pool[(b as usize / 2) % pool.len()] } else { b & 0x7f };
            match op {
                0 if i < bytes.len() => { bytes.remove(i); }
                1 => bytes.insert(i, c),
                2 if i < bytes.len() => bytes[i] = c,
                _ => { let j = (i + b as usize).min(bytes.len()); bytes.drain(i..j); }
            }
        }
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, &bytes).expect("write");
        match pipeline::load(&path) {
            Ok(p) => prop_assert!(!p.stages.is_empty()),
            Err(d) => prop_assert!(!d.is_empty()),
        }
    }

    /// Arbitrary text: never a panic.
    #[test]
    fn arbitrary_text_never_panics(src in "[ -~\n\t]{0,200}") {
        let dir = env();
        let path = dir.path().join("p.yaml");
        let _ = pipeline::load_str(&path, &src);
    }
}

#[test]
fn stride_without_sliding_mode() {
    one(
        "stride-without-sliding.yaml",
        14,
        5,
        "stages.ppl.stride",
        &["`stride` only applies to `mode: sliding`"],
    );
}

#[test]
fn key_of_another_evaluation_task() {
    let d = one(
        "key-of-another-task.yaml",
        13,
        5,
        "stages.ppl.ranking",
        &["`ranking` does not apply to task `perplexity`"],
    );
    assert!(d.help.as_deref().unwrap_or("").contains("knowledge"), "{d}");
}

#[test]
fn knowledge_probe_on_a_text_dataset() {
    one(
        "knowledge-on-text.yaml",
        12,
        14,
        "stages.lama.dataset",
        &[
            "task `knowledge` reads a LAMA directory",
            "dataset `wiki` is `text`",
        ],
    );
}

#[test]
fn missing_task_file() {
    one(
        "missing-task-file.yaml",
        13,
        16,
        "stages.boolq.task_file",
        &["task file `tasks/boolq-typo.yaml` does not exist"],
    );
}

/// Loads `src` written into a fresh `env()`, after `prepare` adds files there.
fn load_with(src: &str, prepare: impl FnOnce(&Path)) -> Diagnostics {
    let dir = env();
    prepare(dir.path());
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, src).expect("write");
    match pipeline::load(&path) {
        Ok(_) => panic!("should not load:\n{src}"),
        Err(d) => d,
    }
}

#[test]
fn unsupported_model_type_fails_validation() {
    let d = load_with(
        "models:\n  mamba: models/mamba\nstages:\n  base: {kind: load, model: mamba}\n",
        |root| {
            let m = root.join("models/mamba");
            std::fs::create_dir_all(&m).unwrap();
            std::fs::write(m.join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
            std::fs::write(m.join("tokenizer.json"), "{}").unwrap();
            std::fs::write(m.join("model.safetensors"), "").unwrap();
        },
    );
    assert_eq!(d.len(), 1, "{d}");
    check(
        &d.0[0],
        2,
        10,
        "models.mamba",
        &["model_type", "`mamba` is not supported", "config.json"],
    );
}

#[test]
fn pytorch_bin_only_model_is_reported_once_with_its_position() {
    let d = load_with(
        "models:\n  pt: models/pt\nstages:\n  base: {kind: load, model: pt}\n",
        |root| {
            let m = root.join("models/pt");
            std::fs::create_dir_all(&m).unwrap();
            std::fs::copy(root.join("models/tiny/config.json"), m.join("config.json")).unwrap();
            std::fs::write(m.join("tokenizer.json"), "{}").unwrap();
            std::fs::write(m.join("pytorch_model.bin"), "x").unwrap();
        },
    );
    assert_eq!(d.len(), 1, "{d}");
    check(
        &d.0[0],
        2,
        7,
        "models.pt",
        &["pytorch_model.bin", "model.safetensors"],
    );
    assert_eq!(
        d.0[0].message.matches("pytorch_model.bin").count(),
        1,
        "{d}"
    );
}

#[cfg(unix)]
#[test]
fn a_device_dataset_is_not_called_a_directory() {
    let d = load_with(
        "models:\n  tiny: models/tiny\ndatasets:\n  z: /dev/zero\nstages:\n  base: {kind: load, model: tiny}\n",
        |_| {},
    );
    assert_eq!(d.len(), 1, "{d}");
    let m = &d.0[0].message;
    assert!(!m.contains("directory"), "{d}");
    assert!(m.contains("is not a regular file (it is a device)"), "{d}");
}
