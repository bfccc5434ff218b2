//! One stage instance read into its typed spec: parameters substituted with the instance's axis
//! values, then type- and range-checked, references resolved to instances.

use std::collections::HashMap;

use crate::cache::key::ParamValue;

use super::diag::{one_of, suggest, Sink};
use super::interp::{self, Origin};
use super::schema::RawStage;
use super::spec::*;
use super::sweep::{projection_key, Sweep};
use super::yaml::{join, Node};

/// What checking an instance needs to know about the rest of the file.
pub struct Env<'a> {
    pub stages: &'a [RawStage],
    pub sweep: &'a Sweep,
    /// Per stage: the axes it uses.
    pub stage_axes: &'a [Vec<usize>],
    /// Per stage: projection key → instance index.
    pub instance_index: &'a [HashMap<String, usize>],
    /// Every declared model / dataset name.
    pub models: &'a [String],
    pub datasets: &'a [String],
}

struct Param {
    key: String,
    node: Node,
    origin: Origin,
    /// Uses an axis whose values could not be read: not checked.
    skip: bool,
}

struct Fields<'e, 's, 'src> {
    env: &'e Env<'e>,
    stage: &'e RawStage,
    point: &'e [Node],
    params: Vec<Param>,
    sink: &'s mut Sink<'src>,
    bad: bool,
}

const WEIGHTS: &str = "a stage that outputs weights (load, prune, quantize)";

impl Fields<'_, '_, '_> {
    fn path(&self, key: &str) -> String {
        join(&join("stages", &self.stage.name), key)
    }

    /// The parameter's value, if given and checkable.
    fn get(&mut self, key: &str) -> Option<(Node, Origin)> {
        let p = self.params.iter().find(|p| p.key == key)?;
        if p.skip {
            self.bad = true;
            return None;
        }
        Some((p.node.clone(), p.origin.clone()))
    }

    fn has(&self, key: &str) -> bool {
        self.params.iter().any(|p| p.key == key)
    }

    fn missing(&mut self, key: &str, help: &str) {
        self.bad = true;
        let (name, kind) = (&self.stage.name, self.stage.kind);
        let kind = kind.map_or("", StageKind::as_str);
        let path = self.path(key);
        self.sink
            .error(
                self.stage.mark,
                path,
                format!("{kind} stage `{name}` is missing required key `{key}`"),
            )
            .with_help(help);
    }

    /// Reports a bad value; says where a substituted value came from.
    fn fail(
        &mut self,
        key: &str,
        node: &Node,
        origin: &Origin,
        msg: String,
        expected: Option<&str>,
        help: Option<String>,
    ) {
        self.bad = true;
        let path = self.path(key);
        let msg = match origin {
            Origin::Literal => msg,
            Origin::Axis(a) => format!("{msg} (value of sweep axis `{a}`, used by `{path}`)"),
            Origin::Spliced => format!("{msg} (after substituting sweep axes in `{path}`)"),
        };
        let d = self.sink.error(node.mark, path, msg);
        if let Some(e) = expected {
            d.with_expected(e);
        }
        if let Some(h) = help {
            d.with_help(h);
        }
    }

    fn int(&mut self, key: &str, lo: i64, hi: i64, expected: &str) -> Option<i64> {
        let (n, o) = self.get(key)?;
        match n.value() {
            Some(ParamValue::Int(i)) if (lo..=hi).contains(&i) => Some(i),
            _ => {
                let msg = format!("expected {expected}, found {}", n.describe());
                self.fail(key, &n, &o, msg, Some(expected), None);
                None
            }
        }
    }

    fn req_int(&mut self, key: &str, lo: i64, hi: i64, expected: &str) -> Option<i64> {
        if !self.has(key) {
            self.missing(key, &format!("add `{key}:` with {expected}"));
            return None;
        }
        self.int(key, lo, hi, expected)
    }

    fn count(&mut self, key: &str, min: i64, default: usize) -> usize {
        let expected = format!("an integer ≥ {min}");
        self.int(key, min, i64::MAX, &expected)
            .map_or(default, |i| i as usize)
    }

    fn text(&mut self, key: &str, what: &str) -> Option<String> {
        let (n, o) = self.get(key)?;
        match n.as_scalar() {
            Some((s, _)) if !n.is_null() => Some(s.to_string()),
            _ => {
                let msg = format!("expected {what}, found {}", n.describe());
                self.fail(key, &n, &o, msg, Some(what), None);
                None
            }
        }
    }

    fn choice(&mut self, key: &str, options: &[&'static str]) -> Option<&'static str> {
        let (n, o) = self.get(key)?;
        let expected = one_of(options);
        if let Some(ParamValue::Str(s)) = n.value() {
            if let Some(hit) = options.iter().find(|c| **c == s) {
                return Some(hit);
            }
        }
        let found = n
            .as_scalar()
            .map(|(s, _)| s.to_string())
            .unwrap_or_default();
        let s = suggest(&found, options.iter().copied());
        let msg = format!("expected {expected}, found {}{s}", n.describe());
        self.fail(key, &n, &o, msg, Some(&expected), None);
        None
    }

    fn req_choice(&mut self, key: &str, options: &[&'static str]) -> Option<&'static str> {
        if !self.has(key) {
            self.missing(key, &format!("add `{key}:` with {}", one_of(options)));
            return None;
        }
        self.choice(key, options)
    }

    fn name_in(&mut self, key: &str, declared: &[String], section: &str) -> Option<String> {
        if !self.has(key) {
            self.missing(
                key,
                &format!("add `{key}:` naming an entry of `{section}:`"),
            );
            return None;
        }
        let (n, o) = self.get(key)?;
        let name = self.text(key, &format!("a name from `{section}:`"))?;
        if declared.contains(&name) {
            return Some(name);
        }
        let s = suggest(&name, declared.iter().map(String::as_str));
        let what = section.trim_end_matches('s');
        let help = if self.env.stages.iter().any(|st| st.name == name) {
            Some(format!(
                "`{name}` is a stage; `{key}:` of a {} stage names an entry of `{section}:`",
                self.stage.kind.map_or("", StageKind::as_str)
            ))
        } else if declared.is_empty() {
            Some(format!("declare it under `{section}:`"))
        } else {
            Some(format!(
                "declared {section}: {}",
                one_of(&declared.iter().map(String::as_str).collect::<Vec<_>>())
            ))
        };
        self.fail(
            key,
            &n,
            &o,
            format!("unknown {what} `{name}`{s}"),
            None,
            help,
        );
        None
    }

    /// A reference to another stage, resolved to the instance matching this one's point.
    fn stage_ref(
        &mut self,
        key: &str,
        node: &Node,
        origin: &Origin,
        accept: &dyn Fn(StageKind) -> bool,
        want: &str,
    ) -> Option<InstanceRef> {
        let name = match node.as_scalar() {
            Some((s, _)) if !node.is_null() => s.to_string(),
            _ => {
                let msg = format!("expected a stage name, found {}", node.describe());
                self.fail(key, node, origin, msg, Some("a stage name"), None);
                return None;
            }
        };
        let Some(j) = self.env.stages.iter().position(|s| s.name == name) else {
            let s = suggest(&name, self.env.stages.iter().map(|s| s.name.as_str()));
            let help = self.env.models.contains(&name).then(|| {
                format!(
                    "`{name}` is a model; load it with a `kind: load` stage and name that stage"
                )
            });
            self.fail(
                key,
                node,
                origin,
                format!("unknown stage `{name}`{s}"),
                None,
                help,
            );
            return None;
        };
        let target = &self.env.stages[j];
        // A stage whose kind is unreadable was reported already.
        let kind = target.kind.or_else(|| {
            self.bad = true;
            None
        })?;
        if !accept(kind) {
            let field = key.split('[').next().unwrap_or(key);
            let msg = format!(
                "`{field}:` of stage `{}` must name {want}; `{name}` is a {kind} stage",
                self.stage.name
            );
            self.fail(key, node, origin, msg, None, None);
            return None;
        }
        let pk = projection_key(self.point, &self.env.stage_axes[j]);
        match self.env.instance_index[j].get(&pk) {
            Some(&instance) => Some(InstanceRef { stage: j, instance }),
            None => {
                // Only possible when the graph is broken (a cycle), which is reported.
                self.bad = true;
                None
            }
        }
    }

    fn req_ref(
        &mut self,
        key: &str,
        accept: &dyn Fn(StageKind) -> bool,
        want: &str,
    ) -> Option<InstanceRef> {
        if !self.has(key) {
            self.missing(key, &format!("add `{key}:` naming {want}"));
            return None;
        }
        let (n, o) = self.get(key)?;
        self.stage_ref(key, &n, &o, accept, want)
    }

    fn model_ref(&mut self) -> Option<InstanceRef> {
        self.req_ref(
            "model",
            &|k| matches!(k, StageKind::Load | StageKind::Prune | StageKind::Quantize),
            WEIGHTS,
        )
    }
}

/// Checks one instance (given by a full sweep point); `None` if anything was wrong (reported).
pub fn check(env: &Env, si: usize, point: &[Node], sink: &mut Sink) -> Option<StageSpec> {
    let stage = &env.stages[si];
    let kind = stage.kind?;
    let params = stage
        .params
        .iter()
        .map(|(key, _, raw)| {
            let mut used = Vec::new();
            interp::axes_in(raw, &mut used);
            // Unknown or unreadable axes were reported; their placeholders are not checked.
            let skip = !interp::well_formed(raw)
                || used
                    .iter()
                    .any(|(a, _)| env.sweep.axis_index(a).is_none_or(|i| env.sweep.broken[i]));
            let lookup = |a: &str| env.sweep.axis_index(a).map(|i| &point[i]);
            let (node, origin) = interp::substitute(raw, &lookup);
            Param {
                key: key.clone(),
                node,
                origin,
                skip,
            }
        })
        .collect();
    let mut f = Fields {
        env,
        stage,
        point,
        params,
        sink,
        bad: false,
    };
    let spec = match kind {
        StageKind::Load => load(&mut f),
        StageKind::Calibrate => calibrate(&mut f),
        StageKind::Prune => prune(&mut f),
        StageKind::Quantize => quantize(&mut f),
        StageKind::Evaluate => evaluate(&mut f),
        StageKind::Report => report(&mut f),
    };
    if f.bad {
        None
    } else {
        spec
    }
}

fn load(f: &mut Fields) -> Option<StageSpec> {
    let model = f.name_in("model", f.env.models, "models");
    let dtype = match f.choice("dtype", &["f32", "f16", "bf16"]) {
        Some("f16") => DType::F16,
        Some("bf16") => DType::Bf16,
        _ => DType::F32,
    };
    Some(StageSpec::Load(LoadSpec {
        model: model?,
        dtype,
    }))
}

fn calibrate(f: &mut Fields) -> Option<StageSpec> {
    let model = f.model_ref();
    let dataset = f.name_in("dataset", f.env.datasets, "datasets");
    let samples = f.count("samples", 1, 128);
    let seqlen = f.count("seqlen", 2, 2048);
    let sampling = match f.choice("sampling", &["random", "contiguous"]) {
        Some("contiguous") => Sampling::Contiguous,
        _ => Sampling::Random,
    };
    let seed = f.count("seed", 0, 0) as u64;
    Some(StageSpec::Calibrate(CalibrateSpec {
        model: model?,
        dataset: dataset?,
        samples,
        seqlen,
        sampling,
        seed,
        statistics: vec![Statistic::Norms],
    }))
}

/// `unstructured` or `N:M` with 0 < N < M.
fn pattern(f: &mut Fields) -> Option<Pattern> {
    let (n, o) = f.get("pattern")?;
    let expected = "`unstructured` or `N:M` (e.g. `2:4`)";
    let text = match n.value() {
        Some(ParamValue::Str(s)) => s,
        _ => {
            let msg = format!("expected {expected}, found {}", n.describe());
            f.fail("pattern", &n, &o, msg, Some(expected), None);
            return None;
        }
    };
    if text == "unstructured" {
        return Some(Pattern::Unstructured);
    }
    let parsed = text.split_once(':').and_then(|(a, b)| {
        Some((
            a.trim().parse::<usize>().ok()?,
            b.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((nn, m)) if nn > 0 && nn < m => Some(Pattern::NM { n: nn, m }),
        Some((nn, m)) => {
            let msg = format!("pattern `{text}` needs 0 < N < M, found N = {nn}, M = {m}");
            let help = Some(format!(
                "N:M zeroes N of every M weights; e.g. `2:4`{}",
                if m > 0 && m < nn {
                    format!(" (did you mean `{m}:{nn}`?)")
                } else {
                    String::new()
                }
            ));
            f.fail("pattern", &n, &o, msg, Some(expected), help);
            None
        }
        None => {
            let s = suggest(&text, ["unstructured"]);
            let msg = format!("expected {expected}, found {}{s}", n.describe());
            f.fail("pattern", &n, &o, msg, Some(expected), None);
            None
        }
    }
}

fn prune(f: &mut Fields) -> Option<StageSpec> {
    let model = f.model_ref();
    let method = f.req_choice("method", &["magnitude", "wanda"]);
    let pattern = if f.has("pattern") {
        pattern(f)
    } else {
        Some(Pattern::Unstructured)
    };
    let sparsity_expected = "a number in [0, 1)";
    let sparsity = match f.get("sparsity") {
        None if !f.has("sparsity") => match pattern {
            Some(Pattern::Rows) => None,
            Some(Pattern::NM { n, m }) => Sparsity::new(n as f64 / m as f64),
            Some(Pattern::Unstructured) => {
                f.missing(
                    "sparsity",
                    "add `sparsity:` with the fraction of weights to zero",
                );
                None
            }
            None => None,
        },
        None => None,
        Some((n, o)) => {
            let x = match n.value() {
                Some(ParamValue::Float(x)) => Some(x),
                Some(ParamValue::Int(i)) => Some(i as f64),
                _ => None,
            };
            match x.and_then(Sparsity::new) {
                None => {
                    let msg = format!("expected {sparsity_expected}, found {}", n.describe());
                    let help = x
                        .filter(|x| (1.0..=100.0).contains(x))
                        .map(|_| "sparsity is a fraction: write 0.5 for 50%".to_string());
                    f.fail("sparsity", &n, &o, msg, Some(sparsity_expected), help);
                    None
                }
                Some(s) => match pattern {
                    Some(Pattern::NM { n: pn, m })
                        if (s.get() - pn as f64 / m as f64).abs() > 1e-9 =>
                    {
                        let implied = pn as f64 / m as f64;
                        let msg = format!(
                            "sparsity {} does not match pattern `{pn}:{m}`, which prunes {implied}",
                            s.get()
                        );
                        let help = Some("leave `sparsity` out with an N:M pattern".to_string());
                        f.fail("sparsity", &n, &o, msg, None, help);
                        None
                    }
                    _ => Some(s),
                },
            }
        }
    };
    // Validated whatever the method; only wanda keeps it.
    let calibration = match f.get("calibration") {
        Some((n, o)) => f.stage_ref(
            "calibration",
            &n,
            &o,
            &|k| k == StageKind::Calibrate,
            "a calibrate stage",
        ),
        None => None,
    };
    let method = match method? {
        "wanda" => {
            if !f.has("calibration") {
                f.bad = true;
                let path = f.path("calibration");
                let calibs: Vec<&str> = f
                    .env
                    .stages
                    .iter()
                    .filter(|s| s.kind == Some(StageKind::Calibrate))
                    .map(|s| s.name.as_str())
                    .collect();
                let help = match calibs.first() {
                    Some(c) => format!("add `calibration: {c}` (wanda scales weights by input activation norms)"),
                    None => "add a `kind: calibrate` stage and name it in `calibration:` (wanda scales weights by input activation norms)".to_string(),
                };
                f.sink
                    .error(
                        f.stage.mark,
                        path,
                        format!("wanda needs `calibration:` (stage `{}`)", f.stage.name),
                    )
                    .with_help(help);
                return None;
            }
            PruneMethod::Wanda {
                calibration: calibration?,
                mode: CalibrationMode::Sequential,
            }
        }
        _ => PruneMethod::Magnitude {
            scope: Scope::Layer,
        },
    };
    Some(StageSpec::Prune(PruneSpec {
        model: model?,
        method,
        sparsity: sparsity?,
        pattern: pattern?,
        selection: Selection::default(),
        overrides: Vec::new(),
    }))
}

fn quantize(f: &mut Fields) -> Option<StageSpec> {
    let model = f.model_ref();
    f.choice("method", &["rtn"]);
    let bits = f.req_int("bits", 2, 8, "an integer from 2 to 8");
    let group_size = match f.get("group_size") {
        None => None,
        Some((n, o)) => match n.value() {
            Some(ParamValue::Int(-1)) => None,
            Some(ParamValue::Int(g)) if g >= 1 => Some(g as usize),
            _ => {
                let e = "an integer ≥ 1, or -1 for per-channel";
                let msg = format!("expected {e}, found {}", n.describe());
                f.fail("group_size", &n, &o, msg, Some(e), None);
                None
            }
        },
    };
    let symmetric = match f.get("symmetric") {
        None => false,
        Some((n, o)) => match n.value() {
            Some(ParamValue::Bool(b)) => b,
            _ => {
                let msg = format!("expected `true` or `false`, found {}", n.describe());
                f.fail("symmetric", &n, &o, msg, Some("`true` or `false`"), None);
                false
            }
        },
    };
    Some(StageSpec::Quantize(QuantizeSpec {
        model: model?,
        method: QuantMethod::Rtn {
            bits: bits? as u32,
            group_size,
            symmetric,
        },
        selection: Selection::default(),
    }))
}

fn evaluate(f: &mut Fields) -> Option<StageSpec> {
    let model = f.model_ref();
    let task = f.req_choice("task", &["perplexity"]);
    let dataset = f.name_in("dataset", f.env.datasets, "datasets");
    let seqlen = f.count("seqlen", 2, 2048);
    let join = f.text("join", "a string").unwrap_or_else(|| "\n\n".into());
    let limit = f
        .int("limit", 1, i64::MAX, "an integer ≥ 1")
        .map(|l| l as usize);
    let batch_size = f.count("batch_size", 1, 8);
    task?;
    Some(StageSpec::Evaluate(EvaluateSpec {
        model: model?,
        task: EvalTask::Perplexity {
            dataset: dataset?,
            seqlen,
            join,
            limit,
        },
        batch_size,
    }))
}

fn report(f: &mut Fields) -> Option<StageSpec> {
    let mut inputs = Vec::new();
    if !f.has("inputs") {
        f.missing(
            "inputs",
            "add `inputs: [<stage>, …]` listing the stages to report",
        );
    } else if let Some((n, o)) = f.get("inputs") {
        match n.as_seq() {
            Some([]) => {
                let msg = "`inputs` is empty".to_string();
                f.fail(
                    "inputs",
                    &n,
                    &o,
                    msg,
                    Some("a non-empty list of stage names"),
                    None,
                );
            }
            Some(items) => {
                let mut seen: Vec<String> = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let key = format!("inputs[{i}]");
                    if let Some((s, _)) = item.as_scalar() {
                        if seen.iter().any(|x| x == s) {
                            let msg = format!("stage `{s}` is listed twice in `inputs`");
                            f.fail(&key, item, &o, msg, None, None);
                            continue;
                        }
                        seen.push(s.to_string());
                    }
                    let r = f.stage_ref(
                        &key,
                        item,
                        &o,
                        &|k| k != StageKind::Report,
                        "a stage that is not a report",
                    );
                    if let Some(r) = r {
                        let count = f.env.instance_index[r.stage].len();
                        inputs.extend((0..count).map(|instance| InstanceRef {
                            stage: r.stage,
                            instance,
                        }));
                    }
                }
            }
            None => {
                let msg = format!("expected a list of stage names, found {}", n.describe());
                f.fail("inputs", &n, &o, msg, Some("a list of stage names"), None);
            }
        }
    }
    let mut formats = Vec::new();
    match f.get("formats") {
        None => {
            formats = vec![
                ReportFormat::Csv,
                ReportFormat::Markdown,
                ReportFormat::Jsonl,
            ]
        }
        Some((n, o)) => match n.as_seq() {
            Some(items) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("formats[{i}]");
                    let fmt = match item.value() {
                        Some(ParamValue::Str(s)) if s == "csv" => Some(ReportFormat::Csv),
                        Some(ParamValue::Str(s)) if s == "md" => Some(ReportFormat::Markdown),
                        Some(ParamValue::Str(s)) if s == "jsonl" => Some(ReportFormat::Jsonl),
                        _ => None,
                    };
                    match fmt {
                        Some(x) if formats.contains(&x) => {
                            let msg = format!("format `{}` is listed twice", x.as_str());
                            f.fail(&key, item, &o, msg, None, None);
                        }
                        Some(x) => formats.push(x),
                        None => {
                            let found = item.as_scalar().map_or("", |(s, _)| s);
                            let s = suggest(found, ["csv", "md", "jsonl"]);
                            let msg = format!(
                                "expected `csv`, `md` or `jsonl`, found {}{s}",
                                item.describe()
                            );
                            f.fail(&key, item, &o, msg, Some("`csv`, `md` or `jsonl`"), None);
                        }
                    }
                }
            }
            _ => {
                let e = "a non-empty list of `csv`, `md`, `jsonl`";
                let msg = format!("expected {e}, found {}", n.describe());
                f.fail("formats", &n, &o, msg, Some(e), None);
            }
        },
    }
    Some(StageSpec::Report(ReportSpec { inputs, formats }))
}
