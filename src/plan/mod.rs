//! The plan: a DAG of stage instances, and for each node whether it must run and why.
//!
//! Building the plan ([`build`]) is static: sweeps are already expanded by the pipeline loader; here
//! instances become nodes, identical instances (same kind, parameters, files and inputs) merge into
//! one node, and input files are hashed. Resolving it ([`resolve`]) is the rebuilder: a node's cache
//! key is made of the *content* digests of its inputs, so it is known once every input is cached;
//! a node below one that must run is pending until that input has run (and may then turn out cached:
//! identical weights reached by two routes share what comes after them).

mod build;
mod render;
mod resolve;
mod summary;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use build::{build, PlanError};
pub use render::{render, Format};
pub use resolve::{
    ancestors, explain, key_inputs, lookup, reachable_keys, resolve, History, Reason, Status,
};
pub use summary::{StageSummary, StatusFormat, StatusSummary, STATUS_JSON_SCHEMA};

use crate::cache::key::{Digest, Params};
use crate::pipeline::spec::{InstanceRef, Pipeline, Point, StageKind, StageSpec};

/// Index of a node in [`Plan::nodes`].
pub type NodeId = usize;

#[derive(Debug)]
pub struct Plan {
    pub pipeline: Pipeline,
    /// Nodes in a topological order: every input comes before its consumers.
    pub nodes: Vec<Node>,
    pub graph: petgraph::graph::DiGraph<NodeId, String>,
}

#[derive(Clone, Debug)]
pub struct Node {
    /// `stage` or `stage[axis=value,…]`.
    pub label: String,
    pub stage: String,
    pub spec: StageSpec,
    pub point: Point,
    /// Every pipeline instance this node stands for (more than one when identical ones merged).
    pub instances: Vec<InstanceRef>,
    /// Input nodes by role.
    pub inputs: Vec<(String, NodeId)>,
    /// Files read directly, by role, with their content digests.
    pub files: BTreeMap<String, (PathBuf, Digest)>,
    /// The stage kind's algorithm version.
    pub version: u32,
    pub params: Params,
    /// Digest over kind, version, params, files and the inputs' structural digests: equal for
    /// instances that are certainly the same computation.
    pub structural: Digest,
}

impl Node {
    pub fn kind(&self) -> StageKind {
        self.spec.kind()
    }

    pub fn input(&self, role: &str) -> Option<NodeId> {
        self.inputs.iter().find(|(r, _)| r == role).map(|(_, n)| *n)
    }
}

impl Plan {
    pub fn node_of(&self, r: InstanceRef) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.instances.contains(&r))
    }

    /// Nodes that read `id`'s output.
    pub fn dependents(&self, id: NodeId) -> Vec<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.inputs.iter().any(|(_, i)| *i == id))
            .map(|(j, _)| j)
            .collect()
    }

    /// Nodes matching a stage name or an instance label.
    pub fn find(&self, name: &str) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].stage == name || self.nodes[i].label == name)
            .collect()
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
