//! The LLaMA-family model runtime (LLaMA 1/2/3, Mistral, Qwen2, SmolLM).
//!
//! whittle runs its own decoder because calibration must run blocks one at a time and see the input
//! of every linear layer. The pieces, one job each:
//! - [`Checkpoint`] finds `config.json`, `tokenizer.json` and the weights in a directory;
//! - [`ModelConfig`] is `config.json` resolved, every default filled;
//! - [`load_weights`] reads safetensors (single or sharded) or GGUF into a [`TensorMap`] under
//!   Hugging Face names; [`tensor_digest`] is a tensor's content identity for the cache;
//! - [`Architecture`] describes a model family (LLaMA the only one so far): its tensors, linear
//!   layers by [`ModuleGroup`], parameter count, and how to build its runtime;
//! - [`CausalLm`] (with [`Blocks`]) is what evaluators, calibration and training ask of a model;
//! - [`Llama`] runs the LLaMA family: [`Llama::embed`], [`Llama::block_forward`] (with a capture hook per
//!   [`LinearId`]), [`Llama::head`], or [`Llama::forward`] / [`Llama::forward_cached`] end to end;
//! - [`Tokenizer`] and [`greedy`] turn text into ids and back; [`TokenizerSemantics`] says whose
//!   reading of `tokenizer.json` (the `tokenizers` library's, or transformers 5's) makes the ids.
//!
//! ```no_run
//! # fn main() -> Result<(), whittle::model::ModelError> {
//! use whittle::model::*;
//! let ckpt = Checkpoint::resolve("models/stories260K")?;
//! let cfg = ModelConfig::from_file(&ckpt.config)?;
//! let device = candle_core::Device::Cpu;
//! let weights = load_weights(&ckpt, &cfg, candle_core::DType::F32, &device)?;
//! let model = Llama::new(&cfg, &weights)?;
//! let tok = Tokenizer::from_file(&ckpt.tokenizer)?;
//! let ids = greedy(&model, &tok.encode("Once upon a time", true)?, 8, cfg.eos_token_ids.first().copied())?;
//! println!("{}", tok.decode(&ids)?);
//! # Ok(()) }
//! ```

mod checkpoint;
mod config;
mod decoder;
mod encoder;
mod error;
pub mod family;
mod fused;
mod generate;
mod hf_class;
mod hidden;
mod llama;
mod lm;
mod parts;
mod reader;
pub mod synthetic;
mod t5;
mod tokenizer;
mod weights;

pub use checkpoint::{shards_of, Checkpoint, WeightFiles};
pub use config::{
    Activation, EncoderConfig, Family, ModelConfig, RawConfig, RopeScaling, TokenIds, ARCHITECTURES,
};
pub use decoder::LnDecoder;
pub use encoder::{EncLayout, Encoder};
pub use error::{ModelError, Result};
pub use family::{
    as_linear, as_stored, is_conv1d, tensor_or_tied, Architecture, LinearLayer, ModuleGroup,
};
pub(crate) use fused::target_nlls;
pub use generate::{greedy, greedy_seq2seq_until, greedy_until, Decoded, Finish};
pub use hf_class::check as check_transformers_class;
pub use hidden::{HiddenStates, Note, SpillPolicy, Spilling};
pub use llama::{rms_norm, Llama};
pub use lm::{
    final_hidden, for_each_final_hidden, hidden_for, Blocks, CausalLm, LanguageModel, MaskedLm,
    Objective, Seq2SeqLm,
};
pub use parts::{Capture, KvCache, LayerKvCache, LinearId, Proj};
pub use reader::{CheckpointReader, TensorSource};
pub use t5::T5;
pub use tokenizer::{Tokenizer, TokenizerSemantics};
pub use weights::{expected_tensors, load_weights, tensor_digest, unpermute_rope_rows, TensorMap};
