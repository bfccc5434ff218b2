//! A report stage's `tables:` and `plots:`, checked against its inputs: every metric names an
//! input stage, every axis is one the inputs use, and every row (or plot point) is identified by
//! its axes, so that no two measurements of one stage land in the same cell.

use super::spec::*;
use crate::cache::key::ParamValue;
use crate::pipeline::diag::{one_of, suggest};
use crate::pipeline::fields::Fields;
use crate::pipeline::interp::Origin;
use crate::pipeline::schema::is_name;
use crate::pipeline::spec::InstanceRef;
use crate::pipeline::sweep::value_key;
use crate::pipeline::yaml::Node;
use crate::stages::StageKind;

const TABLE_KEYS: [&str; 4] = ["name", "rows", "columns", "where"];
const PLOT_KEYS: [&str; 11] = [
    "name", "kind", "x", "y", "series", "label", "change", "x_scale", "y_scale", "where", "formats",
];
const METRIC: &str = "`<stage>.<metric>`, `model_mb` or `compression`";

/// The report's input stages as written, and what is known of each.
struct Inputs {
    /// Every stage name listed in `inputs:`, resolved or not (unresolved ones were reported).
    pub written: Vec<String>,
    /// Resolved input stages: name and the axes (names, declaration order) it varies over.
    pub stages: Vec<(String, Vec<String>)>,
}

impl Inputs {
    fn axes_of(&self, stage: &str) -> Option<&[String]> {
        self.stages
            .iter()
            .find(|(n, _)| n == stage)
            .map(|(_, a)| a.as_slice())
    }

    /// Axes used by any input, in declaration order.
    fn used_axes(&self, f: &Fields) -> Vec<String> {
        f.env
            .sweep
            .axes
            .iter()
            .map(|a| a.name.clone())
            .filter(|a| self.stages.iter().any(|(_, ax)| ax.contains(a)))
            .collect()
    }
}

/// One checked piece of YAML: the node and its key path relative to the stage.
type At<'n> = (&'n Node, String);

fn fail(f: &mut Fields, at: &str, node: &Node, msg: String, expected: Option<&str>) {
    f.fail(at, node, &Origin::Literal, msg, expected, None);
}

fn fail_help(f: &mut Fields, at: &str, node: &Node, msg: String, help: String) {
    f.fail(at, node, &Origin::Literal, msg, None, Some(help));
}

/// The entries of a table or plot map; reports keys it does not take.
fn map_fields<'n>(
    f: &mut Fields,
    node: &'n Node,
    at: &str,
    what: &str,
    keys: &[&str],
) -> Option<Vec<(&'n str, &'n Node)>> {
    let Some(map) = node.as_map() else {
        let msg = format!(
            "expected a map describing a {what}, found {}",
            node.describe()
        );
        fail(f, at, node, msg, Some("a map"));
        return None;
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let key = k.as_scalar().map_or("", |(s, _)| s);
        if keys.contains(&key) {
            out.push((key, v));
        } else {
            let s = suggest(key, keys.iter().copied());
            f.bad = true;
            let path = f.path(&format!("{at}.{key}"));
            f.sink
                .error(k.mark, path, format!("unknown key `{key}` in a {what}{s}"))
                .with_expected(one_of(keys));
        }
    }
    Some(out)
}

fn field<'n>(fields: &[(&str, &'n Node)], key: &str) -> Option<&'n Node> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A scalar's text.
fn text(f: &mut Fields, node: &Node, at: &str, what: &str) -> Option<String> {
    match node.as_scalar() {
        Some((s, _)) if !node.is_null() => Some(s.to_string()),
        _ => {
            let msg = format!("expected {what}, found {}", node.describe());
            fail(f, at, node, msg, Some(what));
            None
        }
    }
}

/// A list's items with their key paths; a single scalar stands for a one-item list.
fn items<'n>(f: &mut Fields, node: &'n Node, at: &str, what: &str) -> Option<Vec<At<'n>>> {
    match node.as_seq() {
        Some([]) => {
            let msg = format!("expected {what}, found an empty list");
            fail(f, at, node, msg, Some(what));
            None
        }
        Some(items) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, n)| (n, format!("{at}[{i}]")))
                .collect(),
        ),
        None if node.as_scalar().is_some() && !node.is_null() => Some(vec![(node, at.into())]),
        None => {
            let msg = format!("expected {what}, found {}", node.describe());
            fail(f, at, node, msg, Some(what));
            None
        }
    }
}

/// A table or plot name: a file stem, unique among its kind.
fn name(
    f: &mut Fields,
    fields: &[(&str, &Node)],
    map: &Node,
    at: &str,
    seen: &mut Vec<String>,
) -> Option<String> {
    let what = if at.starts_with("tables") {
        "table"
    } else {
        "plot"
    };
    let Some(node) = field(fields, "name") else {
        let path = f.path(&format!("{at}.name"));
        f.bad = true;
        f.sink
            .error(map.mark, path, format!("a {what} needs a `name:`"))
            .with_help(format!(
                "the name is the file stem of its renderings, e.g. `name: main` → main.{}",
                if what == "table" { "md" } else { "svg" }
            ));
        return None;
    };
    let at = format!("{at}.name");
    let n = text(f, node, &at, "a name")?;
    if !is_name(&n) {
        let msg = format!("{what} name `{n}` may only contain letters, digits, `_` and `-`");
        fail(f, &at, node, msg, None);
        return None;
    }
    if seen.contains(&n) {
        fail(
            f,
            &at,
            node,
            format!("{what} name `{n}` is used twice"),
            None,
        );
        return None;
    }
    seen.push(n.clone());
    Some(n)
}

/// `<stage>.<metric>` naming an input, `model_mb` or `compression`.
fn metric(f: &mut Fields, inputs: &Inputs, node: &Node, at: &str) -> Option<MetricRef> {
    let s = text(f, node, at, METRIC)?;
    if s == MetricRef::SIZE_MB {
        let msg = format!(
            "`{s}` is no longer a report metric: it showed the compressed tensors' cache storage, \
             not the model's size"
        );
        let help = format!(
            "use `{}` (the model as deployed, in MB) or `{}` (dense size ÷ model size)",
            MetricRef::MODEL_MB,
            MetricRef::COMPRESSION
        );
        fail_help(f, at, node, msg, help);
        return None;
    }
    let Some(r) = MetricRef::parse(&s) else {
        let stages: Vec<&str> = inputs.written.iter().map(String::as_str).collect();
        let help = match (inputs.written.contains(&s), stages.first()) {
            (true, _) => format!("name one of its metrics, e.g. `{s}.ppl`"),
            (false, Some(st)) => format!("e.g. `{st}.ppl`"),
            (false, None) => "e.g. `ppl.ppl`".into(),
        };
        let msg = format!("expected {METRIC}, found `{s}`");
        fail_help(f, at, node, msg, help);
        return None;
    };
    if let Some(stage) = r.stage() {
        if !inputs.written.iter().any(|w| w == stage) {
            let sug = suggest(stage, inputs.written.iter().map(String::as_str));
            let msg = format!("`{r}`: stage `{stage}` is not an input of this report{sug}");
            let help = format!(
                "the report's inputs are {}; add `{stage}` to `inputs` to report it",
                one_of(
                    &inputs
                        .written
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                )
            );
            fail_help(f, at, node, msg, help);
            return None;
        }
    }
    Some(r)
}

/// A list of metrics (one allowed bare).
fn metrics(f: &mut Fields, inputs: &Inputs, node: &Node, at: &str) -> Option<Vec<MetricRef>> {
    let list = items(f, node, at, &format!("a list of {METRIC}"))?;
    let mut out = Vec::new();
    let mut ok = true;
    for (n, a) in list {
        match metric(f, inputs, n, &a) {
            Some(m) => out.push(m),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// An axis the inputs use.
fn axis(f: &mut Fields, inputs: &Inputs, node: &Node, at: &str) -> Option<String> {
    let a = text(f, node, at, "a sweep axis")?;
    let used = inputs.used_axes(f);
    if used.contains(&a) {
        return Some(a);
    }
    if f.env.sweep.axis_index(&a).is_some() {
        let msg = format!("sweep axis `{a}` is not used by any input of this report");
        fail(f, at, node, msg, None);
        return None;
    }
    let s = suggest(&a, f.env.sweep.axis_names());
    let msg = format!("unknown sweep axis `{a}`{s}");
    let expected = one_of(&used.iter().map(String::as_str).collect::<Vec<_>>());
    let expected = (!expected.is_empty()).then_some(expected);
    fail(f, at, node, msg, expected.as_deref());
    None
}

/// A list of distinct axes (one allowed bare).
fn axes(f: &mut Fields, inputs: &Inputs, node: &Node, at: &str) -> Option<Vec<String>> {
    let list = items(f, node, at, "a list of sweep axes")?;
    let mut out: Vec<String> = Vec::new();
    let mut ok = true;
    for (n, a) in list {
        match axis(f, inputs, n, &a) {
            Some(x) if out.contains(&x) => {
                fail(f, &a, n, format!("axis `{x}` is listed twice"), None);
                ok = false;
            }
            Some(x) => out.push(x),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// The values a sweep axis takes, in order of first appearance.
fn axis_values(f: &Fields, axis: &str) -> Vec<Node> {
    let Some(a) = f.env.sweep.axis_index(axis) else {
        return Vec::new();
    };
    let mut out: Vec<Node> = Vec::new();
    for p in &f.env.sweep.points {
        if !out.iter().any(|n| value_key(n) == value_key(&p[a])) {
            out.push(p[a].clone());
        }
    }
    out
}

/// `where: {axis: value or [values]}`.
fn filter(f: &mut Fields, inputs: &Inputs, node: &Node, at: &str) -> Option<ReportFilter> {
    let at = format!("{at}.where");
    let Some(map) = node.as_map() else {
        let msg = format!("expected a map of axis → values, found {}", node.describe());
        fail(f, &at, node, msg, Some("e.g. `{sparsity: [0.3, 0.5]}`"));
        return None;
    };
    let mut out: ReportFilter = Vec::new();
    let mut ok = true;
    for (k, v) in map {
        let kat = format!("{at}.{}", k.as_scalar().map_or("", |(s, _)| s));
        let Some(a) = axis(f, inputs, k, &kat) else {
            ok = false;
            continue;
        };
        let vat = format!("{at}.{a}");
        let Some(list) = items(f, v, &vat, "a value of the axis, or a list of them") else {
            ok = false;
            continue;
        };
        let known = axis_values(f, &a);
        let mut values = Vec::new();
        for (n, nat) in list {
            let hit = known.iter().find(|k| value_key(k) == value_key(n));
            match (hit, n.value()) {
                (Some(_), Some(v)) => values.push(v),
                _ => {
                    let shown: Vec<String> = known
                        .iter()
                        .filter_map(|k| k.as_scalar().map(|(s, _)| format!("`{s}`")))
                        .collect();
                    let msg = format!("{} is not a value of sweep axis `{a}`", n.describe());
                    let expected = shown.join(", ");
                    fail(f, &nat, n, msg, Some(&format!("one of {expected}")));
                    ok = false;
                }
            }
        }
        out.push((a, values));
    }
    ok.then_some(out)
}

/// Axes a filter pins to one value: they no longer tell rows apart.
fn pinned(filter: &ReportFilter) -> Vec<&str> {
    filter
        .iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(a, _)| a.as_str())
        .collect()
}

/// The axes the stages behind `refs` vary over (all inputs when `refs` is `None`), minus pinned
/// ones, in declaration order.
fn varying(
    f: &Fields,
    inputs: &Inputs,
    refs: Option<&[&MetricRef]>,
    filter: &ReportFilter,
) -> Vec<String> {
    let pinned = pinned(filter);
    inputs
        .used_axes(f)
        .into_iter()
        .filter(|a| !pinned.contains(&a.as_str()))
        .filter(|a| match refs {
            None => true,
            Some(refs) => refs.iter().any(|r| {
                r.stage()
                    .and_then(|s| inputs.axes_of(s))
                    .is_some_and(|ax| ax.contains(a))
            }),
        })
        .collect()
}

/// A stage (with the axis) whose instances the `given` axes cannot tell apart.
fn uncovered(
    inputs: &Inputs,
    refs: Option<&[&MetricRef]>,
    filter: &ReportFilter,
    given: &[String],
) -> Option<(String, String)> {
    let stages: Vec<&str> = match refs {
        None => inputs.stages.iter().map(|(n, _)| n.as_str()).collect(),
        Some(refs) => refs.iter().filter_map(|r| r.stage()).collect(),
    };
    let pinned = pinned(filter);
    stages.into_iter().find_map(|st| {
        let ax = inputs.axes_of(st)?;
        ax.iter()
            .find(|a| !given.contains(a) && !pinned.contains(&a.as_str()))
            .map(|a| (st.to_string(), a.clone()))
    })
}

/// Reports what [`uncovered`] found; `which` names the keys that should list the axis.
fn fail_uncovered(
    f: &mut Fields,
    (stage, axis): (String, String),
    node: &Node,
    at: &str,
    which: &str,
) {
    let msg = format!("stage `{stage}` varies over `{axis}`, which {which} leaves out");
    let help =
        format!("add `{axis}` to {which}, or keep one of its values with `where: {{{axis}: …}}`");
    fail_help(f, at, node, msg, help);
}

fn table(
    f: &mut Fields,
    inputs: &Inputs,
    node: &Node,
    at: &str,
    seen: &mut Vec<String>,
) -> Option<ReportTable> {
    let fields = map_fields(f, node, at, "table", &TABLE_KEYS)?;
    let name = name(f, &fields, node, at, seen);
    let filter = match field(&fields, "where") {
        Some(w) => filter(f, inputs, w, at)?,
        None => Vec::new(),
    };
    let columns = match field(&fields, "columns") {
        None => None,
        Some(cn) => {
            let cat = format!("{at}.columns");
            let list = items(f, cn, &cat, "a list of columns")?;
            let mut cols = Vec::new();
            for (n, a) in list {
                cols.push(column(f, inputs, n, &a)?);
            }
            Some(cols)
        }
    };
    let refs: Option<Vec<&MetricRef>> = columns
        .as_ref()
        .map(|c| c.iter().map(|c| &c.value).collect());
    let rows = match field(&fields, "rows") {
        None => varying(f, inputs, refs.as_deref(), &filter),
        Some(rn) => {
            let rat = format!("{at}.rows");
            let rows = axes(f, inputs, rn, &rat)?;
            if let Some(u) = uncovered(inputs, refs.as_deref(), &filter, &rows) {
                fail_uncovered(f, u, rn, &rat, "`rows`");
                return None;
            }
            rows
        }
    };
    Some(ReportTable {
        name: name?,
        rows,
        columns,
        filter,
    })
}

/// `<stage>.<metric>`, or `{metric: <stage>.<metric>, label: <header>}`.
fn column(f: &mut Fields, inputs: &Inputs, node: &Node, at: &str) -> Option<ReportColumn> {
    if node.as_map().is_none() {
        let value = metric(f, inputs, node, at)?;
        return Some(ReportColumn { value, label: None });
    }
    let fields = map_fields(f, node, at, "column", &["metric", "label"])?;
    let Some(m) = field(&fields, "metric") else {
        let path = f.path(&format!("{at}.metric"));
        f.bad = true;
        f.sink
            .error(node.mark, path, "a column needs a `metric:`")
            .with_expected(METRIC);
        return None;
    };
    let value = metric(f, inputs, m, &format!("{at}.metric"))?;
    let label = match field(&fields, "label") {
        Some(l) => Some(text(f, l, &format!("{at}.label"), "a column header")?),
        None => None,
    };
    Some(ReportColumn { value, label })
}

fn choice(f: &mut Fields, node: &Node, at: &str, options: &[&'static str]) -> Option<&'static str> {
    let s = text(f, node, at, &one_of(options))?;
    if let Some(hit) = options.iter().find(|o| **o == s) {
        return Some(hit);
    }
    let sug = suggest(&s, options.iter().copied());
    let msg = format!("expected {}, found `{s}`{sug}", one_of(options));
    fail(f, at, node, msg, Some(&one_of(options)));
    None
}

fn plot(
    f: &mut Fields,
    inputs: &Inputs,
    node: &Node,
    at: &str,
    seen: &mut Vec<String>,
) -> Option<ReportPlot> {
    let fields = map_fields(f, node, at, "plot", &PLOT_KEYS)?;
    let name = name(f, &fields, node, at, seen);
    let kind = match field(&fields, "kind") {
        Some(k) => choice(f, k, &format!("{at}.kind"), &["line", "tradeoff"])?,
        None => "line",
    };
    let filter = match field(&fields, "where") {
        Some(w) => filter(f, inputs, w, at)?,
        None => Vec::new(),
    };
    let mut scale = |key: &str| match field(&fields, key) {
        Some(n) => match choice(f, n, &format!("{at}.{key}"), &["linear", "log"])? {
            "log" => Some(AxisScale::Log),
            _ => Some(AxisScale::Linear),
        },
        None => Some(AxisScale::Linear),
    };
    let (x_scale, y_scale) = (scale("x_scale"), scale("y_scale"));
    let (x_scale, y_scale) = (x_scale?, y_scale?);
    let mut formats = Vec::new();
    match field(&fields, "formats") {
        None => formats = vec![PlotFormat::Svg, PlotFormat::Png],
        Some(n) => {
            let fat = format!("{at}.formats");
            for (item, a) in items(f, n, &fat, "a list of `svg`, `png`")? {
                let x = match choice(f, item, &a, &["svg", "png"])? {
                    "svg" => PlotFormat::Svg,
                    _ => PlotFormat::Png,
                };
                if formats.contains(&x) {
                    fail(
                        f,
                        &a,
                        item,
                        format!("format `{}` is listed twice", x.as_str()),
                        None,
                    );
                    return None;
                }
                formats.push(x);
            }
        }
    }
    // Keys that belong to the other kind.
    let foreign: &[&str] = if kind == "line" {
        &["label", "change"]
    } else {
        &[]
    };
    for key in foreign {
        if let Some(n) = fields.iter().find(|(k, _)| k == key).map(|(_, n)| *n) {
            let msg = format!("`{key}` applies to `kind: tradeoff` plots only");
            fail_help(
                f,
                &format!("{at}.{key}"),
                n,
                msg,
                "remove it, or set `kind: tradeoff`".into(),
            );
            return None;
        }
    }
    let required = |f: &mut Fields, key: &str, help: &str| -> Option<()> {
        if field(&fields, key).is_none() {
            let path = f.path(&format!("{at}.{key}"));
            f.bad = true;
            f.sink
                .error(node.mark, path, format!("a {kind} plot needs `{key}:`"))
                .with_help(help.to_string());
            return None;
        }
        Some(())
    };
    required(
        f,
        "x",
        if kind == "line" {
            "a numeric sweep axis, e.g. `x: sparsity`"
        } else {
            "a metric, e.g. `x: ppl.ppl`"
        },
    )?;
    required(
        f,
        "y",
        "one metric or a list of them (one panel each), e.g. `y: [ppl.ppl]`",
    )?;
    let xn = field(&fields, "x")?;
    let yn = field(&fields, "y")?;
    let y = metrics(f, inputs, yn, &format!("{at}.y"))?;
    let series_given = match field(&fields, "series") {
        Some(n) => Some((axes(f, inputs, n, &format!("{at}.series"))?, n)),
        None => None,
    };
    let (kind, series, rows) = if kind == "line" {
        let xat = format!("{at}.x");
        let x = axis(f, inputs, xn, &xat)?;
        let numeric = axis_values(f, &x)
            .iter()
            .all(|v| matches!(v.value(), Some(ParamValue::Int(_) | ParamValue::Float(_))));
        if !numeric {
            let msg = format!("`x` of a line plot must be a numeric sweep axis; `{x}` has values that are not numbers");
            fail_help(
                f,
                &xat,
                xn,
                msg,
                "use `kind: tradeoff` to plot one metric against another".into(),
            );
            return None;
        }
        let refs: Vec<&MetricRef> = y.iter().collect();
        let series = match series_given {
            Some((s, sn)) => {
                if s.contains(&x) {
                    let msg = format!("axis `{x}` is both `x` and a series");
                    fail(f, &format!("{at}.series"), sn, msg, None);
                    return None;
                }
                let mut given = s.clone();
                given.push(x.clone());
                if let Some(u) = uncovered(inputs, Some(&refs), &filter, &given) {
                    fail_uncovered(f, u, sn, &format!("{at}.series"), "`series`");
                    return None;
                }
                s
            }
            None => varying(f, inputs, Some(&refs), &filter)
                .into_iter()
                .filter(|a| *a != x)
                .collect(),
        };
        let mut rows = vec![x.clone()];
        rows.extend(series.iter().cloned());
        (PlotKind::Line { x, y }, series, rows)
    } else {
        let x = metric(f, inputs, xn, &format!("{at}.x"))?;
        let mut refs: Vec<&MetricRef> = vec![&x];
        refs.extend(y.iter());
        let vary = varying(f, inputs, Some(&refs), &filter);
        let label_given = match field(&fields, "label") {
            Some(n) => Some(axes(f, inputs, n, &format!("{at}.label"))?),
            None => None,
        };
        let numeric = |a: &String| {
            axis_values(f, a)
                .iter()
                .all(|v| matches!(v.value(), Some(ParamValue::Int(_) | ParamValue::Float(_))))
        };
        // By default the categorical axes make the series and the numeric ones label points.
        let series: Vec<String> = match (&series_given, &label_given) {
            (Some((s, _)), _) => s.clone(),
            (None, Some(l)) => vary.iter().filter(|a| !l.contains(a)).cloned().collect(),
            (None, None) => vary.iter().filter(|a| !numeric(a)).cloned().collect(),
        };
        let label: Vec<String> = match label_given {
            Some(l) => l,
            None => vary
                .iter()
                .filter(|a| !series.contains(a))
                .cloned()
                .collect(),
        };
        let change = match field(&fields, "change") {
            Some(n) => match choice(f, n, &format!("{at}.change"), &["none", "diff", "ratio"])? {
                "diff" => Change::Diff,
                "ratio" => Change::Ratio,
                _ => Change::None,
            },
            None => Change::None,
        };
        let mut rows = vary.clone();
        for a in series.iter().chain(&label) {
            if !rows.contains(a) {
                rows.push(a.clone());
            }
        }
        (
            PlotKind::Tradeoff {
                x,
                y,
                label,
                change,
            },
            series,
            rows,
        )
    };
    Some(ReportPlot {
        name: name?,
        kind,
        series,
        rows,
        filter,
        x_scale,
        y_scale,
        formats,
    })
}

/// `tables:` and `plots:` of a report stage (empty when absent).
fn tables_and_plots(f: &mut Fields, inputs: &Inputs) -> (Vec<ReportTable>, Vec<ReportPlot>) {
    let mut tables = Vec::new();
    if let Some((n, _)) = f.get("tables") {
        if let Some(list) = items(f, &n, "tables", "a list of tables") {
            let mut seen = Vec::new();
            for (item, at) in list {
                if let Some(t) = table(f, inputs, item, &at, &mut seen) {
                    tables.push(t);
                }
            }
        }
    }
    let mut plots = Vec::new();
    if let Some((n, _)) = f.get("plots") {
        if let Some(list) = items(f, &n, "plots", "a list of plots") {
            let mut seen = Vec::new();
            for (item, at) in list {
                if let Some(p) = plot(f, inputs, item, &at, &mut seen) {
                    plots.push(p);
                }
            }
        }
    }
    (tables, plots)
}

pub(super) fn read(f: &mut Fields) -> Option<ReportSpec> {
    let mut inputs = Vec::new();
    let mut stages = Inputs {
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
    let (tables, plots) = tables_and_plots(f, &stages);
    Some(ReportSpec {
        inputs,
        formats,
        tables,
        plots,
    })
}
