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
