//! What the compressing kinds (prune, quantize) share: which weights they touch, where a
//! calibrated method gets its inputs, how updated weights become an overlay.

pub(crate) mod calibrated;
pub(crate) mod read;
pub mod replace;
pub mod select;

pub(crate) use read::statistics;

use regex::Regex;

use super::StageError;
use crate::cache::key::KeyWriter;
use crate::key_value_as_str;
/// Module groups are the model families' (see [`crate::model::family`]).
pub use crate::model::ModuleGroup;

/// A kernel's refusal of a weight matrix, naming the weight.
pub(crate) fn kernel(weight: &str, source: crate::compress::CompressError) -> StageError {
    StageError::Kernel {
        weight: weight.to_string(),
        source,
    }
}

/// A weight-name regex, compiled once when the pipeline is read.
#[derive(Clone, Debug)]
pub struct NameRegex(Regex);

impl NameRegex {
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        Regex::new(pattern).map(NameRegex)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.0.is_match(name)
    }
}

/// Two regexes are the same setting when they are written the same.
impl PartialEq for NameRegex {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// Which linear layers a compression stage touches, by module group and by weight-name regexes
/// (Hugging Face names such as `model.layers.3.self_attn.q_proj.weight`, `lm_head.weight`).
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub group: ModuleGroup,
    /// If non-empty, only weights whose name matches one of these (the llm-compressor convention).
    pub targets: Vec<NameRegex>,
    /// Weights whose name matches one of these are left alone.
    pub ignore: Vec<NameRegex>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            group: ModuleGroup::All,
            targets: Vec::new(),
            ignore: Vec::new(),
        }
    }
}

impl Selection {
    /// The selection's parameters, as they enter a key. Defaults are left out so that adding
    /// the feature did not change the keys of stages that do not use it.
    pub fn cache_key(&self, key: &mut KeyWriter) {
        if self.group != ModuleGroup::All {
            key.put("modules", self.group);
        }
        if !self.targets.is_empty() {
            key.put("targets", &self.targets);
        }
        if !self.ignore.is_empty() {
            key.put("ignore", &self.ignore);
        }
    }
}

/// Where a calibrated method gets its layer inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibrationMode {
    /// Block i sees the outputs of blocks 0..i−1 after they were compressed (the reference).
    Sequential,
    /// Statistics of the uncompressed model, from the calibrate stage: one entry serves a sweep.
    Dense,
}

impl CalibrationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CalibrationMode::Sequential => "sequential",
            CalibrationMode::Dense => "dense",
        }
    }
}

key_value_as_str!(NameRegex, ModuleGroup, CalibrationMode);

/// The memory estimate of a prune or quantize stage: the weights three times (the model, the
/// matrix being compressed and its replacement); a calibrated method adds its statistics and,
/// run sequentially, the calibration tokens' hidden states. Sequential Hessians are one block's
/// (the largest block's, accumulated, then factored in f64 beside); dense ones are every block's,
/// read at once.
pub(crate) fn compress_memory(
    model: super::ModelSize,
    calibrated: Option<(CalibrationMode, bool)>,
) -> u64 {
    let base = model.held * 3;
    match calibrated {
        None => base,
        Some((CalibrationMode::Sequential, hessians)) => {
            base + model.calib_hidden()
                + if hessians {
                    model.block_hessians * 3
                } else {
                    0
                }
        }
        Some((CalibrationMode::Dense, hessians)) => {
            base + if hessians { model.hessians } else { 0 }
        }
    }
}

#[cfg(test)]
mod memory_tests {
    use super::*;
    use crate::stages::ModelSize;

    #[test]
    fn calibrated_estimates_add_statistics_and_hidden_states() {
        // A 7B-shaped model streamed within 4 GB: one block of 0.8 GB plus 1 GB outside.
        let m = ModelSize {
            width: 4096,
            block_hessians: 887_357_440,
            hessians: 32 * 887_357_440,
            calib_tokens: 128 * 2048,
            ..ModelSize::new(27_000_000_000, 809_500_000, 32, 32_000)
        }
        .within(4 << 30);
        let held = 27_000_000_000 - 31 * 809_500_000;
        assert_eq!(m.held, held);
        // 128 × 2048 tokens × 4096 × 4 B = 4.3 GB of hidden states, capped at a quarter of 4 GiB.
        assert_eq!(m.calib_hidden(), 1 << 30);
        assert_eq!(compress_memory(m, None), 3 * held);
        assert_eq!(
            compress_memory(m, Some((CalibrationMode::Sequential, false))),
            3 * held + (1 << 30)
        );
        assert_eq!(
            compress_memory(m, Some((CalibrationMode::Sequential, true))),
            3 * held + (1 << 30) + 3 * 887_357_440
        );
        assert_eq!(
            compress_memory(m, Some((CalibrationMode::Dense, true))),
            3 * held + 32 * 887_357_440
        );
    }
}
