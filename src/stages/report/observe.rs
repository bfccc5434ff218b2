//! What a report reads: one observation per input instance (its metrics, or why there are none),
//! and the provenance of them all, from a plan and whatever the cache holds.
//!
//! The same function serves the report stage (every input is in the cache) and `whittle report`
//! (inputs may be pending or failed), so both render the same files from the same data.

use std::collections::HashMap;

use serde_json::Value;

use super::provenance::Provenance;
use super::ReportError;
use super::ReportSpec;
use crate::cache::key::Params;
use crate::cache::Entry;
use crate::model::TokenizerSemantics;
use crate::pipeline::spec::{instance_label, Point};
use crate::stages::calibrate::Accumulation;
use crate::stages::{ancestors, Dag, NodeId, StageKind, StageSpec};

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
    /// The entry's `metrics.json` (hash-checked), in the order the stage recorded them.
    pub metrics: Vec<(String, Value)>,
    pub task: Option<String>,
    pub dataset: Option<String>,
    /// Content digest (hex) of the weights evaluated.
    pub weights: Option<String>,
    /// The evaluated model's deployed size (see `MetricRef::ModelMb`).
    pub model_bytes: Option<u64>,
    /// The same model dense in its dtype.
    pub dense_bytes: Option<u64>,
    pub seqlen: Option<u64>,
    /// The device that computed the entry.
    pub device: Option<String>,
}

impl Measurement {
    /// Reads the entry's metrics from `metrics.json`, checked against its recorded hash (and
    /// the manifest's copy against it), so neither a flipped byte nor an edited manifest reaches
    /// a table.
    pub fn from_entry(entry: &Entry) -> Result<Self, ReportError> {
        let m = entry.manifest();
        let meta = &m.meta;
        let checked = entry.metrics()?.unwrap_or_default();
        let text = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
        let size = |k: &str| {
            meta.get("model_size")
                .and_then(|s| s.get(k))
                .and_then(Value::as_u64)
        };
        let seqlen = meta
            .get("seqlen")
            .or_else(|| checked.get("seqlen"))
            .and_then(Value::as_u64);
        let metrics: Vec<(String, Value)> = checked.into_iter().collect();
        Ok(Measurement {
            metrics,
            task: text("task"),
            dataset: text("dataset"),
            weights: text("weights"),
            // `model_size`, not the `model_bytes` older entries recorded (the overlay's storage).
            model_bytes: size("bytes"),
            dense_bytes: size("dense_bytes"),
            seqlen,
            device: Some(m.device.clone()),
        })
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
    /// The compression stage whose weights it measures, with its parameters (e.g.
    /// `pq (method=rtn, bits=8, …)`); `None` when the weights are those of a `load` or `train`
    /// stage with no compression on the way (the dense baseline) or it measures no weights.
    pub compressed: Option<String>,
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
    dag: &dyn Dag,
    report: NodeId,
    state: &dyn Fn(NodeId) -> InputState,
) -> Result<ReportData, ReportError> {
    let StageSpec::Report(spec) = dag.spec(report) else {
        return Err(ReportError::Internal(format!(
            "`{}` is not a report stage",
            dag.label(report)
        )));
    };
    let pipeline = dag.pipeline();
    let mut observations = Vec::with_capacity(spec.inputs.len());
    let mut input_nodes = Vec::new();
    for r in &spec.inputs {
        let id = dag.node_of(*r).ok_or_else(|| {
            ReportError::Internal("a report input is not in the plan".to_string())
        })?;
        input_nodes.push(id);
        let stage = &pipeline.stages[r.stage];
        let point = stage.instances[r.instance].point.clone();
        let outcome = match state(id) {
            InputState::Ready(e) => Outcome::Measured(Measurement::from_entry(&e)?),
            InputState::Pending => Outcome::Pending,
            InputState::Failed => Outcome::Failed,
        };
        observations.push(Observation {
            stage: stage.name.clone(),
            group: String::new(),
            label: instance_label(&stage.name, &point, &pipeline.axes),
            point,
            compressed: compressed(dag, id),
            outcome,
        });
    }
    let groups = group_stages(dag, spec);
    for o in &mut observations {
        if let Some(g) = groups.iter().find(|g| g.stages.contains(&o.stage)) {
            o.group = g.name.clone();
        }
    }
    let provenance = provenance(dag, &input_nodes, &observations, state);
    Ok(ReportData {
        title: format!("{}/{}", pipeline.name, dag.stage(report)),
        axes: pipeline.axes.clone(),
        observations,
        groups,
        provenance,
    })
}

/// The weights node an input measures: an evaluation's `model`, or the node itself.
fn weights_of(dag: &dyn Dag, id: NodeId) -> NodeId {
    match dag.spec(id) {
        StageSpec::Evaluate(_) => dag.input(id, "model").unwrap_or(id),
        _ => id,
    }
}

/// Decided by lineage: the outermost compression stage on the way from the weights' `load` or
/// `train` stage, labelled with its parameters; `None` for uncompressed weights.
pub fn compressed(dag: &dyn Dag, id: NodeId) -> Option<String> {
    let (_, chain) = crate::stages::weights::chain_in(dag, weights_of(dag, id)).ok()?;
    let top = *chain.last()?;
    let params: Vec<String> = dag
        .spec(top)
        .key_params()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Some(format!("{} ({})", dag.label(top), params.join(", ")))
}

/// What an instance measures, for grouping: its kind, its key parameters and the datasets it
/// reads. The point it is on stays out unless it sets one of these: stages that measure the same
/// thing on other points share a column.
#[derive(PartialEq)]
struct Measure<'p> {
    kind: StageKind,
    params: Params,
    datasets: Vec<(&'static str, &'p str)>,
}

/// Column groups: a stage joins the first group whose stages measure what it measures on other
/// sweep points (no instance of it has the point of an instance already in the group).
fn group_stages(dag: &dyn Dag, spec: &ReportSpec) -> Vec<Group> {
    let pipeline = dag.pipeline();
    let mut stages: Vec<usize> = Vec::new();
    for r in &spec.inputs {
        if !stages.contains(&r.stage) {
            stages.push(r.stage);
        }
    }
    // What each stage's instances measure, once per stage.
    let signatures: HashMap<usize, Vec<Measure>> = stages
        .iter()
        .map(|&s| {
            let mut v: Vec<Measure> = Vec::new();
            for i in &pipeline.stages[s].instances {
                let m = Measure {
                    kind: i.spec.kind(),
                    params: i.spec.key_params(),
                    datasets: i.spec.datasets(),
                };
                if !v.contains(&m) {
                    v.push(m);
                }
            }
            (s, v)
        })
        .collect();
    // What tells instances apart: the sweep point and, for instances that use no axis, which
    // compressed model they measure (a dense and a compressed evaluation share a column).
    let points = |s: usize| -> Vec<(&Point, Option<String>)> {
        pipeline.stages[s]
            .instances
            .iter()
            .enumerate()
            .map(|(instance, i)| {
                let node = dag.node_of(crate::pipeline::spec::InstanceRef { stage: s, instance });
                let model = match node {
                    Some(n) if i.point.is_empty() => compressed(dag, n),
                    _ => None,
                };
                (&i.point, model)
            })
            .collect()
    };
    let mut members: Vec<Vec<usize>> = Vec::new();
    for &s in &stages {
        let sig = &signatures[&s];
        let pts = points(s);
        let joins = members.iter().position(|g| {
            g.iter()
                .any(|&m| signatures[&m].iter().any(|x| sig.contains(x)))
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
    dag: &dyn Dag,
    inputs: &[NodeId],
    observations: &[Observation],
    state: &dyn Fn(NodeId) -> InputState,
) -> Provenance {
    let pipeline = dag.pipeline();
    let mut p = Provenance::new(pipeline);
    for id in ancestors(dag, inputs) {
        let spec = dag.spec(id);
        if let StageSpec::Calibrate(c) = spec {
            if c.accumulation != Accumulation::Exact {
                p.add_accumulation(c.accumulation.as_str());
            }
        }
        // The base models: a checkpoint by its `models` name, a trained one by its stage.
        let base = match spec {
            StageSpec::Load(l) => Some((l.model.as_str(), l.tokenizer_semantics)),
            // A trained model's tokenizer is its own word-level file, applied as written.
            StageSpec::Train(_) => Some((dag.stage(id), TokenizerSemantics::default())),
            _ => None,
        };
        if let Some((name, semantics)) = base {
            let weights = match state(id) {
                InputState::Ready(e) => Some(e.content()),
                _ => None,
            };
            p.add_model(name, weights, semantics);
        }
        for (role, name) in spec.datasets() {
            if let Some((_, d)) = dag.files(id).get(role) {
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
