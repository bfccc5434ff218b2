//! `calibrate`: windows of a dataset, and the input statistics of every linear layer of the
//! dense model on them, kept for the compression stages that read them.

mod read;
mod run;

pub(crate) use run::{read_stats, read_windows, CALIBRATION_BATCH};

use super::{Kind, ModelSize, StageCtx, StageError, StageOutput};
use crate::cache::key::{CacheKey, KeyWriter};
pub use crate::capture::Accumulation;
use crate::key_value_as_str;
use crate::pipeline::fields::Fields;
use crate::pipeline::spec::InstanceRef;

#[derive(Clone, Debug, PartialEq)]
pub struct CalibrateSpec {
    pub model: InstanceRef,
    /// Name of the entry in `datasets`.
    pub dataset: String,
    pub samples: usize,
    pub seqlen: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// What to accumulate over the windows (the windows themselves are always kept).
    pub statistics: Vec<Statistic>,
    /// How the statistics are summed over the windows.
    pub accumulation: Accumulation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// Seeded random windows of random documents longer than `seqlen` (the reference behaviour).
    Random,
    /// The first `samples` non-overlapping windows of the tokenized, concatenated text.
    Contiguous,
}

impl Sampling {
    pub fn as_str(self) -> &'static str {
        match self {
            Sampling::Random => "random",
            Sampling::Contiguous => "contiguous",
        }
    }
}

/// Per-linear-layer input statistics a calibrate stage can record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Statistic {
    /// Σ x_j² per input feature (Wanda's scaler × number of samples), or with
    /// `accumulation: reference` the scaler itself.
    Norms,
    /// Σ XᵀX over tokens, per distinct layer input (SparseGPT's and GPTQ's Hessian × n/2), or
    /// with `accumulation: reference` the Hessian itself.
    Hessian,
}

impl Statistic {
    pub fn as_str(self) -> &'static str {
        match self {
            Statistic::Norms => "norms",
            Statistic::Hessian => "hessian",
        }
    }
}

key_value_as_str!(Sampling, Statistic, Accumulation);

impl CacheKey for CalibrateSpec {
    fn cache_key(&self, key: &mut KeyWriter) {
        key.put("samples", self.samples)
            .put("seqlen", self.seqlen)
            .put("sampling", self.sampling);
        // The seed only matters for random sampling.
        if self.sampling == Sampling::Random {
            key.put("seed", self.seed);
        }
        key.put("statistics", &self.statistics);
        // Only when not the default, so that existing keys stay as they were.
        if self.accumulation != Accumulation::Exact {
            key.put("accumulation", self.accumulation);
        }
    }
}

impl Kind for CalibrateSpec {
    const NAME: &'static str = "calibrate";
    const VERSION: u32 = 1;
    const KEYS: &'static [&'static str] = &[
        "model",
        "dataset",
        "samples",
        "seqlen",
        "sampling",
        "seed",
        "statistics",
        "accumulation",
    ];
    const REF_KEYS: &'static [&'static str] = &["model"];
    const ACCELERATED: bool = true;

    fn read(f: &mut Fields) -> Option<Self> {
        read::read(f)
    }

    fn inputs(&self) -> Vec<(String, InstanceRef)> {
        vec![("model".into(), self.model)]
    }

    fn datasets(&self) -> Vec<(&'static str, &str)> {
        vec![("dataset", self.dataset.as_str())]
    }

    fn memory(&self, model: ModelSize) -> u64 {
        // Every block's statistics are kept to the end; norms are one vector per input.
        let stats = if self.statistics.contains(&Statistic::Hessian) {
            model.hessians
        } else {
            0
        };
        model.held * 2 + model.calib_hidden() + stats
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError> {
        run::run(ctx, self)
    }
}
