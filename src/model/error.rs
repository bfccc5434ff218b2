//! The model runtime's error type: every variant names the file or tensor it concerns.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cancelled")]
    Cancelled(#[from] crate::cancel::Cancelled),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot keep hidden states in {}: {source}; free disk space there or raise --memory",
        path.display()
    )]
    Spill {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A config value the runtime cannot honour (unsupported architecture, bad dimension, ...).
    #[error("{}: key `{key}`: {message}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },

    /// A file the checkpoint needs is absent.
    #[error("{what} not found in {}: {hint}", dir.display())]
    MissingFile {
        dir: PathBuf,
        what: String,
        hint: String,
    },

    #[error(
        "no weights in {}: expected model.safetensors, model.safetensors.index.json or *.gguf",
        dir.display()
    )]
    NoWeights { dir: PathBuf },

    /// A weights file is present but cannot be used as it stands.
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },

    #[error(
        "tensor `{name}` is missing ({origin}); the checkpoint does not match its config.json"
    )]
    MissingTensor { name: String, origin: String },

    #[error("tensor `{name}` has shape {got:?}, config.json implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    /// A task asked a model for what its kind of language model cannot give.
    #[error(
        "{task} needs a {} model, and this `{family}` model is {}; pick a task that family \
         supports (knowledge probes and divergence work for every family)",
        needs.as_str(), has.as_str()
    )]
    WrongObjective {
        task: String,
        family: &'static str,
        has: super::lm::Objective,
        needs: super::lm::Objective,
    },

    /// A caller-side misuse that no file can explain (bad token ids, sequence too long, ...).
    #[error("{0}")]
    Invalid(String),

    /// A [`crate::model::TensorSource`]'s own failure (an overlay of a compressed model).
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
