//! The file's sections: the top level, `models`, `datasets`, and the stages as written (their
//! typed, per-instance reading is in each kind's reader, through [`super::fields`]).

use std::collections::BTreeMap;
use std::path::Path;

use super::diag::{one_of, suggest, Sink};
use super::spec::{DatasetFormat, DatasetSource, ModelSource, StageKind, TextDocuments};
use super::validate;
use super::yaml::{join, Mark, Node, Style};

/// Stage, model, dataset and axis names: `[A-Za-z0-9_-]+`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A pipeline name: it names the folder `reports/<name>/`, so it must be one plain path
/// component: `[A-Za-z0-9_-][A-Za-z0-9._-]*` (no separator, no `..`, nothing hidden or absolute).
pub fn is_pipeline_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The error for a pipeline name that is not [`is_pipeline_name`].
pub fn bad_pipeline_name(mark: Mark, name: &str, sink: &mut Sink) {
    sink.error(
        mark,
        "name",
        format!(
            "pipeline name `{}` is not a plain folder name: it may only contain letters, digits, \
             `_`, `-` and `.` (not first)",
            name.escape_debug()
        ),
    )
    .with_help(
        "the name is the folder of the reports, `reports/<name>/`; e.g. `name: wanda-sweep`",
    );
}

/// The entries of a map node as `(key text, key node, value)`; reports a node that is not a map
/// and keys that are not scalars.
pub fn entries<'n>(
    node: &'n Node,
    path: &str,
    sink: &mut Sink,
) -> Option<Vec<(&'n str, &'n Node, &'n Node)>> {
    let Some(map) = node.as_map() else {
        let at = if path.is_empty() {
            "the top level"
        } else {
            path
        };
        sink.error(
            node.mark,
            path,
            format!("expected a map at `{at}`, found {}", node.describe()),
        );
        return None;
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        match k.as_scalar() {
            Some((s, _)) if !k.is_null() => out.push((s, k, v)),
            _ => {
                sink.error(
                    k.mark,
                    path,
                    format!("expected a name as key, found {}", k.describe()),
                );
            }
        }
    }
    Some(out)
}

/// A non-null scalar's text, or an error saying a string was expected.
pub fn string<'n>(node: &'n Node, path: &str, what: &str, sink: &mut Sink) -> Option<&'n str> {
    match node.as_scalar() {
        Some((s, _)) if !node.is_null() => Some(s),
        _ => {
            sink.error(
                node.mark,
                path,
                format!("expected {what}, found {}", node.describe()),
            )
            .with_expected(what);
            None
        }
    }
}

pub struct TopLevel<'n> {
    pub name: Option<String>,
    pub models: Option<&'n Node>,
    pub datasets: Option<&'n Node>,
    pub sweep: Option<&'n Node>,
    pub stages: Option<&'n Node>,
}

const TOP_KEYS: [&str; 6] = ["version", "name", "models", "datasets", "sweep", "stages"];

pub fn top_level<'n>(root: &'n Node, sink: &mut Sink) -> TopLevel<'n> {
    let mut top = TopLevel {
        name: None,
        models: None,
        datasets: None,
        sweep: None,
        stages: None,
    };
    let Some(fields) = entries(root, "", sink) else {
        return top;
    };
    for (key, k, v) in fields {
        match key {
            "version" => {
                if !matches!(v.value(), Some(crate::cache::key::ParamValue::Int(1))) {
                    sink.error(
                        v.mark,
                        "version",
                        format!("unsupported pipeline version {}", v.describe()),
                    )
                    .with_expected("1")
                    .with_help("this whittle reads version 1 pipeline files");
                }
            }
            "name" => {
                if let Some(n) = string(v, "name", "a name", sink) {
                    if is_pipeline_name(n) {
                        top.name = Some(n.to_string());
                    } else {
                        bad_pipeline_name(v.mark, n, sink);
                        top.name = Some("pipeline".into());
                    }
                }
            }
            "models" => top.models = Some(v),
            "datasets" => top.datasets = Some(v),
            "sweep" => top.sweep = Some(v),
            "stages" => top.stages = Some(v),
            other => {
                let s = suggest(other, TOP_KEYS);
                sink.error(k.mark, other, format!("unknown top-level key `{other}`{s}"))
                    .with_expected(one_of(&TOP_KEYS));
            }
        }
    }
    if top.stages.is_none() {
        sink.error(root.mark, "stages", "missing required key `stages`")
            .with_help("a pipeline needs at least one stage under `stages:`");
    }
    top
}

fn check_name(k: &Node, name: &str, path: &str, what: &str, sink: &mut Sink) {
    if !is_name(name) {
        sink.error(
            k.mark,
            path,
            format!("{what} name `{name}` may only contain letters, digits, `_` and `-`"),
        );
    }
}

/// Reads `models:`; returns the usable entries and every declared name (so that references to a
/// model whose directory is missing are not also reported as unknown).
pub fn models(
    node: Option<&Node>,
    base: &Path,
    sink: &mut Sink,
) -> (BTreeMap<String, ModelSource>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut names = Vec::new();
    let Some(node) = node.filter(|n| !n.is_null()) else {
        return (out, names);
    };
    for (name, k, v) in entries(node, "models", sink).unwrap_or_default() {
        let path = join("models", name);
        check_name(k, name, &path, "model", sink);
        names.push(name.to_string());
        // A string is shorthand for `{path: …}`.
        let path_node = if v.as_scalar().is_some() && !v.is_null() {
            Some(v)
        } else if let Some(fields) = entries(v, &path, sink) {
            let mut p = None;
            for (key, kn, vn) in fields {
                if key == "path" {
                    p = Some(vn);
                } else {
                    let s = suggest(key, ["path"]);
                    sink.error(
                        kn.mark,
                        join(&path, key),
                        format!("unknown key `{key}` in model `{name}`{s}"),
                    )
                    .with_expected("`path`");
                }
            }
            if p.is_none() {
                sink.error(
                    v.mark,
                    join(&path, "path"),
                    format!("missing required key `path` in model `{name}`"),
                )
                .with_help("give the model's directory (with config.json) relative to this file");
            }
            p
        } else {
            None
        };
        let Some(pn) = path_node else { continue };
        let key_path = if pn.mark == v.mark {
            path.clone()
        } else {
            join(&path, "path")
        };
        let Some(rel) = string(pn, &key_path, "a directory path", sink) else {
            continue;
        };
        if let Some(dir) = validate::model_dir(base, rel, pn.mark, &key_path, sink) {
            out.insert(
                name.to_string(),
                ModelSource {
                    name: name.to_string(),
                    dir,
                },
            );
        }
    }
    (out, names)
}

const DATASET_KEYS: [&str; 6] = [
    "path",
    "format",
    "documents",
    "separator",
    "field",
    "labels",
];
const FORMATS: [&str; 5] = ["text", "jsonl", "json", "squad", "lama"];

/// Reads `datasets:`; like [`models`], also returns every declared name.
pub fn datasets(
    node: Option<&Node>,
    base: &Path,
    sink: &mut Sink,
) -> (BTreeMap<String, DatasetSource>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut names = Vec::new();
    let Some(node) = node.filter(|n| !n.is_null()) else {
        return (out, names);
    };
    for (name, k, v) in entries(node, "datasets", sink).unwrap_or_default() {
        let dpath = join("datasets", name);
        check_name(k, name, &dpath, "dataset", sink);
        names.push(name.to_string());
        let mut fields: BTreeMap<&str, (&Node, &Node)> = BTreeMap::new();
        if v.as_scalar().is_some() && !v.is_null() {
            fields.insert("path", (v, v));
        } else if let Some(es) = entries(v, &dpath, sink) {
            for (key, kn, vn) in es {
                if DATASET_KEYS.contains(&key) {
                    fields.insert(key, (kn, vn));
                } else {
                    let s = suggest(key, DATASET_KEYS);
                    sink.error(
                        kn.mark,
                        join(&dpath, key),
                        format!("unknown key `{key}` in dataset `{name}`{s}"),
                    )
                    .with_expected(one_of(&DATASET_KEYS));
                }
            }
        } else {
            continue;
        }
        let mut ok = true;
        let text = |key: &str, what: &str, sink: &mut Sink, ok: &mut bool| {
            let (_, vn) = fields.get(key)?;
            let r = string(vn, &join(&dpath, key), what, sink);
            *ok &= r.is_some();
            r.map(|s| (s.to_string(), vn.mark))
        };
        let format = text("format", "a dataset format", sink, &mut ok);
        let format = match format.as_ref() {
            Some((f, _)) if FORMATS.contains(&f.as_str()) => f.as_str(),
            Some((f, mark)) => {
                let s = suggest(f, FORMATS);
                sink.error(
                    *mark,
                    join(&dpath, "format"),
                    format!("expected {}, found `{f}`{s}", one_of(&FORMATS)),
                )
                .with_expected(one_of(&FORMATS));
                ok = false;
                "text"
            }
            None => fields
                .get("path")
                .and_then(|(_, vn)| vn.as_scalar())
                .map(|(rel, _)| rel.to_ascii_lowercase())
                .map_or("text", |rel| {
                    if rel.ends_with(".jsonl") {
                        "jsonl"
                    } else {
                        "text"
                    }
                }),
        };
        let file = match text("path", "a file path", sink, &mut ok) {
            Some((rel, mark)) => {
                let kp = if fields["path"].1.mark == v.mark {
                    dpath.clone()
                } else {
                    join(&dpath, "path")
                };
                let r = if format == "lama" {
                    validate::dataset_dir(base, &rel, mark, &kp, sink)
                } else {
                    validate::dataset_file(base, &rel, mark, &kp, sink)
                };
                ok &= r.is_some();
                r.map(|p| (p, rel))
            }
            None => {
                if ok {
                    sink.error(
                        v.mark,
                        join(&dpath, "path"),
                        format!("missing required key `path` in dataset `{name}`"),
                    );
                }
                ok = false;
                None
            }
        };
        let labels = match text("labels", "a file path", sink, &mut ok) {
            Some((rel, mark)) => {
                let r = validate::dataset_file(base, &rel, mark, &join(&dpath, "labels"), sink);
                ok &= r.is_some();
                r
            }
            None => None,
        };
        let documents = text(
            "documents",
            "`whole`, `lines` or `separator`",
            sink,
            &mut ok,
        );
        let separator = text("separator", "a separator string", sink, &mut ok);
        let field = text("field", "a field name", sink, &mut ok);
        let wrong_format = |key: &str, fmt: &str, sink: &mut Sink| {
            let (kn, _) = fields[key];
            sink.error(
                kn.mark,
                join(&dpath, key),
                format!("`{key}` applies to {fmt} datasets only; `{name}` is not one"),
            )
            .with_help(format!("remove `{key}` or set `format: {fmt}`"));
        };
        let only = |keys: &[&str], fmt: &str, sink: &mut Sink, ok: &mut bool| {
            for key in keys {
                if fields.contains_key(key) {
                    wrong_format(key, fmt, sink);
                    *ok = false;
                }
            }
        };
        let record_field = |field: Option<(String, Mark)>, sink: &mut Sink, ok: &mut bool| {
            if let Some((f, mark)) = &field {
                if f.is_empty() {
                    sink.error(*mark, join(&dpath, "field"), "the field name is empty");
                    *ok = false;
                }
            }
            field.map_or_else(|| "text".to_string(), |(f, _)| f)
        };
        let fmt = match format {
            "jsonl" | "json" => {
                only(&["documents", "separator"], "text", sink, &mut ok);
                let field = record_field(field, sink, &mut ok);
                if format == "jsonl" {
                    DatasetFormat::Jsonl { field }
                } else {
                    DatasetFormat::Json { field }
                }
            }
            "squad" | "lama" => {
                only(&["documents", "separator"], "text", sink, &mut ok);
                only(&["field"], "jsonl", sink, &mut ok);
                if format == "lama" {
                    only(&["labels"], "jsonl", sink, &mut ok);
                    DatasetFormat::Lama
                } else {
                    DatasetFormat::Squad
                }
            }
            _ => {
                only(&["field", "labels"], "jsonl", sink, &mut ok);
                let docs = match documents.as_ref().map(|(d, m)| (d.as_str(), *m)) {
                    None | Some(("whole", _)) => TextDocuments::Whole,
                    Some(("lines", _)) => TextDocuments::Lines,
                    Some(("separator", dmark)) => match &separator {
                        Some((sep, smark)) if sep.is_empty() => {
                            sink.error(*smark, join(&dpath, "separator"), "the separator is empty");
                            ok = false;
                            TextDocuments::Whole
                        }
                        Some((sep, _)) => TextDocuments::Separator(sep.clone()),
                        None => {
                            if !fields.contains_key("separator") {
                                sink.error(
                                    dmark,
                                    join(&dpath, "separator"),
                                    "`documents: separator` needs a `separator:`",
                                )
                                .with_help("e.g. `separator: \"<|endoftext|>\"`");
                            }
                            ok = false;
                            TextDocuments::Whole
                        }
                    },
                    Some((d, dmark)) => {
                        let s = suggest(d, ["whole", "lines", "separator"]);
                        sink.error(
                            dmark,
                            join(&dpath, "documents"),
                            format!("expected `whole`, `lines` or `separator`, found `{d}`{s}"),
                        );
                        ok = false;
                        TextDocuments::Whole
                    }
                };
                if separator.is_some() && !matches!(docs, TextDocuments::Separator(_)) && ok {
                    let (kn, _) = fields["separator"];
                    sink.error(
                        kn.mark,
                        join(&dpath, "separator"),
                        "`separator` is only used with `documents: separator`",
                    )
                    .with_help("add `documents: separator` or remove `separator`");
                    ok = false;
                }
                DatasetFormat::Text { documents: docs }
            }
        };
        if let (true, Some((path, _))) = (ok, file) {
            out.insert(
                name.to_string(),
                DatasetSource {
                    name: name.to_string(),
                    path,
                    format: fmt,
                    labels,
                },
            );
        }
    }
    (out, names)
}

/// A stage as written: its kind (if readable) and its other parameters, not yet substituted.
#[derive(Clone, Debug)]
pub struct RawStage {
    pub name: String,
    /// Position of the stage's key.
    pub mark: Mark,
    pub kind: Option<StageKind>,
    /// `(key, key position, value)` for every key other than `kind` and `resources`.
    pub params: Vec<(String, Mark, Node)>,
    /// What its jobs ask of a cluster; the same for every instance, never in a key.
    pub resources: super::resources::Resources,
}

impl RawStage {
    pub fn param(&self, key: &str) -> Option<&Node> {
        self.params
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v)
    }
}

pub fn raw_stages(node: Option<&Node>, sink: &mut Sink) -> Vec<RawStage> {
    let Some(node) = node else {
        return Vec::new();
    };
    let Some(fields) = entries(node, "stages", sink) else {
        return Vec::new();
    };
    if fields.is_empty() {
        sink.error(node.mark, "stages", "`stages` is empty")
            .with_help("add at least one stage, e.g. `base: {kind: load, model: <name>}`");
    }
    let kinds: Vec<&str> = StageKind::ALL.iter().map(|k| k.as_str()).collect();
    let mut out = Vec::new();
    for (name, k, v) in fields {
        let spath = join("stages", name);
        check_name(k, name, &spath, "stage", sink);
        let Some(body) = entries(v, &spath, sink) else {
            continue;
        };
        let mut kind = None;
        let mut kind_seen = false;
        let mut params = Vec::new();
        let mut resources = super::resources::Resources::default();
        for (key, kn, vn) in body {
            if key == "resources" {
                resources = super::resources::read(vn, &join(&spath, "resources"), sink);
            } else if key == "kind" {
                kind_seen = true;
                let kp = join(&spath, "kind");
                let Some(text) = string(vn, &kp, "a stage kind", sink) else {
                    continue;
                };
                if text.contains("${") {
                    sink.error(vn.mark, kp, "`kind` cannot use sweep axes")
                        .with_help(
                            "sweep over parameters, not stage kinds; write one stage per kind",
                        );
                    continue;
                }
                kind = StageKind::parse(text);
                if kind.is_none() {
                    let s = suggest(text, kinds.iter().copied());
                    sink.error(vn.mark, kp, format!("unknown stage kind `{text}`{s}"))
                        .with_expected(one_of(&kinds));
                }
            } else {
                params.push((key.to_string(), kn.mark, vn.clone()));
            }
        }
        if !kind_seen {
            sink.error(
                v.mark,
                join(&spath, "kind"),
                format!("stage `{name}` has no `kind`"),
            )
            .with_expected(one_of(&kinds));
        }
        if let Some(kind) = kind {
            let allowed = kind.keys();
            for (key, kmark, _) in &params {
                if allowed.contains(&key.as_str()) {
                    continue;
                }
                let s = suggest(key, allowed.iter().copied().chain(["resources"]));
                let d = sink.error(
                    *kmark,
                    join(&spath, key),
                    format!("unknown key `{key}` in {kind} stage `{name}`{s}"),
                );
                d.with_expected(one_of(allowed));
                if s.is_empty() {
                    if let Some(other) = StageKind::ALL
                        .iter()
                        .find(|o| o.keys().contains(&key.as_str()))
                    {
                        d.with_help(format!(
                            "`{key}` is a key of {other} stages; {kind} stages take {}",
                            one_of(allowed)
                        ));
                    }
                }
            }
        }
        out.push(RawStage {
            name: name.to_string(),
            mark: k.mark,
            kind,
            params,
            resources,
        });
    }
    out
}

/// A scalar node's text if it is a plain or quoted string.
pub fn text_of(n: &Node) -> Option<&str> {
    match n.as_scalar() {
        Some((s, Style::Plain | Style::Quoted)) if !n.is_null() => Some(s),
        _ => None,
    }
}
