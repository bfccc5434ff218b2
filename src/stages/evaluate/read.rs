//! The evaluate stage: which task, on which dataset, with the keys each task takes.
//!
//! A key that belongs to another task is an error that names the task it belongs to, so a
//! pipeline never carries a setting that silently does nothing.

use std::path::Path;

use super::{EvalTask, EvaluateSpec, LamaSplit, PplMode, Ranking, TaskFile};
use crate::eval::choice::ChoiceTask;
use crate::eval::generation::GenerationTask;
use crate::pipeline::diag::suggest;
use crate::pipeline::fields::{substitute, Fields, WEIGHTS};
use crate::pipeline::spec::{DatasetFormat, InstanceRef};
use crate::pipeline::sweep::projection_key;
use crate::stages::StageKind;

const TASKS: [&str; 5] = [
    "perplexity",
    "divergence",
    "knowledge",
    "multiple-choice",
    "generation",
];

/// Every task-specific key and the tasks that take it.
const TASK_KEYS: [(&str, &[&str]); 11] = [
    ("seqlen", &["perplexity", "divergence"]),
    ("join", &["perplexity", "divergence"]),
    ("mode", &["perplexity"]),
    ("stride", &["perplexity"]),
    ("reference", &["divergence", "knowledge"]),
    ("ranking", &["knowledge"]),
    ("splits", &["knowledge"]),
    ("relations", &["knowledge"]),
    ("known_only", &["knowledge"]),
    ("task_file", &["multiple-choice", "generation"]),
    ("max_new_tokens", &["generation"]),
];

pub(super) fn read(f: &mut Fields) -> Option<EvaluateSpec> {
    let model = f.model_ref();
    let task = f.req_choice("task", &TASKS);
    let dataset = f.name_in("dataset", f.env.datasets, "datasets");
    let limit = f
        .int("limit", 1, i64::MAX, "an integer ≥ 1")
        .map(|l| l as usize);
    let batch_size = f.count("batch_size", 1, 8);
    let task = task?;
    for (key, tasks) in TASK_KEYS {
        if f.has(key) && !tasks.contains(&task) {
            let takes = tasks.join(" and ");
            f.fail_key(
                key,
                format!("`{key}` does not apply to task `{task}`"),
                format!("`{key}` is a key of {takes} tasks; remove it"),
            );
        }
    }
    if let Some(d) = &dataset {
        dataset_fits(f, task, d);
    }
    let task = match task {
        "perplexity" => perplexity(f, dataset?, limit)?,
        "divergence" => EvalTask::Divergence {
            seqlen: f.count("seqlen", 2, 2048),
            join: join(f),
            limit,
            reference: reference(f, model?)?,
            dataset: dataset?,
        },
        "knowledge" => knowledge(f, model?, dataset?, limit)?,
        "multiple-choice" => EvalTask::MultipleChoice {
            task_file: task_file(f, task, |p| ChoiceTask::from_file(p))?,
            dataset: dataset?,
            limit,
        },
        _ => EvalTask::Generation {
            task_file: task_file(f, task, GenerationTask::from_file)?,
            max_new_tokens: f
                .int("max_new_tokens", 1, 4096, "an integer from 1 to 4096")
                .map(|m| m as usize),
            dataset: dataset?,
            limit,
        },
    };
    Some(EvaluateSpec {
        model: model?,
        task,
        batch_size,
    })
}

fn join(f: &mut Fields) -> String {
    f.text("join", "a string").unwrap_or_else(|| "\n\n".into())
}

fn perplexity(f: &mut Fields, dataset: String, limit: Option<usize>) -> Option<EvalTask> {
    let seqlen = f.count("seqlen", 2, 2048);
    let join = join(f);
    let mode = match f.choice("mode", &["windows", "sliding", "documents"]) {
        Some("sliding") => {
            if !f.has("stride") {
                f.missing(
                    "stride",
                    "add `stride:` (tokens between window starts, e.g. half of `seqlen`)",
                );
                return None;
            }
            let stride = f.int("stride", 1, i64::MAX, "an integer ≥ 1")? as usize;
            if stride > seqlen {
                if let Some((n, o)) = f.get("stride") {
                    let msg = format!("`stride` {stride} is larger than `seqlen` {seqlen}");
                    let help = "a stride above seqlen would skip tokens; use `mode: windows` \
                                for non-overlapping windows";
                    f.fail("stride", &n, &o, msg, None, Some(help.into()));
                }
                return None;
            }
            PplMode::Sliding { stride }
        }
        Some("documents") => PplMode::Documents,
        _ => {
            if f.has("stride") {
                f.fail_key(
                    "stride",
                    "`stride` only applies to `mode: sliding`".into(),
                    "add `mode: sliding` or remove `stride`".into(),
                );
            }
            PplMode::Windows
        }
    };
    if mode == PplMode::Documents && f.has("join") {
        f.fail_key(
            "join",
            "`join` does not apply to `mode: documents`".into(),
            "documents are scored one by one, never joined; remove `join`".into(),
        );
    }
    Some(EvalTask::Perplexity {
        dataset,
        seqlen,
        join,
        limit,
        mode,
    })
}

fn knowledge(
    f: &mut Fields,
    model: InstanceRef,
    dataset: String,
    limit: Option<usize>,
) -> Option<EvalTask> {
    let ranking = match f.choice("ranking", &["vocabulary", "candidates"]) {
        Some("candidates") => Ranking::Candidates,
        _ => Ranking::Vocabulary,
    };
    let known_only = f.has("known_only") && f.boolean("known_only")?;
    let splits = splits(f)?;
    let relations = match f.has("relations") {
        false => Vec::new(),
        true => {
            let what = "a list of relation ids (e.g. `[P19, P36]`)";
            let mut out = Vec::new();
            for (n, o) in f.items("relations", what)? {
                match n.as_scalar() {
                    Some((s, _)) if !n.is_null() && !s.is_empty() => out.push(s.to_string()),
                    _ => {
                        let msg = format!("expected a relation id, found {}", n.describe());
                        f.fail("relations", &n, &o, msg, Some(what), None);
                        return None;
                    }
                }
            }
            out
        }
    };
    Some(EvalTask::Knowledge {
        ranking,
        splits,
        relations,
        limit,
        known_only,
        reference: reference(f, model)?,
        dataset,
    })
}

fn splits(f: &mut Fields) -> Option<Vec<LamaSplit>> {
    if !f.has("splits") {
        return Some(vec![LamaSplit::Trex]);
    }
    let names: Vec<&str> = LamaSplit::ALL.iter().map(|s| s.as_str()).collect();
    let what = "a list of `trex`, `google_re`, `squad`";
    let mut out = Vec::new();
    for (n, o) in f.items("splits", what)? {
        let text = n.as_scalar().map_or("", |(s, _)| s);
        match LamaSplit::ALL.into_iter().find(|s| s.as_str() == text) {
            Some(s) if !out.contains(&s) => out.push(s),
            Some(s) => {
                let msg = format!("split `{}` is listed twice", s.as_str());
                f.fail("splits", &n, &o, msg, None, None);
                return None;
            }
            None => {
                let s = suggest(text, names.iter().copied());
                let msg = format!("expected a LAMA split, found {}{s}", n.describe());
                f.fail("splits", &n, &o, msg, Some(what), None);
                return None;
            }
        }
    }
    if out.is_empty() {
        f.fail_key(
            "splits",
            "`splits` is empty".into(),
            "leave `splits` out to probe T-REx only".into(),
        );
        return None;
    }
    out.sort();
    Some(out)
}

/// The dataset must read the way the task reads it.
fn dataset_fits(f: &mut Fields, task: &str, name: &str) {
    let Some(source) = f.env.dataset_sources.get(name) else {
        return; // reported with the dataset
    };
    let (fits, want) = match task {
        "perplexity" | "divergence" => (
            source.format.has_documents(),
            "text documents (`format: text`, `jsonl` or `json`)",
        ),
        "knowledge" => (
            source.format == DatasetFormat::Lama,
            "a LAMA directory (`format: lama`)",
        ),
        _ => (
            source.format.has_records(),
            "records (`format: jsonl`, `json` or `squad`)",
        ),
    };
    if !fits {
        let format = source.format.as_str();
        if let Some((n, o)) = f.get("dataset") {
            let msg = format!("task `{task}` reads {want}; dataset `{name}` is `{format}`");
            let help = format!("point `dataset:` at a dataset of {want}");
            f.fail("dataset", &n, &o, msg, None, Some(help));
        }
    }
}

/// `task_file:` relative to the pipeline file; it must exist and read as a task of its kind.
fn task_file<T, E: std::fmt::Display>(
    f: &mut Fields,
    task: &str,
    parse: fn(&Path) -> Result<T, E>,
) -> Option<TaskFile<T>> {
    if !f.has("task_file") {
        f.missing(
            "task_file",
            "add `task_file:` naming a task YAML file, e.g. `tasks/boolq.yaml`",
        );
        return None;
    }
    let rel = f.text("task_file", "a file path")?;
    let path = f.env.base.join(&rel);
    let (n, o) = f.get("task_file")?;
    if path.is_file() {
        let path = path.canonicalize().unwrap_or(path);
        return match parse(&path) {
            Ok(task) => Some(TaskFile { path, task }),
            Err(e) => {
                let msg = format!("task file `{rel}` is not a valid {task} task: {e}");
                f.fail("task_file", &n, &o, msg, None, None);
                None
            }
        };
    }
    let msg = format!(
        "task file `{rel}` does not exist (looked for {})",
        path.display()
    );
    let help = "paths are relative to the pipeline file; the project's task files are in \
                `tasks/`";
    f.fail("task_file", &n, &o, msg, None, Some(help.into()));
    None
}

/// `reference:` if given, else the uncompressed model `model` descends from.
fn reference(f: &mut Fields, model: InstanceRef) -> Option<InstanceRef> {
    if f.has("reference") {
        let (n, o) = f.get("reference")?;
        return f.stage_ref(
            "reference",
            &n,
            &o,
            &|k| {
                matches!(
                    k,
                    StageKind::Load | StageKind::Train | StageKind::Prune | StageKind::Quantize
                )
            },
            WEIGHTS,
        );
    }
    let base = base_of(f, model);
    // Only a file broken elsewhere (and reported there) has no base.
    f.bad |= base.is_none();
    base
}

/// Follows `model:` from stage to stage up to the stage that loads the weights.
fn base_of(f: &mut Fields, mut at: InstanceRef) -> Option<InstanceRef> {
    let env = f.env;
    // References were checked acyclic; the bound only guards against a broken file.
    for _ in 0..=env.stages.len() {
        let stage = &env.stages[at.stage];
        if matches!(stage.kind, Some(StageKind::Load | StageKind::Train)) {
            return Some(at);
        }
        let raw = stage.param("model")?;
        let (n, _) = substitute(env, raw, f.point);
        let name = n.as_scalar().map(|(s, _)| s)?;
        let j = env.stages.iter().position(|s| s.name == name)?;
        let key = projection_key(f.point, &env.stage_axes[j]);
        let instance = *env.instance_index[j].get(&key)?;
        at = InstanceRef { stage: j, instance };
    }
    None
}
