//! From a validated pipeline to a plan: nodes, merged duplicates, hashed input files.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use petgraph::graph::DiGraph;
use rayon::prelude::*;

use super::{instance_label, key, Node, NodeId, Plan};
use crate::cache::filehash::FileHasher;
use crate::cache::key::Digest;
use crate::model::Checkpoint;
use crate::pipeline::spec::{DatasetFormat, InstanceRef, Pipeline};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("stage `{stage}`: {source}")]
    Checkpoint {
        stage: String,
        source: crate::model::ModelError,
    },
    #[error("cannot hash {path}: {source}")]
    Hash {
        path: PathBuf,
        source: crate::cache::CacheError,
    },
    #[error("the stages form a cycle through `{0}`")]
    Cycle(String),
    #[error("cannot list dataset `{name}` ({path}): {source}")]
    Dataset {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Builds the plan of a validated pipeline, hashing the files it reads (memoized by `hasher`).
pub fn build(pipeline: Pipeline, hasher: &FileHasher) -> Result<Plan, PlanError> {
    // Instances in a topological order.
    let mut g = DiGraph::<InstanceRef, ()>::new();
    let mut idx = HashMap::new();
    for (s, stage) in pipeline.stages.iter().enumerate() {
        for i in 0..stage.instances.len() {
            let r = InstanceRef {
                stage: s,
                instance: i,
            };
            idx.insert(r, g.add_node(r));
        }
    }
    for (s, stage) in pipeline.stages.iter().enumerate() {
        for (i, inst) in stage.instances.iter().enumerate() {
            let me = idx[&InstanceRef {
                stage: s,
                instance: i,
            }];
            for (_, r) in inst.spec.inputs() {
                g.add_edge(idx[&r], me, ());
            }
        }
    }
    let order = file_order_toposort(&g)
        .map_err(|r| PlanError::Cycle(pipeline.stages[r.stage].name.clone()))?;

    let files = stage_files(&pipeline)?;
    let all_paths: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = files.values().flatten().map(|(_, p)| p.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let digests: HashMap<PathBuf, Digest> = all_paths
        .par_iter()
        .map(|p| {
            hasher
                .hash_file(p)
                .map(|d| (p.clone(), d))
                .map_err(|source| PlanError::Hash {
                    path: p.clone(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;

    let mut nodes: Vec<Node> = Vec::new();
    let mut node_of: HashMap<InstanceRef, NodeId> = HashMap::new();
    let mut by_structure: HashMap<Digest, NodeId> = HashMap::new();
    for gi in order {
        let r = g[gi];
        let stage = &pipeline.stages[r.stage];
        let inst = &stage.instances[r.instance];
        let inputs: Vec<(String, NodeId)> = inst
            .spec
            .inputs()
            .into_iter()
            .map(|(role, ir)| (role, node_of[&ir]))
            .collect();
        let node_files: BTreeMap<String, (PathBuf, Digest)> = files
            .get(&r)
            .into_iter()
            .flatten()
            .map(|(role, p)| (role.clone(), (p.clone(), digests[p])))
            .collect();
        let mut node = Node {
            label: instance_label(&stage.name, &inst.point, &pipeline.axes),
            stage: stage.name.clone(),
            spec: inst.spec.clone(),
            point: inst.point.clone(),
            instances: vec![r],
            inputs,
            files: node_files,
            version: inst.spec.kind().version(),
            params: key::params(&pipeline, &inst.spec),
            // Set below, from the node itself.
            structural: Digest([0; 32]),
        };
        let structure: BTreeMap<String, Digest> = node
            .inputs
            .iter()
            .map(|(role, n)| (role.clone(), nodes[*n].structural))
            .collect();
        let structural = key::key_inputs(&node, &structure).digest();
        if let Some(&n) = by_structure.get(&structural) {
            nodes[n].instances.push(r);
            node_of.insert(r, n);
            continue;
        }
        node.structural = structural;
        let id = nodes.len();
        nodes.push(node);
        by_structure.insert(structural, id);
        node_of.insert(r, id);
    }

    Ok(Plan::new(pipeline, nodes))
}

/// A topological order that otherwise follows the file: among the instances whose inputs are
/// done, the earliest stage (then instance) comes first. Plans and run records read top-down.
fn file_order_toposort(
    g: &DiGraph<InstanceRef, ()>,
) -> Result<Vec<petgraph::graph::NodeIndex>, InstanceRef> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indegree: Vec<usize> = g
        .node_indices()
        .map(|n| {
            g.neighbors_directed(n, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<(InstanceRef, petgraph::graph::NodeIndex)>> = g
        .node_indices()
        .filter(|n| indegree[n.index()] == 0)
        .map(|n| Reverse((g[n], n)))
        .collect();
    let mut order = Vec::with_capacity(g.node_count());
    while let Some(Reverse((_, n))) = ready.pop() {
        order.push(n);
        for m in g.neighbors_directed(n, petgraph::Direction::Outgoing) {
            indegree[m.index()] -= 1;
            if indegree[m.index()] == 0 {
                ready.push(Reverse((g[m], m)));
            }
        }
    }
    match g.node_indices().find(|n| indegree[n.index()] > 0) {
        Some(n) => Err(g[n]),
        None => Ok(order),
    }
}

type FileRoles = Vec<(String, PathBuf)>;

/// The files each instance reads directly: a checkpoint's files for `load`, datasets otherwise.
fn stage_files(p: &Pipeline) -> Result<HashMap<InstanceRef, FileRoles>, PlanError> {
    let mut out = HashMap::new();
    let mut checkpoints: HashMap<String, FileRoles> = HashMap::new();
    for (s, stage) in p.stages.iter().enumerate() {
        for (i, inst) in stage.instances.iter().enumerate() {
            let mut roles = Vec::new();
            for (model, extra) in inst.spec.models() {
                if !checkpoints.contains_key(model) {
                    let dir = &p.models[model].dir;
                    let ckpt =
                        Checkpoint::resolve(dir).map_err(|source| PlanError::Checkpoint {
                            stage: stage.name.clone(),
                            source,
                        })?;
                    let files = ckpt
                        .files()
                        .into_iter()
                        .map(|f| {
                            let role = f
                                .strip_prefix(dir)
                                .unwrap_or(&f)
                                .to_string_lossy()
                                .into_owned();
                            (format!("model/{role}"), f)
                        })
                        .collect();
                    checkpoints.insert(model.to_string(), files);
                }
                roles.extend(checkpoints[model].iter().cloned());
                for name in extra {
                    let f = p.models[model].dir.join(name);
                    if f.is_file() {
                        roles.push((format!("model/{name}"), f));
                    }
                }
            }
            for (role, name) in inst.spec.datasets() {
                let ds = &p.datasets[name];
                if ds.format == DatasetFormat::Lama {
                    // Every file of the directory, so that editing one reruns the stage.
                    for f in files_under(&ds.path).map_err(|source| PlanError::Dataset {
                        name: name.to_string(),
                        path: ds.path.clone(),
                        source,
                    })? {
                        let rel = f.strip_prefix(&ds.path).unwrap_or(&f).to_string_lossy();
                        roles.push((format!("{role}/{rel}"), f.clone()));
                    }
                } else {
                    roles.push((role.to_string(), ds.path.clone()));
                }
                if let Some(labels) = &ds.labels {
                    roles.push((format!("{role}.labels"), labels.clone()));
                }
            }
            for (role, path) in inst.spec.extra_files() {
                roles.push((role.to_string(), path.to_path_buf()));
            }
            out.insert(
                InstanceRef {
                    stage: s,
                    instance: i,
                },
                roles,
            );
        }
    }
    Ok(out)
}

/// The regular files under `dir`, recursively, in sorted order; hidden entries are skipped.
fn files_under(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let ty = e.file_type()?;
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}
