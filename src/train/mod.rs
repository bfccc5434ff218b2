//! A small model trained from scratch on a synthetic world, so that the quickstart runs offline
//! and shows what compression does to knowledge.
//!
//! - [`synth`] generates the world: people, one fact per relation each, biographies stating them
//!   among filler sentences, and the facts in the LAMA layout the knowledge probe reads;
//! - [`tokenizer`] builds a word-level `tokenizer.json` over a corpus;
//! - [`trainer`] trains a LLaMA, GPT-2 or OPT [`crate::model::CausalLm`] with candle's autograd and
//!   writes a Hugging Face folder (`config.json`, `tokenizer.json`, `tokenizer_config.json`,
//!   `model.safetensors`);
//! - [`masked`] trains a BERT with the masked-LM objective on sentences;
//! - [`seq2seq`] trains a T5 by span corruption, with its own tokenizer layout (sentinels);
//! - `step` is the optimisation loop they share (AdamW, schedule, clipping, bookkeeping);
//! - [`recall`] measures P@1 on the facts, the check that training worked.
//!
//! ```no_run
//! # fn main() -> Result<(), whittle::train::TrainError> {
//! use whittle::train::*;
//! let corpus = synth::generate(&synth::SynthConfig::default())?;
//! let tok = tokenizer::build_tokenizer(&corpus.train, &corpus.words())?;
//! let cfg = trainer::TrainConfig::default();
//! let out = std::path::Path::new("model");
//! let summary = trainer::train(&corpus.train, &tok, &cfg, &candle_core::Device::Cpu, out, &mut |_, _| Ok(()))?;
//! println!("final loss {:.3}", summary.final_loss);
//! # Ok(()) }
//! ```

use std::path::PathBuf;

pub mod masked;
pub mod recall;
pub mod seq2seq;
mod step;
pub mod synth;
pub mod tokenizer;
pub mod trainer;

pub use trainer::{train, TrainArch, TrainConfig, TrainSummary};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cancelled")]
    Cancelled(#[from] crate::cancel::Cancelled),
    /// A configuration value that cannot work; the message names the key.
    #[error("{0}")]
    Config(String),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("the loss is {loss} at step {step}: training diverged; lower `lr` or raise `warmup`")]
    Diverged { step: usize, loss: f32 },
    /// The step callback asked to stop.
    #[error("training stopped at step {step}: {reason}")]
    Stopped { step: usize, reason: String },
}
