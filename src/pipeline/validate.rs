//! Cross-cutting checks: files on disk, which sweep axes each stage uses, and reference cycles.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use petgraph::graph::{DiGraph, NodeIndex};

use super::diag::{suggest, Sink};
use super::interp::{self, Piece};
use super::schema::{text_of, RawStage};
use super::spec::StageKind;
use super::sweep::Sweep;
use super::yaml::{join, Mark, Node};

const PATH_HELP: &str = "paths are relative to the directory of the pipeline file";

/// A model directory: must exist and hold `config.json`. Returns it canonicalized.
pub fn model_dir(
    base: &Path,
    rel: &str,
    mark: Mark,
    key_path: &str,
    sink: &mut Sink,
) -> Option<PathBuf> {
    let dir = base.join(rel);
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        let what = format!("{what}{}", kind_note(&dir));
        sink.error(
            mark,
            key_path,
            format!(
                "model directory `{rel}` {what} (looked for {})",
                dir.display()
            ),
        )
        .with_help(PATH_HELP);
        return None;
    }
    if !dir.join("config.json").is_file() {
        sink.error(
            mark,
            key_path,
            format!("model directory `{rel}` has no config.json"),
        )
        .with_help("point at a Hugging Face model folder (config.json, tokenizer.json, weights)");
        return None;
    }
    // The run would fail on these at its first stage: find them now, nothing runs until the
    // whole file is valid.
    let checked = crate::model::Checkpoint::resolve(&dir)
        .and_then(|c| crate::model::ModelConfig::from_file(&c.config));
    if let Err(e) = checked {
        sink.error(mark, key_path, format!("model directory `{rel}`: {e}"))
            .with_help(
                "point at a Hugging Face model folder (config.json, tokenizer.json, weights)",
            );
        return None;
    }
    Some(dir.canonicalize().unwrap_or(dir))
}

/// What a path that exists but is not a regular file or directory is, for messages.
fn kind_note(path: &Path) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(m) = std::fs::metadata(path) {
            let t = m.file_type();
            if t.is_char_device() || t.is_block_device() {
                return " (it is a device)";
            }
            if t.is_fifo() {
                return " (it is a named pipe)";
            }
            if t.is_socket() {
                return " (it is a socket)";
            }
        }
    }
    let _ = path;
    ""
}

/// A dataset file: must exist and be a file. Returns it canonicalized.
pub fn dataset_file(
    base: &Path,
    rel: &str,
    mark: Mark,
    key_path: &str,
    sink: &mut Sink,
) -> Option<PathBuf> {
    dataset_path(base, rel, mark, key_path, sink, false)
}

fn dataset_path(
    base: &Path,
    rel: &str,
    mark: Mark,
    key_path: &str,
    sink: &mut Sink,
    dir: bool,
) -> Option<PathBuf> {
    let path = base.join(rel);
    let (fits, what, problem) = match dir {
        false => (path.is_file(), "file", "is a directory, not a file"),
        true => (
            path.is_dir(),
            "directory",
            "is a file; `format: lama` reads a directory holding `relations.jsonl`",
        ),
    };
    if !fits {
        let problem = if !path.exists() {
            "does not exist".to_string()
        } else if path.is_dir() || path.is_file() {
            problem.to_string()
        } else {
            format!("is not a regular {what}{}", kind_note(&path))
        };
        sink.error(
            mark,
            key_path,
            format!(
                "dataset {what} `{rel}` {problem} (looked for {})",
                path.display()
            ),
        )
        .with_help(PATH_HELP);
        return None;
    }
    Some(path.canonicalize().unwrap_or(path))
}

/// A dataset directory (LAMA's layout) relative to the pipeline file.
pub fn dataset_dir(
    base: &Path,
    rel: &str,
    mark: Mark,
    key_path: &str,
    sink: &mut Sink,
) -> Option<PathBuf> {
    dataset_path(base, rel, mark, key_path, sink, true)
}

/// For each stage, the sweep axes it uses (indices into `sweep.axes`, ascending = declaration
/// order): those it interpolates, plus those of every stage it references as written. Reports
/// unknown axes, axes in report stages, reference cycles and axes no stage uses.
pub fn stage_axes(stages: &[RawStage], sweep: &Sweep, sink: &mut Sink) -> Vec<Vec<usize>> {
    let n = stages.len();
    let mut direct: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for (i, st) in stages.iter().enumerate() {
        let spath = join("stages", &st.name);
        for (key, _, value) in &st.params {
            let kp = join(&spath, key);
            report_unterminated(value, &kp, sink);
            let mut found = Vec::new();
            interp::axes_in(value, &mut found);
            for (axis, at) in found {
                if st.kind == Some(StageKind::Report) {
                    sink.error(
                        at.mark,
                        kp.clone(),
                        format!("report stage `{}` cannot use sweep axes", st.name),
                    )
                    .with_help("a report gathers every instance of its inputs; list the stages");
                    continue;
                }
                match sweep.axis_index(&axis) {
                    Some(a) => {
                        direct[i].insert(a);
                    }
                    None => {
                        let s = suggest(&axis, sweep.axis_names());
                        let d = sink.error(
                            at.mark,
                            kp.clone(),
                            format!("unknown sweep axis `{axis}` in `${{{axis}}}`{s}"),
                        );
                        if sweep.axes.is_empty() {
                            d.with_help("declare axes under `sweep: grid:` or `sweep: zip:`");
                        }
                    }
                }
            }
        }
    }

    // The reference graph as written (interpolated references expand to every value they take).
    let mut g: DiGraph<usize, (String, Mark)> = DiGraph::new();
    let idx: Vec<NodeIndex> = (0..n).map(|i| g.add_node(i)).collect();
    for (i, st) in stages.iter().enumerate() {
        let Some(kind) = st.kind else { continue };
        for key in kind.ref_keys() {
            let Some(node) = st.param(key) else { continue };
            let items: Vec<&Node> = match node.as_seq() {
                Some(items) => items.iter().collect(),
                None => vec![node],
            };
            for item in items {
                for name in referenced_names(item, sweep) {
                    if let Some(j) = stages.iter().position(|s| s.name == name) {
                        if !g.contains_edge(idx[i], idx[j]) {
                            g.add_edge(idx[i], idx[j], (key.to_string(), item.mark));
                        }
                    }
                }
            }
        }
    }

    // Strongly connected components come out referenced-first, so each stage's references are
    // done before it.
    let mut axes: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let sccs = petgraph::algo::tarjan_scc(&g);
    for scc in &sccs {
        let mut set = BTreeSet::new();
        for &v in scc {
            let i = g[v];
            set.extend(direct[i].iter().copied());
            if stages[i].kind == Some(StageKind::Report) {
                continue;
            }
            for w in g.neighbors(v) {
                set.extend(axes[g[w]].iter().copied());
            }
        }
        for &v in scc {
            let i = g[v];
            axes[i] = if stages[i].kind == Some(StageKind::Report) {
                BTreeSet::new()
            } else {
                set.clone()
            };
        }
        report_cycle(&g, scc, stages, sink);
    }

    if !stages.is_empty() {
        let used: BTreeSet<usize> = direct.iter().flatten().copied().collect();
        for (a, axis) in sweep.axes.iter().enumerate() {
            if !used.contains(&a) {
                sink.error(
                    axis.mark,
                    axis.path.clone(),
                    format!("sweep axis `{}` is not used by any stage", axis.name),
                )
                .with_help(format!(
                    "use it as `${{{}}}` in a stage parameter, or remove it",
                    axis.name
                ));
            }
        }
    }
    axes.into_iter().map(|s| s.into_iter().collect()).collect()
}

fn report_unterminated(node: &Node, kp: &str, sink: &mut Sink) {
    match &node.kind {
        super::yaml::NodeKind::Scalar(s, _) => {
            if let Err(msg) = interp::pieces(s) {
                sink.error(node.mark, kp, msg)
                    .with_help("write `${axis}` to use a sweep axis");
            }
        }
        super::yaml::NodeKind::Seq(items) => {
            items.iter().for_each(|n| report_unterminated(n, kp, sink))
        }
        super::yaml::NodeKind::Map(es) => es
            .iter()
            .for_each(|(_, v)| report_unterminated(v, kp, sink)),
    }
}

/// The stage names a reference can take: itself if literal, or every substituted value.
fn referenced_names(node: &Node, sweep: &Sweep) -> Vec<String> {
    let Some(text) = text_of(node) else {
        return Vec::new();
    };
    let Ok(ps) = interp::pieces(text) else {
        return Vec::new();
    };
    if !ps.iter().any(|p| matches!(p, Piece::Axis(_))) {
        return vec![text.to_string()];
    }
    let mut out: Vec<String> = Vec::new();
    for point in &sweep.points {
        let lookup = |a: &str| sweep.axis_index(a).map(|i| &point[i]);
        let (n, _) = interp::substitute(node, &lookup);
        if let Some(t) = text_of(&n) {
            if !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
    }
    out
}

/// Reports one cycle through a strongly connected component, as `a → b → a`.
fn report_cycle(
    g: &DiGraph<usize, (String, Mark)>,
    scc: &[NodeIndex],
    stages: &[RawStage],
    sink: &mut Sink,
) {
    let Some(&start) = scc.iter().min_by_key(|v| g[**v]) else {
        return;
    };
    let self_loop = g.contains_edge(start, start);
    if scc.len() < 2 && !self_loop {
        return;
    }
    // Shortest path from `start` back to itself inside the component (breadth first).
    let in_scc = |v: NodeIndex| scc.contains(&v);
    let mut path = vec![start];
    if !self_loop {
        let mut prev = std::collections::HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut found = None;
        'bfs: while let Some(v) = queue.pop_front() {
            for w in g.neighbors(v) {
                if w == start {
                    found = Some(v);
                    break 'bfs;
                }
                if in_scc(w) && !prev.contains_key(&w) && w != start {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let Some(mut v) = found else { return };
        let mut back = vec![];
        while v != start {
            back.push(v);
            v = prev[&v];
        }
        back.reverse();
        path.extend(back);
    }
    path.push(start);
    let names: Vec<&str> = path.iter().map(|v| stages[g[*v]].name.as_str()).collect();
    let Some(edge) = g.find_edge(path[0], path[1]) else {
        return;
    };
    let (key, mark) = &g[edge];
    let first = &stages[g[start]].name;
    sink.error(
        *mark,
        join(&join("stages", first), key),
        format!(
            "stages reference each other in a cycle: {}",
            names.join(" → ")
        ),
    )
    .with_help("each stage must only read stages that do not depend on it");
}
