//! Whole-file tests: valid pipelines and the instances they expand to.

use std::path::Path;

use super::spec::*;
use super::*;
use crate::cache::key::ParamValue;

/// A temp dir with a fake model and small data files, and the pipeline written into it.
fn load_in_env(src: &str) -> (tempfile::TempDir, Result<Pipeline, Diagnostics>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("models/tiny")).expect("mkdir");
    std::fs::create_dir_all(root.join("data")).expect("mkdir");
    std::fs::write(root.join("models/tiny/config.json"), "{}").expect("write");
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
            PruneMethod::Magnitude
        } else {
            PruneMethod::Wanda {
                calibration: InstanceRef {
                    stage: calib_i,
                    instance: 0,
                },
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
                limit: Some(40)
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
            let EvalTask::Perplexity { seqlen, join, .. } = &e.task;
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
            }
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
            limit: None
        }
    );
    assert_eq!(
        p.stages[0].instances[0].spec,
        StageSpec::Load(LoadSpec {
            model: "tiny".into(),
            dtype: DType::F32
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
