//! What a running stage may use: its node of the DAG, the entries of its inputs, a staging
//! directory, a device, progress and cancellation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::dag::{Dag, NodeId};
use super::{Invariant, StageError, StageSpec};
use crate::cache::key::Digest;
use crate::cache::Entry;
use crate::cancel::Cancelled;

/// Progress of the running stage, shown as a bar by the executor.
#[derive(Clone)]
pub struct Progress(pub indicatif::ProgressBar);

impl Progress {
    pub fn hidden() -> Self {
        Progress(indicatif::ProgressBar::hidden())
    }
    pub fn start(&self, len: u64, what: &str) {
        self.0.set_length(len);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }
    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }
}

/// Everything a stage may use.
pub struct StageCtx<'a> {
    pub dag: &'a dyn Dag,
    pub node: NodeId,
    /// The finished entry of any node this one (transitively) reads.
    pub entries: &'a (dyn Fn(NodeId) -> Option<Entry> + Sync),
    /// The staging directory: write output files here.
    pub out: &'a Path,
    pub device: &'a candle_core::Device,
    /// The memory the stage may hold, in bytes: a model larger than half of it is streamed.
    pub memory: u64,
    pub progress: &'a Progress,
    pub cancel: &'a AtomicBool,
    /// Where the stage's log lines go, besides tracing.
    pub log: crate::model::Note,
}

impl StageCtx<'_> {
    pub fn spec(&self) -> &StageSpec {
        self.dag.spec(self.node)
    }

    pub fn label(&self) -> &str {
        self.dag.label(self.node)
    }

    pub fn pipeline(&self) -> &crate::pipeline::spec::Pipeline {
        self.dag.pipeline()
    }

    pub fn entry(&self, id: NodeId) -> Result<Entry, StageError> {
        (self.entries)(id)
            .ok_or_else(|| StageError::Internal(Invariant::NoEntry(self.dag.label(id).to_string())))
    }

    pub fn input_node(&self, role: &str) -> Result<NodeId, StageError> {
        self.dag
            .input(self.node, role)
            .ok_or_else(|| StageError::Internal(Invariant::NoInput(role.to_string())))
    }

    pub fn check_cancel(&self) -> Result<(), Cancelled> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Advances the progress bar by `n` and stops the computation if the run was cancelled: the
    /// [`crate::cancel::Tick`] every long kernel takes.
    pub fn tick(&self, n: u64) -> Result<(), Cancelled> {
        self.progress.inc(n);
        self.check_cancel()
    }

    pub fn note(&self, msg: &str) {
        tracing::info!(stage = %self.label(), "{msg}");
        (self.log)(msg);
    }

    /// What a layer-wise pass of this stage may keep of hidden states in memory (a quarter of
    /// its budget: the model takes at most half, activations inside a block the rest), and where
    /// the rest goes: the cache's `tmp/`, beside the staging directory.
    pub fn spill_policy(&self) -> crate::model::SpillPolicy {
        let label = self.label().to_string();
        let log = self.log.clone();
        crate::model::SpillPolicy {
            budget: self.memory / 4,
            dir: self.out.parent().unwrap_or(self.out).to_path_buf(),
            note: std::sync::Arc::new(move |msg| {
                tracing::info!(stage = %label, "{msg}");
                log(msg)
            }),
        }
    }

    pub fn out_path(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    pub fn write_json(&self, name: &str, value: &serde_json::Value) -> Result<(), StageError> {
        let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
        let path = self.out_path(name);
        std::fs::write(&path, text + "\n")
            .map_err(StageError::io(format!("writing {}", path.display())))
    }
}

/// What a finished stage tells its manifest.
pub struct StageOutput {
    /// Stage-specific metadata (metrics, sparsity, weight digests, …).
    pub meta: serde_json::Value,
    /// The content identity of the output, when it is not simply the hash of its files
    /// (weights: the digests of the tensors they consist of).
    pub content: Option<Digest>,
}
