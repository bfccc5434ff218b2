//! The rebuilder: for each node, its cache key (once its inputs are known) and whether it must run.

use std::collections::{BTreeMap, HashMap};

use super::key::key_inputs;
use super::{ancestors, Node, NodeId, Plan};
use crate::cache::key::{Digest, KeyInputs};
use crate::cache::{Cache, CacheError, Entry, Lookup};

/// What earlier runs of this pipeline computed, by instance label: explains why a node reruns.
#[derive(Default, Debug)]
pub struct History {
    last: HashMap<String, KeyInputs>,
}

impl History {
    pub fn load(cache: &Cache, pipeline: &str) -> Self {
        let mut last = HashMap::new();
        // Oldest first, so later runs overwrite.
        for run in cache.runs() {
            if run.pipeline != pipeline {
                continue;
            }
            for s in run.stages {
                if let Some(k) = s.key_inputs {
                    last.insert(s.instance, k);
                }
            }
        }
        History { last }
    }

    pub fn last(&self, label: &str) -> Option<&KeyInputs> {
        self.last.get(label)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// No earlier run of this pipeline computed this instance.
    New,
    /// These components of the key differ from the last run.
    Changed(Vec<String>),
    /// Same key as the last run, but its entry is gone (collected or never finished).
    Missing,
    /// The entry is corrupt: `run` quarantines and recomputes it (read-only commands only say so).
    Corrupt(String),
    /// These inputs must run first; the key is known only after.
    Upstream(Vec<String>),
    /// Cached, but named by `run --force`.
    Forced,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::New => f.write_str("never run before"),
            Reason::Changed(d) => f.write_str(&d.join("; ")),
            Reason::Missing => f.write_str("same key as last run, but its entry is gone"),
            Reason::Corrupt(r) => write!(f, "cache entry is corrupt ({r})"),
            Reason::Upstream(v) => write!(f, "waits on {}", v.join(", ")),
            Reason::Forced => f.write_str("cached, recomputed as --force asks"),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Status {
    Cached {
        key_inputs: KeyInputs,
        entry: Entry,
    },
    Run {
        key_inputs: Option<KeyInputs>,
        reason: Reason,
    },
}

impl Status {
    pub fn key(&self) -> Option<Digest> {
        match self {
            Status::Cached { entry, .. } => Some(entry.manifest().key),
            Status::Run { key_inputs, .. } => key_inputs.as_ref().map(KeyInputs::digest),
        }
    }

    pub fn is_cached(&self) -> bool {
        matches!(self, Status::Cached { .. })
    }

    /// Its entry is there but corrupt (it will be recomputed).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            Status::Run {
                reason: Reason::Corrupt(_),
                ..
            }
        )
    }
}

/// Why a node whose key is known and not in the cache must run.
pub fn explain(k: &KeyInputs, last: Option<&KeyInputs>) -> Reason {
    match last {
        None => Reason::New,
        Some(old) => {
            let d = k.diff(old);
            if d.is_empty() {
                Reason::Missing
            } else {
                Reason::Changed(d)
            }
        }
    }
}

/// Looks up `k` in the cache, turning a corrupt entry into a reason to rerun (and moving it to
/// quarantine, so the rerun can replace it).
pub fn lookup(
    cache: &Cache,
    k: &KeyInputs,
    last: Option<&KeyInputs>,
) -> Result<Status, CacheError> {
    Ok(status_of(cache.lookup(&k.digest())?, k, last))
}

/// [`lookup`] for a node about to be scheduled: a cached entry whose files the run hands out
/// (a report's) is re-hashed first, and a corrupt one must run.
pub fn lookup_to_serve(
    cache: &Cache,
    node: &Node,
    k: &KeyInputs,
    last: Option<&KeyInputs>,
) -> Result<Status, CacheError> {
    let status = lookup(cache, k, last)?;
    if let Status::Cached { entry, .. } = &status {
        if node.kind().served() {
            if let Err(e) = entry.verify() {
                return Ok(Status::Run {
                    key_inputs: Some(k.clone()),
                    reason: Reason::Corrupt(e.to_string()),
                });
            }
        }
    }
    Ok(status)
}

fn status_of(found: Lookup, k: &KeyInputs, last: Option<&KeyInputs>) -> Status {
    match found {
        Lookup::Hit(entry) => Status::Cached {
            key_inputs: k.clone(),
            entry,
        },
        Lookup::Miss => Status::Run {
            key_inputs: Some(k.clone()),
            reason: explain(k, last),
        },
        Lookup::Corrupt { reason } => Status::Run {
            key_inputs: Some(k.clone()),
            reason: Reason::Corrupt(reason),
        },
    }
}

/// A cached entry a node was about to read that failed its re-hash: it is in quarantine now, and
/// `node` must be recomputed before anything below it runs.
#[derive(Clone, Debug)]
pub struct Corrupt {
    pub node: NodeId,
    /// Why the entry failed.
    pub error: String,
}

impl Corrupt {
    pub fn reason(&self) -> Reason {
        Reason::Corrupt(self.error.clone())
    }
}

/// Re-hashes the cached entries `node` will read before it runs: every ancestor that `cached`
/// gives an entry for. A failing entry moves to quarantine and is returned; what lies below it
/// is not checked, since it is recomputed or looked up again once that input is.
pub fn corrupt_inputs<'e>(
    plan: &Plan,
    node: NodeId,
    cached: impl Fn(NodeId) -> Option<&'e Entry>,
) -> Vec<Corrupt> {
    let mut corrupt: Vec<Corrupt> = Vec::new();
    for a in ancestors(plan, &[node]) {
        if a == node {
            continue;
        }
        let Some(entry) = cached(a) else {
            continue;
        };
        if corrupt
            .iter()
            .any(|c| ancestors(plan, &[a]).contains(&c.node))
        {
            continue;
        }
        if let Err(e) = entry.verify() {
            // verify() moved it to quarantine.
            corrupt.push(Corrupt {
                node: a,
                error: e.to_string(),
            });
        }
    }
    corrupt
}

/// The status of every node, in plan order, as far as it can be known before running anything.
/// Changes nothing: a corrupt entry is reported as [`Reason::Corrupt`] and left where it is.
pub fn resolve(plan: &Plan, cache: &Cache, history: &History) -> Result<Vec<Status>, CacheError> {
    let mut out: Vec<Status> = Vec::with_capacity(plan.nodes.len());
    for node in &plan.nodes {
        let mut content = BTreeMap::new();
        let mut pending = Vec::new();
        for (role, i) in &node.inputs {
            match &out[*i] {
                Status::Cached { entry, .. } => {
                    content.insert(role.clone(), entry.manifest().content);
                }
                Status::Run { .. } => pending.push(plan.nodes[*i].label.clone()),
            }
        }
        let status = if pending.is_empty() {
            let k = key_inputs(node, &content);
            status_of(cache.inspect(&k.digest())?, &k, history.last(&node.label))
        } else {
            pending.dedup();
            Status::Run {
                key_inputs: None,
                reason: Reason::Upstream(pending),
            }
        };
        out.push(status);
    }
    Ok(out)
}

/// The keys of every entry the plan reaches in the cache as it is, corrupt ones included: what
/// `whittle verify FILE` checks.
pub fn reachable_keys(
    plan: &Plan,
    cache: &Cache,
    history: &History,
) -> Result<Vec<Digest>, CacheError> {
    Ok(resolve(plan, cache, history)?
        .iter()
        .filter(|s| s.is_cached() || s.is_corrupt())
        .filter_map(Status::key)
        .collect())
}
