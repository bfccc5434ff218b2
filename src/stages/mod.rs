//! Stage kinds: each a function from its inputs (cache entries, files) to a new cache entry.
//!
//! A stage writes its files into a staging directory and returns the metadata for its manifest;
//! the executor makes the entry atomic. Stages never look at the cache's layout, the scheduler or
//! other nodes' state beyond the entries they are handed.

mod calibrate;
mod calibrated;
mod cancel;
mod evaluate;
pub mod export;
mod load;
pub mod overlay;
mod prune;
mod quantize;
mod replace;
mod report;
mod select;
mod train;
pub mod weights;

pub use cancel::Cancelled;
pub use report::TEXT_FILE as REPORT_TEXT_FILE;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cache::key::Digest;
use crate::cache::Entry;
use crate::pipeline::spec::{StageKind, StageSpec};
use crate::plan::{Node, NodeId, Plan};

/// The algorithm version of each stage kind. Bump one when its implementation changes what it
/// outputs: every entry of that kind (and everything downstream) is then recomputed.
pub fn version(kind: StageKind) -> u32 {
    match kind {
        StageKind::Load => 1,
        StageKind::Train => 1,
        StageKind::Calibrate => 1,
        // 2: overlays are packed (`overlay/`), no longer one dense safetensors file.
        StageKind::Prune => 2,
        StageKind::Quantize => 2,
        // 3: per-sample outputs, settings in the manifest.
        StageKind::Evaluate => 3,
        // 2: pivoted tables, LaTeX, plots, provenance.
        StageKind::Report => 2,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Eval(#[from] crate::eval::loglik::EvalError),
    #[error(transparent)]
    Lama(#[from] crate::eval::lama::LamaError),
    #[error(transparent)]
    Task(#[from] crate::eval::choice::ChoiceError),
    #[error(transparent)]
    Generation(#[from] crate::eval::generation::GenerationError),
    #[error(transparent)]
    TaskFile(#[from] crate::eval::task_file::TaskFileError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Overlay(#[from] overlay::OverlayError),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Reading or writing a tensor file failed (candle's own errors name no file).
    #[error("{action} {}: {source}", path.display())]
    TensorFile {
        action: &'static str,
        path: PathBuf,
        source: Box<candle_core::Error>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
}

/// Reads a safetensors file, naming it in any error.
pub fn read_tensors(
    path: &Path,
    device: &candle_core::Device,
) -> Result<std::collections::HashMap<String, candle_core::Tensor>, StageError> {
    candle_core::safetensors::load(path, device).map_err(|source| StageError::TensorFile {
        action: "reading",
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Writes a safetensors file, naming it in any error.
pub fn write_tensors(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    path: &Path,
) -> Result<(), StageError> {
    candle_core::safetensors::save(tensors, path).map_err(|source| StageError::TensorFile {
        action: "writing",
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

impl StageError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StageError {
        let context = context.into();
        move |source| StageError::Io { context, source }
    }
}

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
    pub plan: &'a Plan,
    pub node: NodeId,
    /// The finished entry of any node this one (transitively) reads.
    pub entries: &'a (dyn Fn(NodeId) -> Option<Entry> + Sync),
    /// The staging directory: write output files here.
    pub out: &'a Path,
    pub device: &'a candle_core::Device,
    pub progress: &'a Progress,
    pub cancel: &'a AtomicBool,
    /// Where the stage's log lines go, besides tracing.
    pub log: &'a (dyn Fn(&str) + Sync),
}

impl StageCtx<'_> {
    pub fn node(&self) -> &Node {
        &self.plan.nodes[self.node]
    }

    pub fn spec(&self) -> &StageSpec {
        &self.node().spec
    }

    pub fn entry(&self, id: NodeId) -> Result<Entry, StageError> {
        (self.entries)(id).ok_or_else(|| {
            StageError::Invalid(format!(
                "internal: input `{}` has no entry",
                self.plan.nodes[id].label
            ))
        })
    }

    pub fn input_node(&self, role: &str) -> Result<NodeId, StageError> {
        self.node()
            .input(role)
            .ok_or_else(|| StageError::Invalid(format!("internal: no input `{role}`")))
    }

    pub fn check_cancel(&self) -> Result<(), Cancelled> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Advances the progress bar by `n` and stops the computation if the run was cancelled
    /// (inside a kernel the error becomes [`StageError::Cancelled`] again through
    /// `calibrate::cancelled_or`).
    pub fn tick(&self, n: u64) -> Result<(), Cancelled> {
        self.progress.inc(n);
        self.check_cancel()
    }

    pub fn note(&self, msg: &str) {
        tracing::info!(stage = %self.node().label, "{msg}");
        (self.log)(msg);
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

/// Runs one stage.
pub fn execute(ctx: &StageCtx) -> Result<StageOutput, StageError> {
    match ctx.spec() {
        StageSpec::Load(s) => load::run(ctx, s),
        StageSpec::Train(s) => train::run(ctx, s),
        StageSpec::Calibrate(s) => calibrate::run(ctx, s),
        StageSpec::Prune(s) => prune::run(ctx, s),
        StageSpec::Quantize(s) => quantize::run(ctx, s),
        StageSpec::Evaluate(s) => evaluate::run(ctx, s),
        StageSpec::Report(s) => report::run(ctx, s),
    }
}

/// Whether a stage kind can use an accelerator (otherwise it runs on a CPU slot).
pub fn uses_accelerator(kind: StageKind) -> bool {
    matches!(
        kind,
        StageKind::Calibrate | StageKind::Prune | StageKind::Quantize | StageKind::Evaluate
    )
}
