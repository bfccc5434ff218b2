//! What a stage sees of the DAG it runs in: the pipeline, and each node's spec, label, point,
//! inputs and files. The plan implements it; stages never see the planner or the scheduler.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::StageSpec;
use crate::cache::key::Digest;
use crate::pipeline::spec::{InstanceRef, Pipeline, Point};

/// Index of a node of the DAG.
pub type NodeId = usize;

pub trait Dag: Sync {
    fn pipeline(&self) -> &Pipeline;
    /// Number of nodes; ids are `0..len()` in a topological order.
    fn len(&self) -> usize;
    /// `stage` or `stage[axis=value,…]`.
    fn label(&self, id: NodeId) -> &str;
    /// The name of the pipeline stage the node instantiates.
    fn stage(&self, id: NodeId) -> &str;
    fn spec(&self, id: NodeId) -> &StageSpec;
    fn point(&self, id: NodeId) -> &Point;
    /// Input nodes by role.
    fn inputs(&self, id: NodeId) -> &[(String, NodeId)];
    /// Files read directly, by role, with their content digests.
    fn files(&self, id: NodeId) -> &BTreeMap<String, (PathBuf, Digest)>;
    /// The node an instance of the pipeline became.
    fn node_of(&self, r: InstanceRef) -> Option<NodeId>;

    fn input(&self, id: NodeId, role: &str) -> Option<NodeId> {
        self.inputs(id)
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, n)| *n)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `ids` and every node they read, transitively, in DAG order.
pub fn ancestors(dag: &dyn Dag, ids: &[NodeId]) -> Vec<NodeId> {
    let mut seen = vec![false; dag.len()];
    let mut stack = ids.to_vec();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        stack.extend(dag.inputs(i).iter().map(|(_, j)| *j));
    }
    (0..dag.len()).filter(|&i| seen[i]).collect()
}
