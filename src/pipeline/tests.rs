//! Whole-file tests: valid pipelines and the instances they expand to.

use std::path::Path;

use super::spec::*;
use super::*;
use crate::cache::key::ParamValue;
use crate::stages::calibrate::{Accumulation, Sampling, Statistic};
use crate::stages::compress::{CalibrationMode, ModuleGroup, NameRegex, Selection};
use crate::stages::evaluate::{EvalTask, EvaluateSpec, PplMode};
use crate::stages::load::{DType, LoadSpec};
use crate::stages::prune::{Pattern, PruneMethod, PruneSpec, Scope};
use crate::stages::quantize::{QuantMethod, QuantizeSpec};
use crate::stages::report::ReportFormat;

/// A temp dir with a fake model and small data files, and the pipeline written into it.
fn load_in_env(src: &str) -> (tempfile::TempDir, Result<Pipeline, Diagnostics>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("models/tiny")).expect("mkdir");
    std::fs::create_dir_all(root.join("data")).expect("mkdir");
    // Validation reads the config and looks for the tokenizer and weights files.
    std::fs::write(root.join("models/tiny/config.json"), r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 512}"#).expect("write");
    std::fs::write(root.join("models/tiny/tokenizer.json"), "{}").expect("write");
    std::fs::write(root.join("models/tiny/model.safetensors"), "").expect("write");
    std::fs::write(root.join("data/wiki.txt"), "a\n").expect("write");
    std::fs::write(root.join("data/stories.txt"), "x").expect("write");
    std::fs::write(root.join("data/c4.jsonl"), "{}\n").expect("write");
    let path = root.join("sweep.yaml");
    std::fs::write(&path, src).expect("write");
    let r = load(&path);
    (dir, r)
}

fn ok(src: &str) -> Pipeline {
    let (_dir, r) = load_in_env(src);
    r.unwrap_or_else(|d| panic!("{d}"))
}

fn errs(src: &str) -> Diagnostics {
    let (_dir, r) = load_in_env(src);
    match r {
        Ok(_) => panic!("expected errors"),
        Err(d) => d,
    }
}

const HEAD: &str = "models:\n  tiny: models/tiny\ndatasets:\n  wiki: {path: data/wiki.txt, documents: lines}\n  stories: {path: data/stories.txt, documents: separator, separator: \"<|endoftext|>\"}\n  c4: data/c4.jsonl\n";

const FULL_STAGES: &str = "stages:
  base:      {kind: load, model: tiny, dtype: f32}
  calib:     {kind: calibrate, model: base, dataset: stories, samples: 32, seqlen: 128, sampling: random, seed: 0}
  pruned:    {kind: prune, model: base, method: \"${method}\", sparsity: \"${sparsity}\", calibration: calib, pattern: unstructured}
  ppl:       {kind: evaluate, model: pruned, task: perplexity, dataset: wiki, seqlen: 128, limit: 40, batch_size: 8}
  ppl-dense: {kind: evaluate, model: base, task: perplexity, dataset: wiki, seqlen: 128}
  table:     {kind: report, inputs: [ppl-dense, ppl], formats: [csv, md, jsonl]}
";

fn stage<'p>(p: &'p Pipeline, name: &str) -> (usize, &'p Stage) {
    p.stages
        .iter()
        .enumerate()
        .find(|(_, s)| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

fn prune_spec(i: &Instance) -> &PruneSpec {
    match &i.spec {
        StageSpec::Prune(p) => p,
        other => panic!("not a prune spec: {other:?}"),
    }
}

/// (method, sparsity) of each instance of a prune stage.
fn prune_points(s: &Stage) -> Vec<(String, f64)> {
    s.instances
        .iter()
        .map(|i| {
            let p = prune_spec(i);
            (p.method.name().to_string(), p.sparsity.get())
        })
        .collect()
}

#[test]
fn full_example_expands_into_the_expected_instances() {
    let src = format!(
        "version: 1\n{HEAD}sweep:\n  grid:\n    method: [magnitude, wanda]\n    sparsity: [0.1, 0.3, 0.5]\n{FULL_STAGES}"
    );
    let p = ok(&src);
    assert_eq!(p.name, "sweep");
    assert_eq!(p.axes, ["method", "sparsity"]);
    assert_eq!(
        p.source_digest,
        crate::cache::key::Digest::of_bytes(src.as_bytes())
    );
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
    let (base_i, base) = stage(&p, "base");
    let (calib_i, calib) = stage(&p, "calib");
    let (pruned_i, pruned) = stage(&p, "pruned");
    let (ppl_i, ppl) = stage(&p, "ppl");
    let (dense_i, _) = stage(&p, "ppl-dense");
    let (_, table) = stage(&p, "table");
    assert!(base.axes.is_empty() && calib.axes.is_empty());
    assert_eq!(pruned.axes, ["method", "sparsity"]);
    assert_eq!(ppl.axes, ["method", "sparsity"]);
    assert!(table.axes.is_empty());
    // version (1), HEAD (2-7), sweep (8-11), `stages:` (12), then one line per stage.
    assert_eq!(base.line, 13);
    assert_eq!(table.line, 18);
    assert_eq!(
        prune_points(pruned),
        [
            ("magnitude".into(), 0.1),
            ("magnitude".into(), 0.3),
            ("magnitude".into(), 0.5),
            ("wanda".into(), 0.1),
            ("wanda".into(), 0.3),
            ("wanda".into(), 0.5),
        ]
    );
    let base_ref = InstanceRef {
        stage: base_i,
        instance: 0,
    };
    for (k, inst) in pruned.instances.iter().enumerate() {
        let spec = prune_spec(inst);
        assert_eq!(spec.model, base_ref);
        assert_eq!(spec.pattern, Pattern::Unstructured);
        // Magnitude drops the calibration it was given; wanda keeps it.
        let expected = if k < 3 {
            PruneMethod::Magnitude {
                scope: Scope::Layer,
            }
        } else {
            PruneMethod::Wanda {
                calibration: InstanceRef {
                    stage: calib_i,
                    instance: 0,
                },
                mode: CalibrationMode::Sequential,
            }
        };
        assert_eq!(spec.method, expected);
        assert_eq!(
            inst.point["sparsity"],
            ParamValue::Float([0.1, 0.3, 0.5][k % 3])
        );
        let roles: Vec<String> = inst.spec.inputs().into_iter().map(|(r, _)| r).collect();
        assert_eq!(roles.len(), if k < 3 { 1 } else { 2 });
    }
    for (k, inst) in ppl.instances.iter().enumerate() {
        let StageSpec::Evaluate(e) = &inst.spec else {
            panic!("not evaluate")
        };
        assert_eq!(
            e.model,
            InstanceRef {
                stage: pruned_i,
                instance: k
            }
        );
        assert_eq!(inst.point, pruned.instances[k].point);
        assert_eq!(e.batch_size, 8);
        assert_eq!(
            e.task,
            EvalTask::Perplexity {
                dataset: "wiki".into(),
                seqlen: 128,
                join: "\n\n".into(),
                limit: Some(40),
                mode: PplMode::Windows,
            }
        );
    }
    let StageSpec::Report(r) = &table.instances[0].spec else {
        panic!("not report")
    };
    let mut expected = vec![InstanceRef {
        stage: dense_i,
        instance: 0,
    }];
    expected.extend((0..6).map(|instance| InstanceRef {
        stage: ppl_i,
        instance,
    }));
    assert_eq!(r.inputs, expected);
    assert_eq!(
        r.formats,
        [
            ReportFormat::Csv,
            ReportFormat::Markdown,
            ReportFormat::Jsonl
        ]
    );
    let StageSpec::Calibrate(c) = &calib.instances[0].spec else {
        panic!("not calibrate")
    };
    assert_eq!(
        (c.samples, c.seqlen, c.seed, c.sampling),
        (32, 128, 0, Sampling::Random)
    );
    assert_eq!(c.dataset, "stories");
    assert_eq!(
        p.datasets["stories"].format,
        DatasetFormat::Text {
            documents: TextDocuments::Separator("<|endoftext|>".into())
        }
    );
    assert_eq!(
        p.datasets["wiki"].format,
        DatasetFormat::Text {
            documents: TextDocuments::Lines
        }
    );
    assert_eq!(
        p.datasets["c4"].format,
        DatasetFormat::Jsonl {
            field: "text".into()
        }
    );
}

#[test]
fn exclude_and_include_change_exactly_the_expected_instances() {
    let src = format!(
        "{HEAD}sweep:\n  grid:\n    method: [magnitude, wanda]\n    sparsity: [0.1, 0.3, 0.5]\n  exclude:\n    - {{method: magnitude, sparsity: 0.5}}\n  include:\n    - {{method: wanda, sparsity: 0.7}}\n    - {{method: wanda, sparsity: 0.30}}\n{FULL_STAGES}"
    );
    let p = ok(&src);
    let (_, pruned) = stage(&p, "pruned");
    assert_eq!(
        prune_points(pruned),
        [
            ("magnitude".into(), 0.1),
            ("magnitude".into(), 0.3),
            ("wanda".into(), 0.1),
            ("wanda".into(), 0.3),
            ("wanda".into(), 0.5),
            ("wanda".into(), 0.7),
        ]
    );
    let (_, ppl) = stage(&p, "ppl");
    assert_eq!(ppl.instances.len(), 6);
    let (_, table) = stage(&p, "table");
    let StageSpec::Report(r) = &table.instances[0].spec else {
        panic!("not report")
    };
    assert_eq!(r.inputs.len(), 7);
}

#[test]
fn projections_resolve_references_to_the_matching_instance() {
    // `pruned` varies with method only; `ppl` with method and seqlen: each ppl instance reads the
    // pruned instance of its own method.
    let src = format!(
        "{HEAD}sweep:\n  grid:\n    method: [magnitude, wanda]\n    seqlen: [16, 32]\nstages:
  base: {{kind: load, model: tiny}}
  calib: {{kind: calibrate, model: base, dataset: stories}}
  pruned: {{kind: prune, model: base, method: \"${{method}}\", sparsity: 0.5, calibration: calib}}
  ppl: {{kind: evaluate, model: pruned, task: perplexity, dataset: wiki, seqlen: \"${{seqlen}}\", join: \"s${{seqlen}}\"}}
"
    );
    let p = ok(&src);
    let (pruned_i, pruned) = stage(&p, "pruned");
    let (_, ppl) = stage(&p, "ppl");
    assert_eq!(pruned.axes, ["method"]);
    assert_eq!(pruned.instances.len(), 2);
    assert_eq!(ppl.axes, ["method", "seqlen"]);
    let got: Vec<(usize, usize, String)> = ppl
        .instances
        .iter()
        .map(|i| {
            let StageSpec::Evaluate(e) = &i.spec else {
                panic!("not evaluate")
            };
            assert_eq!(e.model.stage, pruned_i);
            let EvalTask::Perplexity { seqlen, join, .. } = &e.task else {
                panic!("not perplexity")
            };
            (e.model.instance, *seqlen, join.clone())
        })
        .collect();
    assert_eq!(
        got,
        [
            (0, 16, "s16".to_string()),
            (0, 32, "s32".to_string()),
            (1, 16, "s16".to_string()),
            (1, 32, "s32".to_string()),
        ]
    );
}

#[test]
fn zip_axes_move_together_and_keep_their_types() {
    let src = format!(
        "{HEAD}sweep:\n  zip:\n    - {{bits: [4, 8], group_size: [128, -1]}}\nstages:
  base: {{kind: load, model: tiny}}
  q: {{kind: quantize, model: base, bits: \"${{bits}}\", group_size: \"${{group_size}}\", symmetric: true}}
"
    );
    let p = ok(&src);
    let (_, q) = stage(&p, "q");
    let methods: Vec<QuantMethod> = q
        .instances
        .iter()
        .map(|i| match &i.spec {
            StageSpec::Quantize(s) => s.method.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        methods,
        [
            QuantMethod::Rtn {
                bits: 4,
                group_size: Some(128),
                symmetric: true
            },
            QuantMethod::Rtn {
                bits: 8,
                group_size: None,
                symmetric: true
            },
        ]
    );
    assert_eq!(q.instances[1].point["group_size"], ParamValue::Int(-1));
}

#[test]
fn interpolation_typing_exact_versus_spliced() {
    // Exact `${s}` keeps the number; a quoted axis value stays a string and is rejected.
    let base = format!("{HEAD}sweep:\n  grid:\n    s: [0.5, \"0.25\"]\nstages:\n  base: {{kind: load, model: tiny}}\n");
    let d = errs(&format!(
        "{base}  p: {{kind: prune, model: base, method: magnitude, sparsity: \"${{s}}\"}}\n"
    ));
    assert_eq!(d.len(), 1, "{d}");
    let x = &d.0[0];
    assert_eq!((x.line, x.col), (9, 14));
    assert!(x.message.contains("found the string \"0.25\""), "{x}");
    assert!(x.message.contains("`stages.p.sparsity`"), "{x}");
    // Text around `${s}` makes a string: never a number.
    let d = errs(&format!(
        "{base}  p: {{kind: prune, model: base, method: magnitude, sparsity: \"0${{s}}\"}}\n"
    ));
    assert!(
        d.iter()
            .all(|x| x.line == 12 && x.message.contains("after substituting")),
        "{d}"
    );
}

#[test]
fn interpolated_references_resolve_per_point() {
    let src = format!(
        "{HEAD}sweep:\n  grid:\n    m: [base, pruned]\nstages:
  base: {{kind: load, model: tiny}}
  pruned: {{kind: prune, model: base, method: magnitude, pattern: \"2:4\"}}
  ppl: {{kind: evaluate, model: \"${{m}}\", task: perplexity, dataset: wiki}}
"
    );
    let p = ok(&src);
    let (_, ppl) = stage(&p, "ppl");
    let models: Vec<usize> = ppl
        .instances
        .iter()
        .map(|i| match &i.spec {
            StageSpec::Evaluate(e) => e.model.stage,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(models, [0, 1]);
    let (_, pruned) = stage(&p, "pruned");
    let spec = prune_spec(&pruned.instances[0]);
    assert_eq!(spec.pattern, Pattern::NM { n: 2, m: 4 });
    assert_eq!(spec.sparsity.get(), 0.5);
}

#[test]
fn merge_keys_share_stage_settings() {
    let src = format!(
        "{HEAD}stages:
  base: {{kind: load, model: tiny}}
  e1: &ev {{kind: evaluate, model: base, task: perplexity, dataset: wiki, seqlen: 64}}
  e2:
    <<: *ev
    seqlen: 32
"
    );
    let p = ok(&src);
    let seqlens: Vec<usize> = ["e1", "e2"]
        .iter()
        .map(|n| match &stage(&p, n).1.instances[0].spec {
            StageSpec::Evaluate(EvaluateSpec {
                task: EvalTask::Perplexity { seqlen, .. },
                ..
            }) => *seqlen,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqlens, [64, 32]);
    // A merged key that is wrong is reported where it is written (in the anchored map).
    let d = errs(&src.replace("seqlen: 64", "seqlen: 1"));
    assert_eq!(d.len(), 1, "{d}");
    assert_eq!(
        (d.0[0].line, d.0[0].key_path.as_str()),
        (9, "stages.e1.seqlen")
    );
}

#[test]
fn no_sweep_is_one_empty_point_and_defaults_apply() {
    let src = format!(
        "{HEAD}name: plain\nstages:\n  base: {{kind: load, model: tiny}}\n  p: {{kind: prune, model: base, method: magnitude, sparsity: 0}}\n  q: {{kind: quantize, model: p, bits: 3}}\n  e: {{kind: evaluate, model: q, task: perplexity, dataset: c4}}\n  r: {{kind: report, inputs: [e]}}\n"
    );
    let p = ok(&src);
    assert_eq!(p.name, "plain");
    assert!(p.axes.is_empty());
    for s in &p.stages {
        assert_eq!(s.instances.len(), 1, "{}", s.name);
        assert!(s.instances[0].point.is_empty());
    }
    let (_, q) = stage(&p, "q");
    assert_eq!(
        q.instances[0].spec,
        StageSpec::Quantize(QuantizeSpec {
            model: InstanceRef {
                stage: 1,
                instance: 0
            },
            method: QuantMethod::Rtn {
                bits: 3,
                group_size: None,
                symmetric: false
            },
            selection: Selection::default(),
        })
    );
    let (_, e) = stage(&p, "e");
    let StageSpec::Evaluate(ev) = &e.instances[0].spec else {
        panic!("not evaluate")
    };
    assert_eq!(ev.batch_size, 8);
    assert_eq!(
        ev.task,
        EvalTask::Perplexity {
            dataset: "c4".into(),
            seqlen: 2048,
            join: "\n\n".into(),
            limit: None,
            mode: PplMode::Windows,
        }
    );
    assert_eq!(
        p.stages[0].instances[0].spec,
        StageSpec::Load(LoadSpec {
            model: "tiny".into(),
            dtype: DType::F32,
            tokenizer_semantics: Default::default(),
        })
    );
}

#[test]
fn empty_and_non_map_files_are_reported() {
    let d = load_str(Path::new("x.yaml"), "").expect_err("empty");
    assert!(d.0[0].message.contains("empty"));
    let d = load_str(Path::new("x.yaml"), "- 1\n- 2\n").expect_err("list");
    assert!(
        d.iter()
            .any(|x| x.message.contains("expected a map at `the top level`")),
        "{d}"
    );
    let d = load_str(Path::new("x.yaml"), "a: 1\n---\nb: 2\n").expect_err("two documents");
    assert!(
        d.iter().any(|x| x.message.contains("one YAML document")),
        "{d}"
    );
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let depth = 20_000;
    let src = format!("a: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let r = load_str(Path::new("x.yaml"), &src);
    // The scanner's own flow-level limit (255) may come first.
    let d = r.expect_err("nested");
    let m = &d.0[0].message;
    assert!(m.contains("nested") || m.contains("recursion limit"), "{d}");
    let src = format!("a: {}1{}\n", "{b: ".repeat(depth), "}".repeat(depth));
    assert!(load_str(Path::new("x.yaml"), &src).is_err());
    // Aliases of aliases grow deeper than anything written.
    let mut src = String::from("a0: &a0 [1]\n");
    for i in 1..200 {
        let p = i - 1;
        src.push_str(&format!("a{i}: &a{i} [*a{p}]\n"));
    }
    let d = load_str(Path::new("x.yaml"), &src).expect_err("deep aliases");
    assert!(d.0[0].message.contains("levels deep"), "{d}");
    // Block sequences nest without a flow level: `- - - … 1` on one line.
    let src = format!("a:\n  {}1\n", "- ".repeat(depth));
    let d = load_str(Path::new("x.yaml"), &src).expect_err("nested");
    assert!(d.0[0].message.contains("nested"), "{d}");
}

// ---- Compression keys (issue 3) ----

/// HEAD plus a load stage `base` and the given stages.
fn with_base(sweep: &str, stages: &str) -> String {
    format!("{HEAD}{sweep}stages:\n  base: {{kind: load, model: tiny}}\n{stages}")
}

fn only_spec(p: &Pipeline, name: &str) -> StageSpec {
    let (_, s) = stage(p, name);
    assert_eq!(s.instances.len(), 1, "{name}");
    s.instances[0].spec.clone()
}

fn prune_of(p: &Pipeline, name: &str) -> PruneSpec {
    match only_spec(p, name) {
        StageSpec::Prune(x) => x,
        other => panic!("not a prune spec: {other:?}"),
    }
}

fn quant_of(p: &Pipeline, name: &str) -> QuantizeSpec {
    match only_spec(p, name) {
        StageSpec::Quantize(x) => x,
        other => panic!("not a quantize spec: {other:?}"),
    }
}

fn statistics_of(p: &Pipeline, name: &str) -> Vec<Statistic> {
    match only_spec(p, name) {
        StageSpec::Calibrate(c) => c.statistics,
        other => panic!("not a calibrate spec: {other:?}"),
    }
}

fn at(stage: usize) -> InstanceRef {
    InstanceRef { stage, instance: 0 }
}

#[test]
fn statistics_default_to_norms_and_are_sorted() {
    let p = ok(&with_base(
        "",
        "  c0: {kind: calibrate, model: base, dataset: stories}
  c1: {kind: calibrate, model: base, dataset: stories, statistics: [hessian, norms]}
  c2: {kind: calibrate, model: base, dataset: stories, statistics: hessian}
  c3: {kind: calibrate, model: base, dataset: stories, statistics: [norms, hessian]}
",
    ));
    assert_eq!(statistics_of(&p, "c0"), [Statistic::Norms]);
    assert_eq!(
        statistics_of(&p, "c1"),
        [Statistic::Norms, Statistic::Hessian]
    );
    assert_eq!(statistics_of(&p, "c2"), [Statistic::Hessian]);
    // The order written does not change the key.
    assert_eq!(
        only_spec(&p, "c1").key_params(),
        only_spec(&p, "c3").key_params()
    );
    assert_ne!(
        only_spec(&p, "c0").key_params(),
        only_spec(&p, "c3").key_params()
    );
}

#[test]
fn accumulation_enters_the_calibrate_key_only_when_reference() {
    let p = ok(&with_base(
        "",
        "  c0: {kind: calibrate, model: base, dataset: stories}
  c1: {kind: calibrate, model: base, dataset: stories, accumulation: exact}
  c2: {kind: calibrate, model: base, dataset: stories, accumulation: reference}
",
    ));
    let acc = |name| match only_spec(&p, name) {
        StageSpec::Calibrate(c) => c.accumulation,
        other => panic!("not a calibrate spec: {other:?}"),
    };
    assert_eq!(acc("c0"), Accumulation::Exact);
    assert_eq!(acc("c1"), Accumulation::Exact);
    assert_eq!(acc("c2"), Accumulation::Reference);
    // The default leaves existing keys as they were.
    let (k0, k1, k2) = (
        only_spec(&p, "c0").key_params(),
        only_spec(&p, "c1").key_params(),
        only_spec(&p, "c2").key_params(),
    );
    assert_eq!(k0, k1);
    assert!(!k0.contains_key("accumulation"));
    assert_eq!(k2["accumulation"], ParamValue::from("reference"));
    let d = errs(&with_base(
        "",
        "  c: {kind: calibrate, model: base, dataset: stories, accumulation: referense}\n",
    ));
    assert_eq!(d.len(), 1, "{d}");
    let x = &d.0[0];
    assert_eq!(x.key_path, "stages.c.accumulation");
    assert!(
        x.message.contains("`exact` or `reference`") && x.message.contains("did you mean"),
        "{x}"
    );
}

#[test]
fn torch_counted_prunes_name_their_count_rule_in_the_key() {
    let p = ok(&with_base(
        "",
        "  g: {kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.4}
  l: {kind: prune, model: base, method: magnitude, sparsity: 0.4}
  r: {kind: prune, model: base, method: random, sparsity: 0.4}
  rows: {kind: prune, model: base, method: magnitude, pattern: rows, sparsity: 0.4}
",
    ));
    // Entries made when these counted floor(N·s) (or cut at `<= sorted[floor(N·s)]`) are not
    // served: the LM-head controls follow torch's count too.
    for name in ["g", "r", "rows"] {
        let k = only_spec(&p, name).key_params();
        assert_eq!(k["count"], ParamValue::from("round(N*s)"), "{name}");
    }
    assert!(!only_spec(&p, "l").key_params().contains_key("count"));
}

#[test]
fn every_prune_method_parses_with_its_keys_and_defaults() {
    let p = ok(&with_base(
        "",
        "  calib: {kind: calibrate, model: base, dataset: stories, statistics: [norms, hessian]}
  mag: {kind: prune, model: base, method: magnitude, sparsity: 0.5}
  glob: {kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.4}
  rnd0: {kind: prune, model: base, method: random, sparsity: 0.3}
  rnd7: {kind: prune, model: base, method: random, seed: 7, sparsity: 0.3, calibration: calib}
  wseq: {kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}
  wden: {kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib, calibration_mode: dense}
  sgpt: {kind: prune, model: base, method: sparsegpt, pattern: \"2:4\", calibration: calib}
  sgpt2: {kind: prune, model: base, method: sparsegpt, sparsity: 0.6, calibration: calib, calibration_mode: dense, percdamp: 0.1, blocksize: 64}
  sgpt3: {kind: prune, model: base, method: sparsegpt, sparsity: 0.6, calibration: calib, percdamp: 1}
",
    ));
    let calib = at(1);
    let methods: Vec<(&str, PruneMethod)> = vec![
        (
            "mag",
            PruneMethod::Magnitude {
                scope: Scope::Layer,
            },
        ),
        (
            "glob",
            PruneMethod::Magnitude {
                scope: Scope::Global,
            },
        ),
        ("rnd0", PruneMethod::Random { seed: 0 }),
        ("rnd7", PruneMethod::Random { seed: 7 }),
        (
            "wseq",
            PruneMethod::Wanda {
                calibration: calib,
                mode: CalibrationMode::Sequential,
            },
        ),
        (
            "wden",
            PruneMethod::Wanda {
                calibration: calib,
                mode: CalibrationMode::Dense,
            },
        ),
        (
            "sgpt",
            PruneMethod::SparseGpt {
                calibration: calib,
                mode: CalibrationMode::Sequential,
                percdamp: 0.01,
                blocksize: 128,
            },
        ),
        (
            "sgpt2",
            PruneMethod::SparseGpt {
                calibration: calib,
                mode: CalibrationMode::Dense,
                percdamp: 0.1,
                blocksize: 64,
            },
        ),
        (
            "sgpt3",
            PruneMethod::SparseGpt {
                calibration: calib,
                mode: CalibrationMode::Sequential,
                percdamp: 1.0,
                blocksize: 128,
            },
        ),
    ];
    for (name, method) in methods {
        let spec = prune_of(&p, name);
        assert_eq!(spec.method, method, "{name}");
        assert_eq!(spec.selection, Selection::default(), "{name}");
        assert!(spec.overrides.is_empty(), "{name}");
        // Only the calibrated methods read the calibration (random ignores the one it has).
        let calibrated = spec.method.calibration().is_some();
        let inputs = StageSpec::Prune(spec).inputs();
        assert_eq!(inputs.len(), if calibrated { 2 } else { 1 }, "{name}");
    }
    let s = prune_of(&p, "sgpt");
    assert_eq!(s.pattern, Pattern::NM { n: 2, m: 4 });
    assert_eq!(s.sparsity.get(), 0.5);
}

#[test]
fn rows_pattern_takes_the_fraction_of_rows() {
    let p = ok(&with_base(
        "",
        "  rows: {kind: prune, model: base, method: magnitude, pattern: rows, sparsity: 0.25}\n",
    ));
    let s = prune_of(&p, "rows");
    assert_eq!(s.pattern, Pattern::Rows);
    assert_eq!(s.sparsity.get(), 0.25);
    assert_eq!(
        s.method,
        PruneMethod::Magnitude {
            scope: Scope::Layer
        }
    );
}

#[test]
fn selections_parse_on_prune_and_quantize() {
    let p = ok(&with_base(
        "",
        r#"  p1: {kind: prune, model: base, method: magnitude, sparsity: 0.5, modules: attention, targets: ['layers\.[0-3]\.', "q_proj$"], ignore: ["layers\\.0\\."]}
  p2: {kind: prune, model: base, method: magnitude, sparsity: 0.5, modules: ffn}
  p3: {kind: prune, model: base, method: magnitude, sparsity: 0.5, modules: feed-forward, targets: 'down_proj'}
  q1: {kind: quantize, model: base, bits: 4, modules: lm_head, ignore: [x]}
  q2: {kind: quantize, model: base, bits: 4, modules: mlp}
  q3: {kind: quantize, model: base, bits: 4, modules: all, ignore: []}
"#,
    ));
    assert_eq!(
        prune_of(&p, "p1").selection,
        Selection {
            group: ModuleGroup::Attention,
            targets: regexes(&[r"layers\.[0-3]\.", "q_proj$"]),
            ignore: regexes(&[r"layers\.0\."]),
        }
    );
    assert_eq!(prune_of(&p, "p2").selection.group, ModuleGroup::Mlp);
    let p3 = prune_of(&p, "p3").selection;
    assert_eq!(
        (p3.group, p3.targets),
        (ModuleGroup::Mlp, regexes(&["down_proj"]))
    );
    let q1 = quant_of(&p, "q1").selection;
    assert_eq!(
        (q1.group, q1.ignore),
        (ModuleGroup::LmHead, regexes(&["x"]))
    );
    assert_eq!(quant_of(&p, "q2").selection.group, ModuleGroup::Mlp);
    assert_eq!(quant_of(&p, "q3").selection, Selection::default());
    // The default selection leaves the key as it was before selections existed.
    let q3 = StageSpec::Quantize(quant_of(&p, "q3")).key_params();
    assert!(!q3.contains_key("modules") && !q3.contains_key("ignore"));
}

fn regexes(patterns: &[&str]) -> Vec<NameRegex> {
    patterns
        .iter()
        .map(|p| NameRegex::new(p).unwrap())
        .collect()
}

#[test]
fn overrides_keep_file_order() {
    let p = ok(&with_base(
        "",
        "  p:
    kind: prune
    model: base
    method: magnitude
    sparsity: 0.5
    overrides:
      \"layers\\\\.1\\\\.\": 0.2
      'mlp': 0
      \"attn\": 0.75
",
    ));
    let o: Vec<(String, f64)> = prune_of(&p, "p")
        .overrides
        .iter()
        .map(|o| (o.pattern.as_str().to_string(), o.sparsity.get()))
        .collect();
    assert_eq!(
        o,
        [
            (r"layers\.1\.".to_string(), 0.2),
            ("mlp".to_string(), 0.0),
            ("attn".to_string(), 0.75)
        ]
    );
}

#[test]
fn every_quantize_method_parses_with_its_keys_and_defaults() {
    let p = ok(&with_base(
        "",
        "  calib: {kind: calibrate, model: base, dataset: stories, statistics: hessian}
  rtn: {kind: quantize, model: base, method: rtn, bits: 4, group_size: 64, symmetric: true, calibration: calib}
  g0: {kind: quantize, model: base, method: gptq, bits: 3, calibration: calib}
  g1: {kind: quantize, model: base, method: gptq, bits: 8, group_size: 128, symmetric: true, act_order: true, percdamp: 0.05, blocksize: 32, calibration: calib, calibration_mode: dense}
  d8: {kind: quantize, model: base, method: dynamic-int8, calibration: calib}
",
    ));
    let calib = at(1);
    assert_eq!(
        quant_of(&p, "rtn").method,
        QuantMethod::Rtn {
            bits: 4,
            group_size: Some(64),
            symmetric: true
        }
    );
    assert_eq!(
        quant_of(&p, "g0").method,
        QuantMethod::Gptq {
            bits: 3,
            group_size: None,
            symmetric: false,
            act_order: false,
            percdamp: 0.01,
            blocksize: 128,
            calibration: calib,
            mode: CalibrationMode::Sequential,
        }
    );
    assert_eq!(
        quant_of(&p, "g1").method,
        QuantMethod::Gptq {
            bits: 8,
            group_size: Some(128),
            symmetric: true,
            act_order: true,
            percdamp: 0.05,
            blocksize: 32,
            calibration: calib,
            mode: CalibrationMode::Dense,
        }
    );
    assert_eq!(quant_of(&p, "d8").method, QuantMethod::DynamicInt8);
    // rtn and dynamic-int8 ignore the calibration they were given; gptq reads it.
    let roles = |name: &str| -> Vec<String> {
        StageSpec::Quantize(quant_of(&p, name))
            .inputs()
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    };
    assert_eq!(roles("rtn"), ["model"]);
    assert_eq!(roles("d8"), ["model"]);
    assert_eq!(roles("g0"), ["model", "calibration"]);
}

#[test]
fn method_and_modules_sweep_through_interpolation() {
    let src = with_base(
        "sweep:\n  grid:\n    method: [magnitude, random, wanda, sparsegpt]\n    group: [attention, ffn]\n    q: [rtn, gptq, dynamic-int8]\n",
        "  calib: {kind: calibrate, model: base, dataset: stories, statistics: [norms, hessian]}
  pruned: {kind: prune, model: base, method: \"${method}\", modules: \"${group}\", sparsity: 0.5, calibration: calib, calibration_mode: dense}
  quant: {kind: quantize, model: base, method: \"${q}\", calibration: calib}
",
    );
    // dynamic-int8 takes no bits, and the others need them: bits cannot be written once for all
    // three, so this sweep must fail exactly there.
    let d = errs(&src);
    assert!(d.iter().all(|x| x.key_path == "stages.quant.bits"), "{d}");

    let src = src
        .replace("q: [rtn, gptq, dynamic-int8]", "q: [rtn, gptq]")
        .replace("calibration: calib}\n", "calibration: calib, bits: 4}\n");
    let p = ok(&src);
    let (_, pruned) = stage(&p, "pruned");
    assert_eq!(pruned.axes, ["method", "group"]);
    let got: Vec<(&str, ModuleGroup, Option<CalibrationMode>)> = pruned
        .instances
        .iter()
        .map(|i| {
            let s = prune_spec(i);
            (
                s.method.name(),
                s.selection.group,
                s.method.calibration().map(|(_, m)| m),
            )
        })
        .collect();
    let dense = Some(CalibrationMode::Dense);
    assert_eq!(
        got,
        [
            ("magnitude", ModuleGroup::Attention, None),
            ("magnitude", ModuleGroup::Mlp, None),
            ("random", ModuleGroup::Attention, None),
            ("random", ModuleGroup::Mlp, None),
            ("wanda", ModuleGroup::Attention, dense),
            ("wanda", ModuleGroup::Mlp, dense),
            ("sparsegpt", ModuleGroup::Attention, dense),
            ("sparsegpt", ModuleGroup::Mlp, dense),
        ]
    );
    let (_, quant) = stage(&p, "quant");
    let names: Vec<&str> = quant
        .instances
        .iter()
        .map(|i| match &i.spec {
            StageSpec::Quantize(q) => q.method.name(),
            _ => panic!("not quantize"),
        })
        .collect();
    assert_eq!(names, ["rtn", "gptq"]);
}

#[test]
fn errors_in_swept_compression_values_point_at_the_sweep() {
    // Line 9 is the `group:` axis; `atention` starts at column 24.
    let src = with_base(
        "sweep:\n  grid:\n    group: [attention, atention]\n",
        "  p: {kind: prune, model: base, method: magnitude, sparsity: 0.5, modules: \"${group}\"}\n",
    );
    let d = errs(&src);
    assert_eq!(d.len(), 1, "{d}");
    let x = &d.0[0];
    assert_eq!(
        (x.line, x.col, x.key_path.as_str()),
        (9, 24, "stages.p.modules")
    );
    assert!(
        x.message.contains("did you mean `attention`?")
            && x.message.contains("(value of sweep axis `group`"),
        "{x}"
    );
}

#[test]
fn dense_mode_checks_each_calibrate_instance_it_resolves_to() {
    // The calibrate stage records hessian at one point and norms only at the other: sparsegpt in
    // dense mode fails for the second only, at `calibration_mode`, naming what is recorded.
    let src = with_base(
        "sweep:\n  grid:\n    stat: [hessian, norms]\n",
        "  calib: {kind: calibrate, model: base, dataset: stories, statistics: \"${stat}\"}
  p: {kind: prune, model: base, method: sparsegpt, sparsity: 0.5, calibration: calib, calibration_mode: dense}
",
    );
    let d = errs(&src);
    assert_eq!(d.len(), 1, "{d}");
    let x = &d.0[0];
    assert_eq!(x.key_path, "stages.p.calibration_mode");
    assert!(
        x.message.contains(
            "sparsegpt with `calibration_mode: dense` reads the Hessian from `calib`, which records only [norms]"
        ),
        "{x}"
    );
    assert_eq!(
        x.help.as_deref(),
        Some("add `statistics: [norms, hessian]` to stage `calib`")
    );
    // Wanda reads norms: fine at the norms point, missing at the hessian one.
    let d = errs(&src.replace("sparsegpt", "wanda"));
    assert_eq!(d.len(), 1, "{d}");
    assert!(
        d.0[0]
            .message
            .contains("reads the input norms from `calib`, which records only [hessian]"),
        "{d}"
    );
    // Sequential mode reads the windows, not the statistics: no error.
    ok(&src.replace(", calibration_mode: dense", ""));
}

#[test]
fn windows_only_calibration_serves_sequential_methods_and_is_refused_for_dense() {
    let src = with_base(
        "",
        "  calib: {kind: calibrate, model: base, dataset: stories, statistics: []}
  p: {kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}
",
    );
    ok(&src);
    let d = errs(&src.replace(
        "calibration: calib",
        "calibration: calib, calibration_mode: dense",
    ));
    assert_eq!(d.len(), 1, "{d}");
    assert!(
        d.0[0].message.contains(
            "wanda with `calibration_mode: dense` reads the input norms from `calib`, which \
             records the windows only (`statistics: []`)"
        ),
        "{d}"
    );
    assert_eq!(
        d.0[0].help.as_deref(),
        Some("add `statistics: [norms]` to stage `calib`")
    );
}

#[test]
fn keys_of_other_methods_are_errors_naming_the_swept_method() {
    let src = with_base(
        "sweep:\n  grid:\n    method: [wanda, sparsegpt]\n",
        "  calib: {kind: calibrate, model: base, dataset: stories}
  p: {kind: prune, model: base, method: \"${method}\", sparsity: 0.5, calibration: calib, percdamp: 0.05}
",
    );
    let d = errs(&src);
    assert_eq!(d.len(), 1, "{d}");
    let x = &d.0[0];
    // At the key `percdamp`, on stage `p`'s line.
    assert_eq!(x.key_path, "stages.p.percdamp");
    assert_eq!((x.line, x.col), (13, 89));
    assert!(
        x.message.contains(
            "`percdamp` is only used by sparsegpt/gptq, not by wanda (method `wanda` from sweep axis `method`)"
        ),
        "{x}"
    );
}

#[test]
fn unknown_keys_are_suggested_among_the_new_ones() {
    let d = errs(&with_base(
        "",
        "  p: {kind: prune, model: base, method: magnitude, sparsity: 0.5, overide: {a: 0.1}}
  q: {kind: quantize, model: base, bits: 4, act_ordr: true}
  c: {kind: calibrate, model: base, dataset: stories, statistic: [norms]}
",
    ));
    let msgs: Vec<&str> = d.iter().map(|x| x.message.as_str()).collect();
    assert_eq!(msgs.len(), 3, "{d}");
    assert!(msgs[0].contains("did you mean `overrides`?"), "{d}");
    assert!(msgs[1].contains("did you mean `act_order`?"), "{d}");
    assert!(msgs[2].contains("did you mean `statistics`?"), "{d}");
}

#[test]
fn compression_key_mistakes_are_all_reported() {
    let d = errs(&with_base(
        "",
        r#"  c1: {kind: calibrate, model: base, dataset: stories, statistics: []}
  c2: {kind: calibrate, model: base, dataset: stories, statistics: [norms, hesian]}
  p1: {kind: prune, model: base, method: magnitude, sparsity: 0.5, seed: 3, targets: []}
  p2: {kind: prune, model: base, method: random, sparsity: 0.5, seed: -1, scope: layer}
  p3: {kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.5, overrides: {a: 0.1}}
  p4: {kind: prune, model: base, method: sparsegpt, sparsity: 0.5, calibration: c1, blocksize: 0, calibration_mode: lazy}
  p5: {kind: prune, model: base, method: magnitude, sparsity: 0.5, overrides: {"(": 0.1, b: x}, ignore: "["}
  q1: {kind: quantize, model: base, bits: 4, act_order: true}
  q2: {kind: quantize, model: base, method: dynamic-int8, act_order: false, symmetric: true, percdamp: 0.1}
  q3: {kind: quantize, model: base, method: gptq, calibration: c1}
"#,
    ));
    let got: Vec<(&str, &str)> = d
        .iter()
        .map(|x| (x.key_path.as_str(), x.message.as_str()))
        .collect();
    let expected = [
        (
            "stages.c2.statistics[1]",
            "found `hesian`; did you mean `hessian`?",
        ),
        (
            "stages.p1.seed",
            "`seed` is only used by random, not by magnitude",
        ),
        ("stages.p1.targets", "`targets` is empty"),
        ("stages.p2.seed", "expected an integer ≥ 0, found `-1`"),
        (
            "stages.p2.scope",
            "`scope` is only used by magnitude, not by random",
        ),
        (
            "stages.p3.overrides",
            "`overrides` cannot be used with `scope: global`",
        ),
        ("stages.p4.blocksize", "expected an integer ≥ 1, found `0`"),
        (
            "stages.p4.calibration_mode",
            "expected `sequential` or `dense`, found `lazy`",
        ),
        ("stages.p5.overrides.(", "invalid regex `(`: unclosed group"),
        (
            "stages.p5.overrides.b",
            "expected a number in [0, 1), found `x`",
        ),
        (
            "stages.p5.ignore",
            "invalid regex `[`: unclosed character class",
        ),
        (
            "stages.q1.act_order",
            "`act_order` is only used by gptq, not by rtn",
        ),
        (
            "stages.q2.act_order",
            "dynamic-int8 takes no `act_order`: weights are int8 per tensor",
        ),
        (
            "stages.q2.symmetric",
            "dynamic-int8 takes no `symmetric`: weights are int8 per tensor",
        ),
        (
            "stages.q2.percdamp",
            "`percdamp` is only used by sparsegpt/gptq, not by dynamic-int8",
        ),
        ("stages.q3.bits", "missing required key `bits`"),
    ];
    assert_eq!(got.len(), expected.len(), "{d}");
    for ((kp, msg), (ekp, frag)) in got.iter().zip(expected) {
        assert_eq!(*kp, ekp, "{d}");
        assert!(msg.contains(frag), "{msg:?} lacks {frag:?}");
    }
}

#[test]
fn tokenizer_semantics_enters_the_load_key_only_when_not_default() {
    let p = ok(&format!(
        "{HEAD}stages:\n  a: {{kind: load, model: tiny}}\n  b: {{kind: load, model: tiny, tokenizer_semantics: tokenizers}}\n  c: {{kind: load, model: tiny, tokenizer_semantics: transformers}}\n"
    ));
    let params = |name: &str| only_spec(&p, name).key_params();
    // The default leaves the key as it was before the setting existed.
    let mut before = crate::cache::key::Params::new();
    before.insert("dtype".into(), "f32".into());
    assert_eq!(params("a"), before);
    assert_eq!(params("b"), before);
    let mut c = before.clone();
    c.insert("tokenizer_semantics".into(), "transformers".into());
    assert_eq!(params("c"), c);
    let StageSpec::Load(l) = only_spec(&p, "c") else {
        panic!("not a load")
    };
    assert_eq!(
        l.tokenizer_semantics,
        crate::model::TokenizerSemantics::Transformers
    );
    let d = errs(&format!(
        "{HEAD}stages:\n  a: {{kind: load, model: tiny, tokenizer_semantics: transformer}}\n"
    ));
    let m = &d.0[0].message;
    assert!(
        m.contains("`tokenizers` or `transformers`") && m.contains("transformer"),
        "{d}"
    );
}

/// `name:` names the folder `reports/<name>/` that runs replace: it must not climb out.
#[test]
fn pipeline_name_cannot_leave_the_reports_folder() {
    for bad in [
        "../../victim",
        "/tmp/victim",
        "a/b",
        "a\\\\b",
        "..",
        ".hidden",
        "\"\"",
    ] {
        let src = format!("name: {bad}\n{HEAD}stages:\n  base: {{kind: load, model: tiny}}\n");
        let d = errs(&src);
        assert_eq!(d.len(), 1, "{bad}: {d}");
        let x = &d.0[0];
        assert_eq!(
            (x.line, x.col, x.key_path.as_str()),
            (1, 7, "name"),
            "{bad}: {d}"
        );
        assert!(x.message.contains("is not a plain folder name"), "{d}");
    }
    let p = ok(&format!(
        "name: wanda.v2_sweep-1\n{HEAD}stages:\n  base: {{kind: load, model: tiny}}\n"
    ));
    assert_eq!(p.name, "wanda.v2_sweep-1");
    // Stage, table and plot names become paths too (`reports/<pipeline>/<stage>/<table>.md`).
    let d = errs(&format!(
        "{HEAD}stages:\n  base: {{kind: load, model: tiny}}\n  ppl: {{kind: evaluate, model: base, task: perplexity, dataset: wiki}}\n  \"../up\": {{kind: report, inputs: [ppl], tables: [{{name: ../t}}], plots: [{{name: /p, x: ppl.ppl, y: ppl.ppl}}]}}\n"
    ));
    for frag in ["stage name `../up`", "table name `../t`", "plot name `/p`"] {
        assert!(d.iter().any(|x| x.message.contains(frag)), "{frag}: {d}");
    }
}

/// Without `name:`, the file stem is the name: `...yaml` would name `reports/..`.
#[test]
fn pipeline_name_from_the_file_stem_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("...yaml");
    let d = load_str(&path, "stages:\n  s: {kind: report, inputs: []}\n").unwrap_err();
    assert!(
        d.iter()
            .any(|x| x.key_path == "name" && x.message.contains("`..`")),
        "{d}"
    );
}

#[test]
fn tokenizer_semantics_transformers_on_a_class_it_cannot_rebuild_is_a_pipeline_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = dir.path().join("models/t5");
    std::fs::create_dir_all(&m).expect("mkdir");
    std::fs::write(m.join("config.json"), r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 512}"#).expect("write");
    std::fs::write(m.join("tokenizer.json"), "{}").expect("write");
    std::fs::write(m.join("model.safetensors"), "").expect("write");
    std::fs::write(
        m.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "GemmaTokenizer"}"#,
    )
    .expect("write");
    let path = dir.path().join("p.yaml");
    let src = "models:\n  t5: models/t5\nstages:\n  ok: {kind: load, model: t5}\n  hf: {kind: load, model: t5, tokenizer_semantics: transformers}\n";
    std::fs::write(&path, src).expect("write");
    let d = load(&path).expect_err("an unknown class");
    assert_eq!(d.len(), 1, "{d}");
    let x = &d.0[0];
    assert_eq!(
        (x.line, x.key_path.as_str()),
        (5, "stages.hf.tokenizer_semantics")
    );
    assert!(
        x.message.contains("GemmaTokenizer") && x.message.contains("tokenizer_config.json"),
        "{x}"
    );
}

#[test]
fn zip_accepts_repeated_values_within_an_axis() {
    let src = format!(
        "{HEAD}sweep:\n  zip:\n    - {{group: [all, attention, mlp, all], amount: [0.3, 0.5, 0.5, 0.4]}}\nstages:\n  base: {{kind: load, model: tiny}}\n  p: {{kind: prune, model: base, method: magnitude, sparsity: \"${{amount}}\", modules: \"${{group}}\"}}\n"
    );
    let (_dir, r) = load_in_env(&src);
    let p = r.unwrap_or_else(|d| panic!("{d}"));
    let (_, st) = stage(&p, "p");
    let pts: Vec<(String, f64)> = st
        .instances
        .iter()
        .map(|i| {
            let g = i.point["group"].to_string();
            let a = match i.point["amount"] {
                ParamValue::Float(x) => x,
                ref v => panic!("{v:?}"),
            };
            (g, a)
        })
        .collect();
    assert_eq!(
        pts,
        [
            ("all".to_string(), 0.3),
            ("attention".to_string(), 0.5),
            ("mlp".to_string(), 0.5),
            ("all".to_string(), 0.4)
        ]
    );
    // Whole tuples must still differ: position 3 repeats position 1.
    let d = errs(&format!(
        "{HEAD}sweep:\n  zip:\n    - {{group: [all, mlp, all], amount: [0.3, 0.5, 0.3]}}\nstages:\n  base: {{kind: load, model: tiny}}\n  p: {{kind: prune, model: base, method: magnitude, sparsity: \"${{amount}}\", modules: \"${{group}}\"}}\n"
    ));
    assert_eq!(d.len(), 1, "{d}");
    assert!(d.0[0].message.contains("repeats position 1"), "{d}");
    assert_eq!((d.0[0].line, d.0[0].col), (9, 26), "{d}");
}

#[test]
fn include_only_sweep_declares_its_axes() {
    let src = format!(
        "{HEAD}sweep:\n  include:\n    - {{method: magnitude, sparsity: 0.5}}\n    - {{method: wanda, sparsity: 0.6}}\nstages:\n  base: {{kind: load, model: tiny}}\n  calib: {{kind: calibrate, model: base, dataset: wiki}}\n  p: {{kind: prune, model: base, method: \"${{method}}\", sparsity: \"${{sparsity}}\", calibration: calib}}\n"
    );
    let p = ok(&src);
    assert_eq!(p.axes, ["method", "sparsity"]);
    let (_, st) = stage(&p, "p");
    assert_eq!(
        prune_points(st),
        [("magnitude".to_string(), 0.5), ("wanda".to_string(), 0.6)]
    );
    // A point missing an axis the others give is still an error.
    let d = errs(&format!(
        "{HEAD}sweep:\n  include:\n    - {{method: magnitude, sparsity: 0.5}}\n    - {{method: wanda}}\nstages:\n  base: {{kind: load, model: tiny}}\n  calib: {{kind: calibrate, model: base, dataset: wiki}}\n  p: {{kind: prune, model: base, method: \"${{method}}\", sparsity: \"${{sparsity}}\", calibration: calib}}\n"
    ));
    assert!(
        d.iter()
            .any(|x| x.message.contains("missing axis `sparsity`")),
        "{d}"
    );
}

#[test]
fn tab_error_points_at_the_line_with_the_tab() {
    // The scanner blamed the start of `load` on the line before the tab.
    let src = format!("{HEAD}stages:\n  base:\n    kind: load\n  \tmodel: tiny\n");
    let d = errs(&src);
    let tab_line = HEAD.lines().count() + 4;
    assert_eq!(d.len(), 1, "{d}");
    assert_eq!((d.0[0].line, d.0[0].col), (tab_line, 3), "{d}");
    assert!(d.0[0].message.contains("tab"), "{d}");
    // Where the position was already right, it stays.
    let d = errs(&format!("{HEAD}stages:\n\tbase: {{kind: load}}\n"));
    assert_eq!(
        (d.0[0].line, d.0[0].col),
        (HEAD.lines().count() + 2, 1),
        "{d}"
    );
}

#[test]
fn resources_are_read_per_stage_and_checked() {
    let p = ok(&format!(
        "{HEAD}stages:\n  base: {{kind: load, model: tiny, resources: {{local: true}}}}\n  pruned:\n    kind: prune\n    model: base\n    method: magnitude\n    sparsity: 0.5\n    resources: {{gpus: 1, cpus: 8, memory: 40G, time: 2h, partition: gpu}}\n"
    ));
    let (_, base) = stage(&p, "base");
    assert_eq!(base.resources.local, Some(true));
    let (_, pruned) = stage(&p, "pruned");
    assert_eq!(
        pruned.resources,
        Resources {
            gpus: Some(1),
            cpus: Some(8),
            memory: Some(40 << 30),
            time: Some(7200),
            partition: Some("gpu".into()),
            local: None,
        }
    );
    // Each mistake at its key and line, with what was expected.
    let line = HEAD.lines().count() + 4;
    let d = errs(&format!(
        "{HEAD}stages:\n  base:\n    kind: load\n    resources: {{gpus: one, tim: 2h, time: soon, memory: lots, cpus: 0, local: maybe}}\n    model: tiny\n"
    ));
    let at = |key: &str| {
        d.iter()
            .find(|x| x.key_path == format!("stages.base.resources.{key}"))
            .unwrap_or_else(|| panic!("no error at {key}: {d}"))
    };
    assert!(at("gpus").message.contains("whole number of GPUs"), "{d}");
    assert!(at("tim").message.contains("unknown key `tim`"), "{d}");
    assert!(at("tim").message.contains("did you mean `time`"), "{d}");
    assert!(
        at("time")
            .message
            .contains("expected a duration, found `soon`"),
        "{d}"
    );
    assert!(at("memory").message.contains("expected a size"), "{d}");
    assert!(at("cpus").message.contains("at least 1 CPU"), "{d}");
    assert!(at("local").message.contains("true or false"), "{d}");
    assert!(d.iter().all(|x| x.line == line), "{d}");
    // Sweep axes do not reach it: every instance asks for the same.
    let d = errs(&format!(
        "{HEAD}sweep:\n  grid:\n    s: [0.3, 0.5]\nstages:\n  base: {{kind: load, model: tiny, resources: {{time: \"${{s}}h\"}}}}\n"
    ));
    assert!(
        d.iter()
            .any(|x| x.message.contains("cannot use sweep axes")),
        "{d}"
    );
}
