//! What a report reads: one observation per input instance (its metrics, or why there are none),
//! and the provenance of them all, from a plan and whatever the cache holds.
//!
//! The same function serves the report stage (every input is in the cache) and `whittle report`
//! (inputs may be pending or failed), so both render the same files from the same data.

use serde_json::Value;

use super::provenance::Provenance;
use super::ReportError;
use crate::cache::Entry;
use crate::pipeline::spec::{Point, ReportSpec, StageSpec};
use crate::plan::{ancestors, instance_label, NodeId, Plan};

/// What the caller knows about a node's output.
#[derive(Clone, Debug)]
pub enum InputState {
    Ready(Entry),
    /// Not in the cache: never run, or waiting on inputs that are not.
    Pending,
    /// It, or a stage it needs, failed in the latest run.
    Failed,
}

/// What became of one input instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Measured(Measurement),
    Pending,
    Failed,
}

/// What an input entry's manifest says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    /// `meta.metrics`, in the order the stage recorded them.
    pub metrics: Vec<(String, Value)>,
    pub task: Option<String>,
    pub dataset: Option<String>,
    /// Content digest (hex) of the weights evaluated.
    pub weights: Option<String>,
    pub model_bytes: Option<u64>,
    pub seqlen: Option<u64>,
    /// The device that computed the entry.
    pub device: Option<String>,
}

impl Measurement {
    pub fn from_entry(entry: &Entry) -> Self {
        let m = entry.manifest();
        let meta = &m.meta;
        let metrics: Vec<(String, Value)> = meta
            .get("metrics")
            .and_then(Value::as_object)
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let text = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
        let seqlen = meta
            .get("seqlen")
            .or_else(|| meta.get("metrics").and_then(|x| x.get("seqlen")))
            .and_then(Value::as_u64);
        Measurement {
            metrics,
            task: text("task"),
            dataset: text("dataset"),
            weights: text("weights"),
            model_bytes: meta.get("model_bytes").and_then(Value::as_u64),
            seqlen,
            device: Some(m.device.clone()),
        }
    }

    pub fn metric(&self, name: &str) -> Option<&Value> {
        self.metrics.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// One input instance of a report.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The pipeline stage it belongs to.
    pub stage: String,
    /// Its column group (see [`ReportData::groups`]).
    pub group: String,
    /// Its sweep point (the axes its stage uses).
    pub point: Point,
    /// `stage[axis=value,…]`.
    pub label: String,
    pub outcome: Outcome,
}

/// Stages that measure the same thing (same kind, parameters and datasets) on different models
/// share columns: the dense evaluation's value goes in the same column as the sweep's.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The member stage with the most axes (the first on a tie): the column prefix.
    pub name: String,
    pub stages: Vec<String>,
}

/// Everything a report renders.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportData {
    /// `<pipeline>/<report stage>`.
    pub title: String,
    /// Sweep axes in declaration order.
    pub axes: Vec<String>,
    /// In the order of the report's inputs.
    pub observations: Vec<Observation>,
    pub groups: Vec<Group>,
    pub provenance: Provenance,
}

impl ReportData {
    /// The group a stage's values are shown under.
    pub fn group_of(&self, stage: &str) -> Option<&Group> {
        self.groups
            .iter()
            .find(|g| g.stages.iter().any(|s| s == stage))
    }

    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.observations.iter().filter(|o| f(&o.outcome)).count()
    }
}

/// Reads what the report node `report` shows, asking `state` about each node it depends on.
pub fn gather(
    plan: &Plan,
    report: NodeId,
    state: &dyn Fn(NodeId) -> InputState,
) -> Result<ReportData, ReportError> {
    let node = &plan.nodes[report];
    let StageSpec::Report(spec) = &node.spec else {
        return Err(ReportError::Internal(format!(
            "`{}` is not a report stage",
            node.label
        )));
    };
    let pipeline = &plan.pipeline;
    let mut observations = Vec::with_capacity(spec.inputs.len());
    let mut input_nodes = Vec::new();
    for r in &spec.inputs {
        let id = plan.node_of(*r).ok_or_else(|| {
            ReportError::Internal("a report input is not in the plan".to_string())
        })?;
        input_nodes.push(id);
        let stage = &pipeline.stages[r.stage];
        let point = stage.instances[r.instance].point.clone();
        let outcome = match state(id) {
            InputState::Ready(e) => Outcome::Measured(Measurement::from_entry(&e)),
            InputState::Pending => Outcome::Pending,
            InputState::Failed => Outcome::Failed,
        };
        observations.push(Observation {
            stage: stage.name.clone(),
            group: String::new(),
            label: instance_label(&stage.name, &point, &pipeline.axes),
            point,
            outcome,
        });
    }
    let groups = group_stages(plan, spec);
    for o in &mut observations {
        if let Some(g) = groups.iter().find(|g| g.stages.contains(&o.stage)) {
            o.group = g.name.clone();
        }
    }
    let provenance = provenance(plan, &input_nodes, &observations, state);
    Ok(ReportData {
        title: format!("{}/{}", pipeline.name, node.stage),
        axes: pipeline.axes.clone(),
        observations,
        groups,
        provenance,
    })
}

/// Column groups: a stage joins the first group whose stages measure what it measures on other
/// sweep points (no instance of it has the point of an instance already in the group).
fn group_stages(plan: &Plan, spec: &ReportSpec) -> Vec<Group> {
    let pipeline = &plan.pipeline;
    let mut stages: Vec<usize> = Vec::new();
    for r in &spec.inputs {
        if !stages.contains(&r.stage) {
            stages.push(r.stage);
        }
    }
    let signature = |s: usize| -> Vec<String> {
        let mut v: Vec<String> = pipeline.stages[s]
            .instances
            .iter()
            .map(|i| {
                format!(
                    "{}|{:?}|{:?}",
                    i.spec.kind(),
                    i.spec.key_params(),
                    i.spec.datasets()
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let points = |s: usize| -> Vec<&Point> {
        pipeline.stages[s]
            .instances
            .iter()
            .map(|i| &i.point)
            .collect()
    };
    let mut members: Vec<Vec<usize>> = Vec::new();
    for &s in &stages {
        let sig = signature(s);
        let pts = points(s);
        let joins = members.iter().position(|g| {
            g.iter()
                .any(|&m| signature(m).iter().any(|x| sig.contains(x)))
                && g.iter()
                    .all(|&m| points(m).iter().all(|p| !pts.contains(p)))
        });
        match joins {
            Some(g) => members[g].push(s),
            None => members.push(vec![s]),
        }
    }
    members
        .into_iter()
        .map(|g| {
            // `max_by_key` keeps the last maximum; scan in reverse to keep the first.
            let lead = g
                .iter()
                .rev()
                .max_by_key(|&&s| pipeline.stages[s].axes.len())
                .copied()
                .unwrap_or(g[0]);
            Group {
                name: pipeline.stages[lead].name.clone(),
                stages: g.iter().map(|&s| pipeline.stages[s].name.clone()).collect(),
            }
        })
        .collect()
}

fn provenance(
    plan: &Plan,
    inputs: &[NodeId],
    observations: &[Observation],
    state: &dyn Fn(NodeId) -> InputState,
) -> Provenance {
    let pipeline = &plan.pipeline;
    let mut p = Provenance::new(pipeline);
    for id in ancestors(plan, inputs) {
        let n = &plan.nodes[id];
        if let StageSpec::Load(l) = &n.spec {
            let weights = match state(id) {
                InputState::Ready(e) => Some(e.content()),
                _ => None,
            };
            p.add_model(&l.model, weights, l.tokenizer_semantics);
        }
        for (role, name) in n.spec.datasets() {
            if let Some((_, d)) = n.files.get(role) {
                p.add_dataset(name, *d);
            }
        }
    }
    for o in observations {
        match &o.outcome {
            Outcome::Measured(m) => {
                if let Some(s) = m.seqlen {
                    p.add_seqlen(s);
                }
                if let Some(d) = &m.device {
                    p.add_device(d);
                }
            }
            Outcome::Pending => p.points.pending += 1,
            Outcome::Failed => p.points.failed += 1,
        }
        p.points.total += 1;
    }
    p.sort();
    p
}
