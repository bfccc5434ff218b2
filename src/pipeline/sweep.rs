//! The `sweep:` section: axes and the list of points they expand to.
//!
//! Points are the cartesian product of the grid axes (in declaration order, the last varying
//! fastest) and then the zip groups (each zip group is one dimension whose axes move together),
//! minus every point matching an `exclude` entry, plus the `include` points not already present.

use std::collections::HashSet;

use crate::cache::key::ParamValue;

use super::diag::{suggest, Sink};
use super::schema::{entries, is_name};
use super::yaml::{join, Mark, Node};

#[derive(Clone, Debug)]
pub struct Axis {
    pub name: String,
    /// Where the axis is declared (its key).
    pub mark: Mark,
    /// Its key path, e.g. `sweep.grid.sparsity`.
    pub path: String,
}

/// The expanded sweep. Each point holds one value node per axis, in `axes` order; value nodes keep
/// their position in the file so that errors in substituted values can point at them.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub axes: Vec<Axis>,
    pub points: Vec<Vec<Node>>,
    /// Axes whose values could not be read (already reported): stage parameters using them are
    /// not checked further, since their values are placeholders.
    pub broken: Vec<bool>,
}

impl Sweep {
    pub fn axis_index(&self, name: &str) -> Option<usize> {
        self.axes.iter().position(|a| a.name == name)
    }

    pub fn axis_names(&self) -> impl Iterator<Item = &str> {
        self.axes.iter().map(|a| a.name.as_str())
    }
}

/// Larger sweeps are refused rather than expanded (a typo could otherwise exhaust memory).
pub const MAX_POINTS: usize = 100_000;

/// A value's identity for comparing points: `0.5` and `0.50` are the same value, `1` and `1.0`
/// (an integer and a float) and `"1"` are three different ones.
pub fn value_key(n: &Node) -> String {
    match n.value() {
        Some(ParamValue::Bool(b)) => format!("b:{b}"),
        Some(ParamValue::Int(i)) => format!("i:{i}"),
        Some(ParamValue::Float(x)) => format!("f:{}", crate::cache::key::canonical_float(x)),
        Some(ParamValue::Str(s)) => format!("s:{s}"),
        Some(v @ ParamValue::List(_)) => format!("l:{v}"),
        None => "null".into(),
    }
}

/// The identity of a point restricted to the axes `idx`.
pub fn projection_key(point: &[Node], idx: &[usize]) -> String {
    let mut k = String::new();
    for &i in idx {
        let v = value_key(&point[i]);
        k.push_str(&v.len().to_string());
        k.push(':');
        k.push_str(&v);
    }
    k
}

/// A dimension of the product: one grid axis, or one zip group.
struct Dim {
    axes: Vec<usize>,
    /// rows[i][j]: the i-th value of the dimension's j-th axis.
    rows: Vec<Vec<Node>>,
}

/// A sweep value: a non-null scalar.
fn check_value(n: &Node, path: &str, sink: &mut Sink) -> bool {
    if n.as_scalar().is_some() && !n.is_null() {
        return true;
    }
    sink.error(
        n.mark,
        path,
        format!(
            "expected a sweep value (a number, string or boolean), found {}",
            n.describe()
        ),
    );
    false
}

/// A non-empty list of sweep values, distinct if `distinct` (a grid axis; a zip group's axes
/// may repeat values as long as its tuples differ).
fn value_list(n: &Node, path: &str, distinct: bool, sink: &mut Sink) -> Option<Vec<Node>> {
    let Some(items) = n.as_seq() else {
        sink.error(
            n.mark,
            path,
            format!("expected a list of values, found {}", n.describe()),
        )
        .with_help("write the axis values as a list, e.g. `[0.1, 0.5]`");
        return None;
    };
    if items.is_empty() {
        sink.error(n.mark, path, "an axis needs at least one value");
        return None;
    }
    let mut ok = true;
    let mut seen = HashSet::new();
    for (i, v) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if !check_value(v, &p, sink) {
            ok = false;
        } else if distinct && !seen.insert(value_key(v)) {
            sink.error(
                v.mark,
                p,
                format!("value {} appears twice in this axis", v.describe()),
            );
            ok = false;
        }
    }
    ok.then(|| items.to_vec())
}

pub fn parse(node: Option<&Node>, sink: &mut Sink) -> Sweep {
    let mut sweep = Sweep {
        axes: Vec::new(),
        points: vec![Vec::new()],
        broken: Vec::new(),
    };
    let Some(node) = node else {
        return sweep;
    };
    if node.is_null() {
        return sweep;
    }
    let Some(fields) = entries(node, "sweep", sink) else {
        return sweep;
    };
    let mut grid = None;
    let mut zip = None;
    let mut exclude = None;
    let mut include = None;
    for (key, k, v) in fields {
        match key {
            "grid" => grid = Some(v),
            "zip" => zip = Some(v),
            "exclude" => exclude = Some((k.mark, v)),
            "include" => include = Some(v),
            other => {
                let s = suggest(other, ["grid", "zip", "exclude", "include"]);
                sink.error(
                    k.mark,
                    join("sweep", other),
                    format!("unknown key `{other}` in `sweep`{s}"),
                )
                .with_expected("`grid`, `zip`, `exclude` or `include`");
            }
        }
    }

    let mut dims: Vec<Dim> = Vec::new();
    let placeholder = Node::scalar("~", super::yaml::Style::Plain, Mark::default());
    let declare = |sweep: &mut Sweep, name: &str, k: &Node, path: &str, sink: &mut Sink| {
        if !is_name(name) {
            sink.error(
                k.mark,
                path,
                format!("axis name `{name}` may only contain letters, digits, `_` and `-`"),
            );
            return None;
        }
        if let Some(prev) = sweep.axes.iter().find(|a| a.name == name) {
            sink.error(
                k.mark,
                path,
                format!(
                    "axis `{name}` is declared twice (first on line {})",
                    prev.mark.line
                ),
            )
            .with_help("an axis belongs either to `grid` or to one `zip` group");
            return None;
        }
        sweep.axes.push(Axis {
            name: name.to_string(),
            mark: k.mark,
            path: path.to_string(),
        });
        sweep.broken.push(false);
        Some(sweep.axes.len() - 1)
    };

    if let Some(g) = grid.filter(|g| !g.is_null()) {
        for (name, k, v) in entries(g, "sweep.grid", sink).unwrap_or_default() {
            let path = join("sweep.grid", name);
            let values = value_list(v, &path, true, sink);
            let Some(idx) = declare(&mut sweep, name, k, &path, sink) else {
                continue;
            };
            let rows = match values {
                Some(values) => values.into_iter().map(|v| vec![v]).collect(),
                None => {
                    // Keep the axis known (so `${axis}` is not reported as unknown), with one
                    // placeholder value that checks skip.
                    sweep.broken[idx] = true;
                    vec![vec![placeholder.clone()]]
                }
            };
            dims.push(Dim {
                axes: vec![idx],
                rows,
            });
        }
    }

    if let Some(z) = zip.filter(|z| !z.is_null()) {
        match z.as_seq() {
            None => {
                sink.error(
                    z.mark,
                    "sweep.zip",
                    format!("expected a list of zip groups, found {}", z.describe()),
                )
                .with_help("write `zip: [{bits: [4, 8], group_size: [128, -1]}]`");
            }
            Some(groups) => {
                for (gi, group) in groups.iter().enumerate() {
                    let gpath = format!("sweep.zip[{gi}]");
                    let Some(fields) = entries(group, &gpath, sink) else {
                        continue;
                    };
                    let mut axes = Vec::new();
                    let mut columns: Vec<Vec<Node>> = Vec::new();
                    let mut first_len: Option<(String, usize)> = None;
                    for (name, k, v) in fields {
                        let path = join(&gpath, name);
                        let Some(values) = value_list(v, &path, false, sink) else {
                            if let Some(idx) = declare(&mut sweep, name, k, &path, sink) {
                                sweep.broken[idx] = true;
                                axes.push(idx);
                                columns.push(Vec::new());
                            }
                            continue;
                        };
                        match &first_len {
                            None => first_len = Some((name.to_string(), values.len())),
                            Some((first, n)) if *n != values.len() => {
                                sink.error(
                                    v.mark,
                                    path.clone(),
                                    format!(
                                        "zip lists must have equal lengths: `{first}` has {n} \
                                         values, `{name}` has {}",
                                        values.len()
                                    ),
                                )
                                .with_help(
                                    "the axes of a zip group move together, one value of each \
                                     per point",
                                );
                            }
                            Some(_) => {}
                        }
                        if let Some(idx) = declare(&mut sweep, name, k, &path, sink) {
                            axes.push(idx);
                            columns.push(values);
                        }
                    }
                    if axes.is_empty() {
                        continue;
                    }
                    // Unequal or broken lists were reported; keep the sweep non-empty so stages
                    // are still checked.
                    let len = columns.iter().map(Vec::len).max().unwrap_or(0);
                    let rows: Vec<Vec<Node>> = (0..len)
                        .map(|i| {
                            columns
                                .iter()
                                .map(|c| c.get(i).unwrap_or(&placeholder).clone())
                                .collect()
                        })
                        .collect();
                    for (a, c) in axes.iter().zip(&columns) {
                        if c.len() < len {
                            sweep.broken[*a] = true;
                        }
                    }
                    if axes.iter().all(|&a| !sweep.broken[a]) {
                        repeated_tuples(&rows, &axes, &sweep, &gpath, sink);
                    }
                    dims.push(Dim { axes, rows });
                }
            }
        }
    }

    // Without `grid` or `zip`, the `include` points are the whole sweep and declare its axes.
    let include_only = dims.is_empty()
        && include
            .and_then(Node::as_seq)
            .is_some_and(|l| !l.is_empty());
    if include_only {
        for (i, e) in include
            .and_then(Node::as_seq)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let Some(fields) = e.as_map() else { continue };
            let path = format!("sweep.include[{i}]");
            for (k, _) in fields {
                let Some((name, _)) = k.as_scalar() else {
                    continue;
                };
                if sweep.axis_index(name).is_none() {
                    declare(&mut sweep, name, k, &join(&path, name), sink);
                }
            }
        }
    }

    // The product, last dimension fastest.
    let n_axes = sweep.axes.len();
    let size = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(d.rows.len()));
    if size.is_none_or(|n| n > MAX_POINTS) {
        let n = size.map_or_else(|| "too many".to_string(), |n| n.to_string());
        sink.error(
            node.mark,
            "sweep",
            format!("the sweep has {n} points, more than the {MAX_POINTS} allowed"),
        )
        .with_help("split the experiment into several pipelines or use `zip`/`include`");
        sweep.points = Vec::new();
        return sweep;
    }
    let mut points: Vec<Vec<Node>> = if include_only {
        Vec::new()
    } else {
        vec![vec![placeholder; n_axes]]
    };
    for dim in &dims {
        let mut next = Vec::with_capacity(points.len() * dim.rows.len());
        for p in &points {
            for row in &dim.rows {
                let mut q = p.clone();
                for (j, &a) in dim.axes.iter().enumerate() {
                    q[a] = row[j].clone();
                }
                next.push(q);
            }
        }
        points = next;
    }

    let known: Vec<String> = sweep.axes.iter().map(|a| a.name.clone()).collect();
    let axis_values = |entry: &Node, path: &str, sink: &mut Sink| -> Option<Vec<(usize, Node)>> {
        let fields = entries(entry, path, sink)?;
        let mut ok = true;
        let mut out = Vec::new();
        for (name, k, v) in fields {
            let p = join(path, name);
            match known.iter().position(|a| a == name) {
                None => {
                    let s = suggest(name, known.iter().map(String::as_str));
                    let help = if known.is_empty() {
                        "no axes are declared: declare them under `grid` or `zip`, or give \
                         every point under `include`"
                            .to_string()
                    } else {
                        format!(
                            "the axes are declared under `grid` and `zip`: {}",
                            known.join(", ")
                        )
                    };
                    sink.error(k.mark, p, format!("unknown sweep axis `{name}`{s}"))
                        .with_help(help);
                    ok = false;
                }
                Some(i) => {
                    if check_value(v, &p, sink) {
                        out.push((i, v.clone()));
                    } else {
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(out)
    };

    if let Some((ex_mark, ex)) = exclude.filter(|(_, e)| !e.is_null()) {
        match ex.as_seq() {
            None => {
                sink.error(
                    ex.mark,
                    "sweep.exclude",
                    format!(
                        "expected a list of axis-value maps, found {}",
                        ex.describe()
                    ),
                );
            }
            Some(list) => {
                let mut rules = Vec::new();
                for (i, e) in list.iter().enumerate() {
                    let path = format!("sweep.exclude[{i}]");
                    if let Some(vals) = axis_values(e, &path, sink) {
                        if vals.is_empty() {
                            sink.error(
                                e.mark,
                                path,
                                "an empty exclude entry would drop every point",
                            )
                            .with_help("give the axis values of the points to drop");
                        } else {
                            rules.push(vals);
                        }
                    }
                }
                let had = points.len();
                points.retain(|p| {
                    !rules
                        .iter()
                        .any(|r| r.iter().all(|(a, v)| value_key(&p[*a]) == value_key(v)))
                });
                if had > 0 && points.is_empty() && !rules.is_empty() && include.is_none() {
                    sink.error(ex_mark, "sweep.exclude", "every sweep point is excluded")
                        .with_help("nothing would run; loosen the `exclude` entries");
                }
            }
        }
    }

    if let Some(inc) = include.filter(|i| !i.is_null()) {
        match inc.as_seq() {
            None => {
                sink.error(
                    inc.mark,
                    "sweep.include",
                    format!(
                        "expected a list of axis-value maps, found {}",
                        inc.describe()
                    ),
                );
            }
            Some(list) => {
                let all: Vec<usize> = (0..n_axes).collect();
                let mut seen: HashSet<String> =
                    points.iter().map(|p| projection_key(p, &all)).collect();
                for (i, e) in list.iter().enumerate() {
                    let path = format!("sweep.include[{i}]");
                    let Some(vals) = axis_values(e, &path, sink) else {
                        continue;
                    };
                    let missing: Vec<&str> = known
                        .iter()
                        .enumerate()
                        .filter(|(a, _)| !vals.iter().any(|(b, _)| b == a))
                        .map(|(_, n)| n.as_str())
                        .collect();
                    if !missing.is_empty() {
                        let list = missing
                            .iter()
                            .map(|m| format!("`{m}`"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        sink.error(
                            e.mark,
                            path,
                            format!("include point is missing axis {list}"),
                        )
                        .with_help("an included point gives a value for every sweep axis");
                        continue;
                    }
                    let mut p = vec![Node::scalar("~", super::yaml::Style::Plain, e.mark); n_axes];
                    for (a, v) in vals {
                        p[a] = v;
                    }
                    if seen.insert(projection_key(&p, &all)) {
                        points.push(p);
                    }
                }
            }
        }
    }

    if points.is_empty() {
        if let Some((ex_mark, _)) = exclude {
            if include.is_some() {
                sink.error(ex_mark, "sweep.exclude", "every sweep point is excluded")
                    .with_help("nothing would run; loosen the `exclude` entries");
            }
        }
    }
    sweep.points = points;
    sweep
}

/// Reports a zip group's rows that repeat an earlier one: each would be the same point twice.
fn repeated_tuples(
    rows: &[Vec<Node>],
    axes: &[usize],
    sweep: &Sweep,
    gpath: &str,
    sink: &mut Sink,
) {
    let all: Vec<usize> = (0..axes.len()).collect();
    let mut first: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let Some(&prev) = first.get(&projection_key(row, &all)) else {
            first.insert(projection_key(row, &all), i);
            continue;
        };
        let tuple: Vec<String> = axes
            .iter()
            .zip(row)
            .map(|(&a, v)| {
                format!(
                    "{}={}",
                    sweep.axes[a].name,
                    v.as_scalar().map_or("", |s| s.0)
                )
            })
            .collect();
        let name = &sweep.axes[axes[0]].name;
        sink.error(
            row[0].mark,
            format!("{}[{i}]", join(gpath, name)),
            format!(
                "zip point {} (position {}) repeats position {}",
                tuple.join(", "),
                i + 1,
                prev + 1
            ),
        )
        .with_help("each position of a zip group must differ from the others in some axis");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn expand(src: &str) -> (Sweep, Vec<super::super::diag::Diagnostic>) {
        let mut sink = Sink::new(PathBuf::from("t.yaml"), src);
        let root = super::super::yaml::parse(src, &mut sink).unwrap();
        let sweep_node = root.as_map().unwrap()[0].1.clone();
        let s = parse(Some(&sweep_node), &mut sink);
        (s, sink.finish().0)
    }

    fn show(s: &Sweep) -> Vec<String> {
        s.points
            .iter()
            .map(|p| {
                p.iter()
                    .map(|n| n.as_scalar().unwrap().0.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    #[test]
    fn grid_is_a_product_with_the_last_axis_fastest() {
        let (s, d) = expand("sweep:\n  grid:\n    m: [a, b]\n    s: [1, 2, 3]\n");
        assert!(d.is_empty());
        assert_eq!(s.axis_names().collect::<Vec<_>>(), ["m", "s"]);
        assert_eq!(show(&s), ["a,1", "a,2", "a,3", "b,1", "b,2", "b,3"]);
        // Each value keeps its position in the file.
        assert_eq!(s.points[4][1].mark, Mark { line: 4, col: 12 });
    }

    #[test]
    fn zip_groups_are_one_dimension_after_the_grid() {
        let src = "sweep:\n  grid: {m: [a, b]}\n  zip:\n    - {bits: [4, 8], g: [128, -1]}\n";
        let (s, d) = expand(src);
        assert!(d.is_empty());
        assert_eq!(s.axis_names().collect::<Vec<_>>(), ["m", "bits", "g"]);
        assert_eq!(show(&s), ["a,4,128", "a,8,-1", "b,4,128", "b,8,-1"]);
    }

    #[test]
    fn exclude_drops_matching_points_and_include_appends_new_ones() {
        let src = "sweep:\n  grid: {m: [a, b], s: [1, 2]}\n  exclude:\n    - {m: a, s: 2}\n    - {m: b}\n  include:\n    - {m: c, s: 1}\n    - {m: a, s: 1.0}\n    - {m: a, s: 1}\n";
        let (s, d) = expand(src);
        assert!(d.is_empty(), "{d:?}");
        // `s: 1.0` is a float, unlike the integer 1, so it is a new point; `s: 1` is a repeat.
        assert_eq!(show(&s), ["a,1", "c,1", "a,1.0"]);
    }

    #[test]
    fn projections_identify_equal_values() {
        let (s, _) = expand("sweep:\n  grid: {m: [a, b], s: [0.5, 0.50]}\n");
        // 0.5 and 0.50 are the same value: reported as a repeat.
        assert_eq!(s.points.len(), 2);
        let (s, _) = expand("sweep:\n  grid: {m: [a, b], s: [1, 2]}\n");
        let keys: Vec<String> = s.points.iter().map(|p| projection_key(p, &[0])).collect();
        assert_eq!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
    }

    #[test]
    fn sweep_mistakes_are_all_reported() {
        let src = "sweep:\n  grid: {m: [a, b], s: []}\n  zip:\n    - {m: [1, 2], q: [1, 2, 3], r: [1]}\n  exclude:\n    - {mm: a}\n  include:\n    - {m: a}\n";
        let (_, d) = expand(src);
        let msgs: Vec<&str> = d.iter().map(|d| d.message.as_str()).collect();
        assert!(
            msgs.iter().any(|m| m.contains("at least one value")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("declared twice")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("`q` has 3 values, `r` has 1"))
                || msgs.iter().any(|m| m.contains("equal lengths")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("unknown sweep axis `mm`; did you mean `m`?")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("missing axis")), "{msgs:?}");
    }

    #[test]
    fn huge_sweeps_are_refused() {
        let axes: String = (0..6)
            .map(|i| format!("    a{i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"))
            .collect();
        let (s, d) = expand(&format!("sweep:\n  grid:\n{axes}"));
        assert!(s.points.is_empty());
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("1000000 points"), "{}", d[0].message);
    }

    #[test]
    fn unknown_axis_help_never_ends_in_an_empty_list() {
        let mut sink = Sink::new(PathBuf::from("t.yaml"), "");
        let src = "sweep:\n  exclude: [{m: a}]\n";
        let root = super::super::yaml::parse(src, &mut sink).unwrap();
        parse(Some(&root.as_map().unwrap()[0].1), &mut sink);
        let d = sink.finish();
        let help = d.0[0].help.clone().unwrap();
        assert!(!help.trim_end().ends_with(':'), "{help}");
        assert!(help.contains("no axes are declared"), "{help}");
    }

    #[test]
    fn excluding_everything_is_an_error() {
        let (s, d) = expand("sweep:\n  grid: {m: [a, b]}\n  exclude: [{m: a}, {m: b}]\n");
        assert!(s.points.is_empty());
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].line, d[0].col), (3, 3));
        assert!(d[0].message.contains("every sweep point is excluded"));
    }
}
