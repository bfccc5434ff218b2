//! What can go wrong in a stage, typed by where it went wrong.

use std::path::{Path, PathBuf};

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
    Train(#[from] crate::train::TrainError),
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
