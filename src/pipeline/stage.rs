//! One stage instance read into its typed spec: parameters substituted with the instance's axis
//! values, then type- and range-checked, references resolved to instances. The compression
//! stages (prune, quantize) and their methods are read in [`compress`].

use std::collections::HashMap;

use crate::cache::key::ParamValue;

use super::diag::{one_of, suggest, Sink};
use super::interp::{self, Origin};
use super::schema::RawStage;
use super::spec::*;
use super::sweep::{projection_key, Sweep};
use super::yaml::{join, Mark, Node, NodeKind};

mod compress;
mod evaluate;
mod report;

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
    /// The models that passed their checks.
    pub model_sources: &'a std::collections::BTreeMap<String, ModelSource>,
    pub datasets: &'a [String],
    /// The datasets that passed their checks.
    pub dataset_sources: &'a std::collections::BTreeMap<String, DatasetSource>,
    /// The pipeline file's directory: relative paths resolve against it.
    pub base: &'a std::path::Path,
}

struct Param {
    key: String,
    /// Where the key is written, for "key not allowed here" errors.
    key_mark: Mark,
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

const WEIGHTS: &str = "a stage that outputs weights (load, train, prune, quantize)";

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

    /// Reports a key that is not allowed here (at the key, whatever its value).
    fn fail_key(&mut self, key: &str, msg: String, help: String) {
        self.bad = true;
        let Some(mark) = self
            .params
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.key_mark)
        else {
            return;
        };
        let path = self.path(key);
        self.sink.error(mark, path, msg).with_help(help);
    }

    /// The items of a list parameter (see [`list_items`]).
    fn items(&mut self, key: &str, what: &str) -> Option<Vec<(Node, Origin)>> {
        self.get(key)?;
        let raw = self.stage.param(key)?;
        match list_items(self.env, raw, self.point) {
            Ok(items) => Some(items),
            Err((n, o)) => {
                let msg = format!("expected {what}, found {}", n.describe());
                self.fail(key, &n, &o, msg, Some(what), None);
                None
            }
        }
    }

    /// The entries of a map parameter in file order, each value substituted on its own.
    fn map_entries(&mut self, key: &str, what: &str) -> Option<Vec<(Node, Node, Origin)>> {
        let (n, o) = self.get(key)?;
        let raw = self.stage.param(key)?;
        match raw.as_map() {
            Some(es) => Some(
                es.iter()
                    .map(|(k, v)| {
                        let (v, o) = substitute(self.env, v, self.point);
                        (k.clone(), v, o)
                    })
                    .collect(),
            ),
            None => {
                let msg = format!("expected {what}, found {}", n.describe());
                self.fail(key, &n, &o, msg, Some(what), None);
                None
            }
        }
    }

    /// A number satisfying `ok` (integers are accepted as numbers).
    fn number(&mut self, key: &str, ok: &dyn Fn(f64) -> bool, expected: &str) -> Option<f64> {
        let (n, o) = self.get(key)?;
        match number_of(&n) {
            Some(x) if ok(x) => Some(x),
            _ => {
                let msg = format!("expected {expected}, found {}", n.describe());
                self.fail(key, &n, &o, msg, Some(expected), None);
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        let (n, o) = self.get(key)?;
        match n.value() {
            Some(ParamValue::Bool(b)) => Some(b),
            _ => {
                let msg = format!("expected `true` or `false`, found {}", n.describe());
                self.fail(key, &n, &o, msg, Some("`true` or `false`"), None);
                None
            }
        }
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
            &|k| {
                matches!(
                    k,
                    StageKind::Load | StageKind::Train | StageKind::Prune | StageKind::Quantize
                )
            },
            WEIGHTS,
        )
    }
}

/// A YAML number as f64 (integers included).
fn number_of(n: &Node) -> Option<f64> {
    match n.value() {
        Some(ParamValue::Float(x)) => Some(x),
        Some(ParamValue::Int(i)) => Some(i as f64),
        _ => None,
    }
}

/// Whether a raw parameter can be substituted and checked: unknown or unreadable axes were
/// reported, and their placeholders are not checked.
fn checkable(env: &Env, raw: &Node) -> bool {
    let mut used = Vec::new();
    interp::axes_in(raw, &mut used);
    interp::well_formed(raw)
        && !used
            .iter()
            .any(|(a, _)| env.sweep.axis_index(a).is_none_or(|i| env.sweep.broken[i]))
}

/// A raw parameter with the point's axis values substituted.
fn substitute(env: &Env, raw: &Node, point: &[Node]) -> (Node, Origin) {
    let lookup = |a: &str| env.sweep.axis_index(a).map(|i| &point[i]);
    interp::substitute(raw, &lookup)
}

/// The items of a list parameter, each substituted on its own so that an error in an item taken
/// from a sweep axis points at the axis value. A single value stands for a one-item list (so that
/// `targets: ${t}` works, sweep values being scalars). `Err`: the value, neither.
fn list_items(
    env: &Env,
    raw: &Node,
    point: &[Node],
) -> Result<Vec<(Node, Origin)>, (Node, Origin)> {
    if let Some(items) = raw.as_seq() {
        return Ok(items.iter().map(|i| substitute(env, i, point)).collect());
    }
    let (n, o) = substitute(env, raw, point);
    if matches!(n.kind, NodeKind::Scalar(..)) && !n.is_null() {
        Ok(vec![(n, o)])
    } else {
        Err((n, o))
    }
}

/// Checks one instance (given by a full sweep point); `None` if anything was wrong (reported).
pub fn check(env: &Env, si: usize, point: &[Node], sink: &mut Sink) -> Option<StageSpec> {
    let stage = &env.stages[si];
    let kind = stage.kind?;
    let params = stage
        .params
        .iter()
        .map(|(key, key_mark, raw)| {
            let (node, origin) = substitute(env, raw, point);
            Param {
                key: key.clone(),
                key_mark: *key_mark,
                node,
                origin,
                skip: !checkable(env, raw),
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
        StageKind::Train => train(&mut f),
        StageKind::Calibrate => calibrate(&mut f),
        StageKind::Prune => compress::prune(&mut f),
        StageKind::Quantize => compress::quantize(&mut f),
        StageKind::Evaluate => evaluate::evaluate(&mut f),
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
    let tokenizer_semantics = f
        .choice(
            "tokenizer_semantics",
            &crate::model::TokenizerSemantics::NAMES,
        )
        .and_then(crate::model::TokenizerSemantics::from_name)
        .unwrap_or_default();
    // A tokenizer class the transformers reading cannot rebuild is a pipeline error, not a
    // failure at run time.
    let source = model.as_ref().and_then(|m| f.env.model_sources.get(m));
    if let (crate::model::TokenizerSemantics::Transformers, Some(source)) =
        (tokenizer_semantics, source)
    {
        if let Err(e) = crate::model::check_transformers_class(&source.dir) {
            f.fail_key(
                "tokenizer_semantics",
                format!("model `{}`: {e}", source.name),
                "`transformers` knows LlamaTokenizer and GPT2Tokenizer; leave the key out to \
                 read tokenizer.json as the `tokenizers` library does"
                    .into(),
            );
        }
    }
    Some(StageSpec::Load(LoadSpec {
        model: model?,
        dtype,
        tokenizer_semantics,
    }))
}

/// Every training setting has the quickstart's default; each given one is range-checked.
fn train(f: &mut Fields) -> Option<StageSpec> {
    let dataset = f.name_in("dataset", f.env.datasets, "datasets");
    let vocabulary = match f.has("vocabulary") {
        true => Some(f.name_in("vocabulary", f.env.datasets, "datasets")?),
        false => None,
    };
    let d = crate::train::TrainConfig::default();
    let mut c = d.clone();
    c.dim = f.count("dim", 8, d.dim);
    c.layers = f.count("layers", 1, d.layers);
    c.heads = f.count("heads", 1, d.heads);
    c.kv_heads = f.count("kv_heads", 1, d.kv_heads);
    c.hidden = f.count("hidden", 1, d.hidden);
    c.seqlen = f.count("seqlen", 2, d.seqlen);
    c.batch = f.count("batch", 1, d.batch);
    c.steps = f.count("steps", 1, d.steps);
    c.warmup = f.count("warmup", 0, d.warmup);
    c.seed = f.count("seed", 0, d.seed as usize) as u64;
    c.lr = f
        .number("lr", &|x| x > 0.0 && x < 1.0, "a number in (0, 1)")
        .unwrap_or(d.lr);
    c.weight_decay = f
        .number(
            "weight_decay",
            &|x| (0.0..1.0).contains(&x),
            "a number in [0, 1)",
        )
        .unwrap_or(d.weight_decay);
    if c.heads % c.kv_heads != 0 || c.dim % c.heads != 0 {
        let help = format!(
            "`dim` ({}) must divide by `heads` ({}), and `heads` by `kv_heads` ({})",
            c.dim, c.heads, c.kv_heads
        );
        f.fail_key("heads", "the attention heads do not fit".into(), help);
        return None;
    }
    Some(StageSpec::Train(TrainSpec {
        dataset: dataset?,
        vocabulary,
        config: c,
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
    let statistics = compress::statistics(f);
    let accumulation = match f.choice("accumulation", &["exact", "reference"]) {
        Some("reference") => Accumulation::Reference,
        _ => Accumulation::Exact,
    };
    Some(StageSpec::Calibrate(CalibrateSpec {
        model: model?,
        dataset: dataset?,
        samples,
        seqlen,
        sampling,
        seed,
        statistics,
        accumulation,
    }))
}

fn report(f: &mut Fields) -> Option<StageSpec> {
    let mut inputs = Vec::new();
    let mut stages = report::Inputs {
        written: Vec::new(),
        stages: Vec::new(),
    };
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
                        let axes = f.env.stage_axes[r.stage]
                            .iter()
                            .map(|&a| f.env.sweep.axes[a].name.clone())
                            .collect();
                        stages
                            .stages
                            .push((f.env.stages[r.stage].name.clone(), axes));
                    }
                }
                stages.written = seen;
            }
            None => {
                let msg = format!("expected a list of stage names, found {}", n.describe());
                f.fail("inputs", &n, &o, msg, Some("a list of stage names"), None);
            }
        }
    }
    let names: Vec<&str> = ReportFormat::ALL.iter().map(|x| x.as_str()).collect();
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
                        Some(ParamValue::Str(s)) => {
                            ReportFormat::ALL.into_iter().find(|x| x.as_str() == s)
                        }
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
                            let s = suggest(found, names.iter().copied());
                            let expected = one_of(&names);
                            let msg = format!("expected {expected}, found {}{s}", item.describe());
                            f.fail(&key, item, &o, msg, Some(&expected), None);
                        }
                    }
                }
            }
            _ => {
                let e = format!("a non-empty list of {}", one_of(&names));
                let msg = format!("expected {e}, found {}", n.describe());
                f.fail("formats", &n, &o, msg, Some(&e), None);
            }
        },
    }
    let (tables, plots) = report::tables_and_plots(f, &stages);
    Some(StageSpec::Report(ReportSpec {
        inputs,
        formats,
        tables,
        plots,
    }))
}
