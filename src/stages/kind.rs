//! The one interface of a stage kind: what the pipeline reads, the planner keys, the scheduler
//! places and the executor runs. Each kind implements it in its own module (`stages/<kind>/`)
//! and is registered once in [`super`].

use std::path::Path;

use super::{StageCtx, StageError, StageOutput};
use crate::cache::key::CacheKey;
use crate::pipeline::fields::Fields;
use crate::pipeline::spec::{InstanceRef, Pipeline};

/// The size of the model a stage works on, for its memory estimate.
///
/// One rule for every family: a stage that goes block by block holds what lies outside the
/// blocks plus one block (the largest: a T5 decoder block, with its cross-attention, outweighs
/// an encoder block), the statistics it keeps, and the calibration tokens' hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSize {
    /// The weights in f32.
    pub bytes: u64,
    /// The largest block's weights in f32 (all of `bytes` for a model not run block by block).
    pub block: u64,
    pub layers: u64,
    /// The weights outside the blocks in f32 (embeddings, final norms, head).
    pub outside: u64,
    pub vocab: u64,
    /// What a stage holds of the weights: `bytes` when they take at most half of the memory a
    /// stage may use, otherwise (streamed) everything outside the blocks plus one block.
    pub held: u64,
    /// The f32 values of one calibration token's hidden state at a block boundary: the hidden
    /// size, twice it for an encoder-decoder (T5's calibration runs its blocks on
    /// [batch, 2·seq, d_model], the encoder's half and the decoder's).
    pub width: u64,
    /// The largest block's input Hessians in f32: columns² for each linear layer's input.
    pub block_hessians: u64,
    /// Every block's input Hessians in f32 (what a stage keeping all of them holds).
    pub hessians: u64,
    /// Calibration tokens (windows × seqlen) the stage runs through the model, if it calibrates.
    pub calib_tokens: u64,
    /// The most hidden states a layer-wise pass keeps in memory before spilling to disk.
    pub hidden_cap: u64,
}

impl ModelSize {
    /// What a stage that reads no model is charged for.
    pub const NONE: ModelSize = ModelSize {
        bytes: 64 << 20,
        block: 64 << 20,
        layers: 1,
        outside: 0,
        vocab: 0,
        held: 64 << 20,
        width: 0,
        block_hessians: 0,
        hessians: 0,
        calib_tokens: 0,
        hidden_cap: 0,
    };

    /// A model of `bytes` (f32) whose `layers` blocks take `block` each, held whole.
    pub fn new(bytes: u64, block: u64, layers: u64, vocab: u64) -> Self {
        ModelSize {
            bytes,
            block,
            layers,
            outside: bytes.saturating_sub(block * layers),
            vocab,
            held: bytes,
            ..Self::NONE
        }
    }

    /// The size as held by a stage that may use `memory` bytes (see [`ModelSize::held`]); a
    /// layer-wise pass keeps at most a quarter of it in hidden states.
    pub fn within(self, memory: u64) -> Self {
        let held = if self.bytes <= memory / 2 {
            self.bytes
        } else {
            self.outside + self.block
        };
        ModelSize {
            held,
            hidden_cap: memory / 4,
            ..self
        }
    }

    /// The hidden states of the calibration tokens at one block boundary, as kept in memory.
    pub fn calib_hidden(&self) -> u64 {
        (self.calib_tokens * self.width * 4).min(self.hidden_cap)
    }
}

/// Room for the process itself, added to every estimate.
pub const OVERHEAD: u64 = 64 << 20;

pub trait Kind: CacheKey + Sized {
    /// The `kind:` of the stage in a pipeline file.
    const NAME: &'static str;
    /// The algorithm version. Bump it when the implementation changes what the kind outputs:
    /// every entry of the kind (and everything downstream) is then recomputed.
    const VERSION: u32;
    /// The keys a stage of this kind accepts (besides `kind`).
    const KEYS: &'static [&'static str];
    /// Those of [`Kind::KEYS`] whose values name other stages.
    const REF_KEYS: &'static [&'static str] = &[];
    /// Whether the kind can use an accelerator (otherwise it runs on a CPU slot).
    const ACCELERATED: bool = false;
    /// Whether `whittle run` hands the entry's files out (a report's): the rebuilder then
    /// re-hashes a cached entry before serving it, as it does before a stage reads one.
    const SERVED: bool = false;

    /// Reads and checks one instance's keys; `None` when anything was wrong (reported).
    fn read(f: &mut Fields) -> Option<Self>;

    /// The stage instances this one reads, by role ("model", "calibration", "input.3", …).
    fn inputs(&self) -> Vec<(String, InstanceRef)> {
        Vec::new()
    }

    /// Datasets read directly, by role.
    fn datasets(&self) -> Vec<(&'static str, &str)> {
        Vec::new()
    }

    /// Entries of `models:` read directly, each with the files beside its checkpoint that it
    /// also reads (their digests enter the key, as the checkpoint's do).
    fn models(&self) -> Vec<(&str, &'static [&'static str])> {
        Vec::new()
    }

    /// Files other than datasets the stage reads, by role (their digests enter the key).
    fn extra_files(&self) -> Vec<(&'static str, &Path)> {
        Vec::new()
    }

    /// Key parameters only the pipeline knows of (a report's row labels).
    fn pipeline_key(&self, _pipeline: &Pipeline, _key: &mut crate::cache::key::KeyWriter) {}

    /// The model the stage brings in, if it does not work on its `model` input's.
    fn source_model(&self, _pipeline: &Pipeline) -> Option<ModelSize> {
        None
    }

    /// Rough peak memory, given the model it works on: enough to keep the scheduler from
    /// packing two large stages onto one device.
    fn memory(&self, model: ModelSize) -> u64;

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError>;
}
