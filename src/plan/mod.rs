//! The plan: a DAG of stage instances, and for each node whether it must run and why.
//!
//! Building the plan ([`build`]) is static: sweeps are already expanded by the pipeline loader; here
//! instances become nodes, identical instances (same kind, parameters, files and inputs) merge into
//! one node, and input files are hashed. Resolving it ([`resolve`]) is the rebuilder: a node's cache
//! key is made of the *content* digests of its inputs, so it is known once every input is cached;
//! a node below one that must run is pending until that input has run (and may then turn out cached:
//! identical weights reached by two routes share what comes after them).

mod build;
mod key;
mod render;
mod resolve;
mod select;
mod summary;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use crate::pipeline::spec::instance_label;
pub use crate::stages::{ancestors, NodeId};
pub use build::{build, PlanError};
pub use key::key_inputs;
pub use render::{render, Format};
pub use resolve::{
    corrupt_inputs, explain, lookup, lookup_to_serve, reachable_keys, resolve, Corrupt, History,
    Reason, Status,
};
pub use select::restrict;
pub use summary::{StageSummary, StatusFormat, StatusSummary, STATUS_JSON_SCHEMA};

use crate::cache::key::{Digest, Params};
use crate::pipeline::spec::{InstanceRef, Pipeline, Point, StageKind, StageSpec};
use crate::stages::Dag;

#[derive(Debug)]
pub struct Plan {
    pub pipeline: Pipeline,
    /// Nodes in a topological order: every input comes before its consumers.
    pub nodes: Vec<Node>,
    /// For each node, the nodes that read its output, in plan order.
    dependents: Vec<Vec<NodeId>>,
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
    /// The plan of `nodes` (in a topological order), with who reads what worked out once.
    pub fn new(pipeline: Pipeline, nodes: Vec<Node>) -> Self {
        let mut dependents = vec![Vec::new(); nodes.len()];
        for (j, n) in nodes.iter().enumerate() {
            for (_, i) in &n.inputs {
                if !dependents[*i].contains(&j) {
                    dependents[*i].push(j);
                }
            }
        }
        Plan {
            pipeline,
            nodes,
            dependents,
        }
    }

    pub fn node_of(&self, r: InstanceRef) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.instances.contains(&r))
    }

    /// Nodes that read `id`'s output.
    pub fn dependents(&self, id: NodeId) -> &[NodeId] {
        &self.dependents[id]
    }

    /// Nodes matching a stage name or an instance label. A label's axes may come in any order,
    /// and naming only some axes selects every instance agreeing on them
    /// (`ppl[sparsity=0.5]`: that sparsity, every method).
    pub fn find(&self, name: &str) -> Vec<NodeId> {
        let parsed = parse_label(name);
        (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                let Some((stage, axes)) = &parsed else {
                    return n.label == name;
                };
                n.label == name
                    || n.stage == *stage
                        && axes.iter().all(|(a, v)| {
                            n.point
                                .get(*a)
                                .is_some_and(|have| same_value(&have.to_string(), v))
                        })
            })
            .collect()
    }
}

/// `stage` or `stage[a=1, b=x]` as the stage and its `(axis, value)` pairs; `None` when the
/// brackets are malformed.
fn parse_label(label: &str) -> Option<(&str, Vec<(&str, &str)>)> {
    let label = label.trim();
    let Some(open) = label.find('[') else {
        return Some((label, Vec::new()));
    };
    let inner = label[open + 1..].strip_suffix(']')?;
    let mut axes = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, v) = part.split_once('=')?;
        axes.push((a.trim(), v.trim()));
    }
    Some((label[..open].trim(), axes))
}

/// A value as written on the command line against one in the plan: equal text, or equal numbers
/// (`0.50` is `0.5`).
fn same_value(have: &str, given: &str) -> bool {
    have == given
        || matches!(
            (have.parse::<f64>(), given.parse::<f64>()),
            (Ok(a), Ok(b)) if a == b
        )
}

/// What a stage sees of the plan.
impl Dag for Plan {
    fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }
    fn len(&self) -> usize {
        self.nodes.len()
    }
    fn label(&self, id: NodeId) -> &str {
        &self.nodes[id].label
    }
    fn stage(&self, id: NodeId) -> &str {
        &self.nodes[id].stage
    }
    fn spec(&self, id: NodeId) -> &StageSpec {
        &self.nodes[id].spec
    }
    fn point(&self, id: NodeId) -> &Point {
        &self.nodes[id].point
    }
    fn inputs(&self, id: NodeId) -> &[(String, NodeId)] {
        &self.nodes[id].inputs
    }
    fn files(&self, id: NodeId) -> &BTreeMap<String, (PathBuf, Digest)> {
        &self.nodes[id].files
    }
    fn node_of(&self, r: InstanceRef) -> Option<NodeId> {
        Plan::node_of(self, r)
    }
}
