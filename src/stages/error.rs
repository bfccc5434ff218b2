//! What can go wrong in a stage, typed by where it went wrong.

use std::path::{Path, PathBuf};

use crate::cancel::Cancelled;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Model(Box<crate::model::ModelError>),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Eval(Box<crate::eval::loglik::EvalError>),
    #[error(transparent)]
    Lama(Box<crate::eval::lama::LamaError>),
    #[error(transparent)]
    Task(Box<crate::eval::choice::ChoiceError>),
    #[error(transparent)]
    Generation(Box<crate::eval::generation::GenerationError>),
    #[error(transparent)]
    TaskFile(Box<crate::eval::task_file::TaskFileError>),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Overlay(#[from] crate::overlay::OverlayError),
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
    #[error(transparent)]
    Report(#[from] crate::stages::report::ReportError),
    #[error("training failed: {0}")]
    Train(Box<crate::train::TrainError>),
    /// A compression kernel refused a weight matrix.
    #[error("{weight}: {source}")]
    Kernel {
        /// The weight's name, or the layer's.
        weight: String,
        source: crate::compress::CompressError,
    },
    /// The selection of a compression stage matches none of the model's weights.
    #[error(
        "the selection (modules: {modules}, targets: {targets:?}, ignore: {ignore:?}) matches no \
         weight: weight names look like `model.layers.0.self_attn.q_proj.weight` and \
         `lm_head.weight`"
    )]
    NothingSelected {
        modules: &'static str,
        targets: Vec<String>,
        ignore: Vec<String>,
    },
    #[error("the model has no weight `{0}`")]
    NoSuchWeight(String),
    /// A calibrated method asked for a weight outside the blocks (the LM head).
    #[error(
        "{method} works on the linear layers of the blocks, not `{weight}`: use magnitude, \
         random or RTN for the LM head"
    )]
    NotInBlocks {
        method: &'static str,
        weight: String,
    },
    /// Sequential calibration on a model whose blocks share weights (ALBERT).
    #[error(
        "{method} with `calibration_mode: sequential` cannot run on this model: `{weight}` is \
         run by {blocks} blocks (its layers share weights), so it would be compressed once per \
         block; use `calibration_mode: dense`, where a shared weight is compressed once from the \
         inputs of every block that runs it"
    )]
    SharedSequential {
        method: &'static str,
        weight: String,
        blocks: usize,
    },
    #[error(
        "the model and its reference use different tokenizers; divergence compares next-token \
         distributions over one vocabulary"
    )]
    TokenizersDiffer,
    /// A cache entry does not hold what its kind writes.
    #[error("cache entry {entry}: {problem}")]
    BadEntry { entry: String, problem: String },
    /// A node whose output is needed is not in the cache (`whittle export`).
    #[error("`{0}` is not in the cache")]
    NotCached(String),
    #[error("internal: {0}")]
    Internal(#[from] Invariant),
    #[error("cancelled")]
    Cancelled,
}

/// What the planner and the pipeline reader guarantee a stage; seeing one broken is a bug.
#[derive(Debug, thiserror::Error)]
pub enum Invariant {
    #[error("input `{0}` has no entry")]
    NoEntry(String),
    #[error("no input `{0}`")]
    NoInput(String),
    #[error("{0} was not hashed")]
    NotHashed(String),
    #[error("the calibration is not in the DAG")]
    CalibrationNotInDag,
    #[error("the calibration is not a calibrate stage")]
    NotCalibrate,
    #[error("a {0} stage does not produce weights")]
    NoWeights(crate::stages::StageKind),
    #[error("compression stage without model")]
    NoModelInput,
    #[error("no updated values for `{0}`")]
    NoUpdate(String),
    #[error("the calibration has no {what} for {layer}")]
    NoStatistic { what: &'static str, layer: String },
    #[error("{0} does not prune rows")]
    NoRows(&'static str),
    #[error("{0} report inputs have no entry")]
    ReportInputs(usize),
}

/// A kernel's error becomes the stage's; a cancellation inside it becomes
/// [`StageError::Cancelled`], whatever error type carried it out.
macro_rules! from_kernel_error {
    ($($variant:ident($t:ty)),* $(,)?) => {$(
        impl From<$t> for StageError {
            fn from(e: $t) -> Self {
                if crate::cancel::is_cancelled(&e) {
                    StageError::Cancelled
                } else {
                    StageError::$variant(Box::new(e))
                }
            }
        }
    )*};
}

from_kernel_error!(
    Model(crate::model::ModelError),
    Eval(crate::eval::loglik::EvalError),
    Lama(crate::eval::lama::LamaError),
    Task(crate::eval::choice::ChoiceError),
    Generation(crate::eval::generation::GenerationError),
    Train(crate::train::TrainError),
);

impl From<crate::eval::task_file::TaskFileError> for StageError {
    fn from(e: crate::eval::task_file::TaskFileError) -> Self {
        StageError::TaskFile(Box::new(e))
    }
}

impl From<Cancelled> for StageError {
    fn from(_: Cancelled) -> Self {
        StageError::Cancelled
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::loglik::EvalError;
    use crate::model::ModelError;

    #[test]
    fn a_cancellation_inside_a_kernel_error_is_the_stage_cancelled() {
        let nested = EvalError::Model(ModelError::Cancelled(Cancelled));
        assert!(matches!(StageError::from(nested), StageError::Cancelled));
        let train = crate::train::TrainError::from(Cancelled);
        assert!(matches!(StageError::from(train), StageError::Cancelled));
        let failed = ModelError::Invalid("bad".into());
        assert!(matches!(StageError::from(failed), StageError::Model(_)));
    }
}
