//! The validated, fully typed form of a pipeline file, with sweeps expanded into stage instances.
//!
//! Everything here is checked: references resolve, values are in range, files exist. Nothing in it
//! is optional that a stage needs, so the planner and the stages never re-validate.

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use super::resources::Resources;
use crate::cache::key::ParamValue;
/// Datasets are read by [`crate::data`], which owns their formats.
pub use crate::data::{DatasetFormat, DatasetSource, TextDocuments};
/// The stage kinds are declared in [`crate::stages`].
pub use crate::stages::{StageKind, StageSpec};

/// A validated pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The pipeline file, canonicalized.
    pub path: PathBuf,
    /// blake3 of the file's bytes (provenance only: keys never depend on it).
    pub source_digest: crate::cache::key::Digest,
    pub name: String,
    pub models: BTreeMap<String, ModelSource>,
    pub datasets: BTreeMap<String, DatasetSource>,
    /// Axis names in the order the file declares them.
    pub axes: Vec<String>,
    /// Stages in file order; each expanded into its instances.
    pub stages: Vec<Stage>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSource {
    pub name: String,
    /// Directory holding `config.json`, `tokenizer.json` and the weights.
    pub dir: PathBuf,
}

/// One named stage of the file.
#[derive(Clone, Debug)]
pub struct Stage {
    pub name: String,
    pub kind: StageKind,
    /// The sweep axes this stage depends on (directly or through its inputs), in declaration order.
    pub axes: Vec<String>,
    /// One instance per distinct assignment of `axes` among the sweep's points (exactly one if
    /// `axes` is empty), in sweep order.
    pub instances: Vec<Instance>,
    /// 1-based line of the stage's key in the file, for messages.
    pub line: usize,
    /// What a cluster job of this stage asks for (`resources:`); never part of a key.
    pub resources: Resources,
}

/// A sweep point restricted to some axes.
pub type Point = BTreeMap<String, ParamValue>;

/// Which instance of which stage: indices into `Pipeline::stages` and `Stage::instances`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceRef {
    pub stage: usize,
    pub instance: usize,
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub point: Point,
    pub spec: StageSpec,
}

impl Pipeline {
    /// The label of an instance: `stage` or `stage[a=1,b=x]`, axes in declaration order.
    pub fn label(&self, r: InstanceRef) -> String {
        let s = &self.stages[r.stage];
        instance_label(&s.name, &s.instances[r.instance].point, &self.axes)
    }
}

/// `stage` or `stage[a=1,b=x]`, axes in the pipeline's declaration order.
pub fn instance_label(stage: &str, point: &Point, axes: &[String]) -> String {
    if point.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = axes
        .iter()
        .filter_map(|a| point.get(a).map(|v| format!("{a}={v}")))
        .collect();
    format!("{stage}[{}]", parts.join(","))
}
