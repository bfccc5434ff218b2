//! A plan cut down to some targets and what they need (`whittle run STAGE…`).

use std::collections::HashMap;

use super::{ancestors, NodeId, Plan};

/// The plan holding only `targets` and their ancestors, in the same order (ids renumbered).
/// Keys do not depend on ids, so every node keeps its cache key.
pub fn restrict(plan: Plan, targets: &[NodeId]) -> Plan {
    let keep = ancestors(&plan, targets);
    let new_id: HashMap<NodeId, NodeId> = keep.iter().enumerate().map(|(n, &o)| (o, n)).collect();
    let Plan {
        pipeline, nodes, ..
    } = plan;
    let nodes: Vec<_> = nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| new_id.contains_key(i))
        .map(|(_, mut n)| {
            for (_, i) in &mut n.inputs {
                *i = new_id[i];
            }
            n
        })
        .collect();
    Plan::new(pipeline, nodes)
}
