//! Field accessors for stage readers: one stage instance's parameters, substituted with the
//! instance's axis values, read as typed values with every problem reported at its key and line,
//! and references resolved to instances. Each stage kind reads its own keys with these
//! (`stages/<kind>/read.rs`).

use std::collections::HashMap;

use crate::cache::key::ParamValue;

use super::diag::{one_of, suggest, Sink};
use super::interp::{self, Origin};
use super::schema::RawStage;
use super::spec::{DatasetSource, InstanceRef, ModelSource, StageKind, StageSpec};
use super::sweep::{projection_key, Sweep};
use super::yaml::{join, Mark, Node, NodeKind};

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

pub(crate) struct Param {
    pub(crate) key: String,
    /// Where the key is written, for "key not allowed here" errors.
    pub(crate) key_mark: Mark,
    pub(crate) node: Node,
    pub(crate) origin: Origin,
    /// Uses an axis whose values could not be read: not checked.
    pub(crate) skip: bool,
}

pub struct Fields<'e, 's, 'src> {
    pub(crate) env: &'e Env<'e>,
    pub(crate) stage: &'e RawStage,
    pub(crate) point: &'e [Node],
    pub(crate) params: Vec<Param>,
    pub(crate) sink: &'s mut Sink<'src>,
    pub(crate) bad: bool,
}

pub(crate) const WEIGHTS: &str = "a stage that outputs weights (load, train, prune, quantize)";

impl Fields<'_, '_, '_> {
    pub(crate) fn path(&self, key: &str) -> String {
        join(&join("stages", &self.stage.name), key)
    }

    /// The parameter's value, if given and checkable.
    pub(crate) fn get(&mut self, key: &str) -> Option<(Node, Origin)> {
        let p = self.params.iter().find(|p| p.key == key)?;
        if p.skip {
            self.bad = true;
            return None;
        }
        Some((p.node.clone(), p.origin.clone()))
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.params.iter().any(|p| p.key == key)
    }

    /// Reports a key that is not allowed here (at the key, whatever its value).
    pub(crate) fn fail_key(&mut self, key: &str, msg: String, help: String) {
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
    pub(crate) fn items(&mut self, key: &str, what: &str) -> Option<Vec<(Node, Origin)>> {
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
    pub(crate) fn map_entries(
        &mut self,
        key: &str,
        what: &str,
    ) -> Option<Vec<(Node, Node, Origin)>> {
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
    pub(crate) fn number(
        &mut self,
        key: &str,
        ok: &dyn Fn(f64) -> bool,
        expected: &str,
    ) -> Option<f64> {
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

    pub(crate) fn boolean(&mut self, key: &str) -> Option<bool> {
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

    pub(crate) fn missing(&mut self, key: &str, help: &str) {
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
    pub(crate) fn fail(
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

    pub(crate) fn int(&mut self, key: &str, lo: i64, hi: i64, expected: &str) -> Option<i64> {
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

    pub(crate) fn count(&mut self, key: &str, min: i64, default: usize) -> usize {
        let expected = format!("an integer ≥ {min}");
        self.int(key, min, i64::MAX, &expected)
            .map_or(default, |i| i as usize)
    }

    pub(crate) fn text(&mut self, key: &str, what: &str) -> Option<String> {
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

    pub(crate) fn choice(&mut self, key: &str, options: &[&'static str]) -> Option<&'static str> {
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

    pub(crate) fn req_choice(
        &mut self,
        key: &str,
        options: &[&'static str],
    ) -> Option<&'static str> {
        if !self.has(key) {
            self.missing(key, &format!("add `{key}:` with {}", one_of(options)));
            return None;
        }
        self.choice(key, options)
    }

    pub(crate) fn name_in(
        &mut self,
        key: &str,
        declared: &[String],
        section: &str,
    ) -> Option<String> {
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
    pub(crate) fn stage_ref(
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

    pub(crate) fn req_ref(
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

    pub(crate) fn model_ref(&mut self) -> Option<InstanceRef> {
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
pub(crate) fn number_of(n: &Node) -> Option<f64> {
    match n.value() {
        Some(ParamValue::Float(x)) => Some(x),
        Some(ParamValue::Int(i)) => Some(i as f64),
        _ => None,
    }
}

/// Whether a raw parameter can be substituted and checked: unknown or unreadable axes were
/// reported, and their placeholders are not checked.
pub(crate) fn checkable(env: &Env, raw: &Node) -> bool {
    let mut used = Vec::new();
    interp::axes_in(raw, &mut used);
    interp::well_formed(raw)
        && !used
            .iter()
            .any(|(a, _)| env.sweep.axis_index(a).is_none_or(|i| env.sweep.broken[i]))
}

/// A raw parameter with the point's axis values substituted.
pub(crate) fn substitute(env: &Env, raw: &Node, point: &[Node]) -> (Node, Origin) {
    let lookup = |a: &str| env.sweep.axis_index(a).map(|i| &point[i]);
    interp::substitute(raw, &lookup)
}

/// The items of a list parameter, each substituted on its own so that an error in an item taken
/// from a sweep axis points at the axis value. A single value stands for a one-item list (so that
/// `targets: ${t}` works, sweep values being scalars). `Err`: the value, neither.
pub(crate) fn list_items(
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
    let spec = StageSpec::read(kind, &mut f);
    if f.bad {
        None
    } else {
        spec
    }
}
