//! `prune`: zero weights of the selected linear layers by magnitude, at random, by rows, by
//! Wanda score, or with SparseGPT's reconstruction.

mod read;
mod run;

use std::fmt;

use super::compress::{CalibrationMode, NameRegex, Selection};
use super::{Kind, ModelSize, StageCtx, StageError, StageOutput};
use crate::cache::key::{CacheKey, KeyWriter};
use crate::compress::sparsegpt;
use crate::pipeline::fields::Fields;
use crate::pipeline::spec::InstanceRef;

/// The pruned weight count of the methods that take exactly round(N·s) weights, in their keys:
/// entries of the floor(N·s) rule they once followed must not be served.
const ROUNDED_COUNT: &str = "round(N*s)";

#[derive(Clone, Debug, PartialEq)]
pub struct PruneSpec {
    pub model: InstanceRef,
    pub method: PruneMethod,
    /// For `Pattern::NM` the sparsity is n/m and this holds it.
    pub sparsity: Sparsity,
    pub pattern: Pattern,
    pub selection: Selection,
    pub overrides: Vec<SparsityOverride>,
}

/// A sparsity in [0, 1).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Sparsity(f64);

impl Sparsity {
    pub fn new(s: f64) -> Option<Self> {
        (0.0..1.0).contains(&s).then_some(Sparsity(s))
    }
    pub fn get(self) -> f64 {
        self.0
    }
}

/// What a stage prunes. Not the kernels' [`sparsegpt::Pattern`]: `rows` exists only for
/// magnitude pruning, and the fraction is per matrix (overrides), so a kernel's pattern is made
/// per matrix by [`Pattern::for_sparsegpt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Unstructured,
    /// N of every M consecutive input columns are zeroed; 0 < n < m.
    NM {
        n: usize,
        m: usize,
    },
    /// Whole output rows, those of smallest L1 norm (structured pruning; magnitude only).
    Rows,
}

impl Pattern {
    /// SparseGPT's pattern at sparsity `s`; `None` for `rows`, which SparseGPT does not do.
    pub fn for_sparsegpt(self, s: f64) -> Option<sparsegpt::Pattern> {
        match self {
            Pattern::Unstructured => Some(sparsegpt::Pattern::Unstructured(s)),
            Pattern::NM { n, m } => Some(sparsegpt::Pattern::NM { n, m }),
            Pattern::Rows => None,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured => f.write_str("unstructured"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
            Pattern::Rows => f.write_str("rows"),
        }
    }
}

/// Whether a magnitude threshold is per matrix or shared by every selected matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Layer,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Layer => "layer",
            Scope::Global => "global",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PruneMethod {
    Magnitude {
        scope: Scope,
    },
    /// Uniformly random weights (seeded): the knowledge study's control.
    Random {
        seed: u64,
    },
    /// Needs per-column input norms.
    Wanda {
        calibration: InstanceRef,
        mode: CalibrationMode,
    },
    /// Needs the Hessian of each layer's input.
    SparseGpt {
        calibration: InstanceRef,
        mode: CalibrationMode,
        percdamp: f64,
        blocksize: usize,
    },
}

impl PruneMethod {
    pub fn name(&self) -> &'static str {
        match self {
            PruneMethod::Magnitude { .. } => "magnitude",
            PruneMethod::Random { .. } => "random",
            PruneMethod::Wanda { .. } => "wanda",
            PruneMethod::SparseGpt { .. } => "sparsegpt",
        }
    }

    /// The calibrate stage this method reads, and how.
    pub fn calibration(&self) -> Option<(InstanceRef, CalibrationMode)> {
        match self {
            PruneMethod::Wanda { calibration, mode }
            | PruneMethod::SparseGpt {
                calibration, mode, ..
            } => Some((*calibration, *mode)),
            _ => None,
        }
    }
}

/// A sparsity for the weights whose name matches `pattern` (the first matching override wins).
#[derive(Clone, Debug, PartialEq)]
pub struct SparsityOverride {
    pub pattern: NameRegex,
    pub sparsity: Sparsity,
}

impl CacheKey for PruneSpec {
    fn cache_key(&self, key: &mut KeyWriter) {
        key.put("method", self.method.name())
            .put("sparsity", self.sparsity.get())
            .put("pattern", self.pattern.to_string());
        match &self.method {
            PruneMethod::Magnitude { scope } => {
                key.put("scope", scope.as_str());
                if *scope == Scope::Global {
                    key.put("count", ROUNDED_COUNT);
                }
            }
            PruneMethod::Random { seed } => {
                key.put("seed", *seed).put("count", ROUNDED_COUNT);
            }
            PruneMethod::Wanda { mode, .. } => {
                key.put("calibration_mode", mode.as_str());
            }
            PruneMethod::SparseGpt {
                mode,
                percdamp,
                blocksize,
                ..
            } => {
                key.put("calibration_mode", mode.as_str())
                    .put("percdamp", *percdamp)
                    .put("blocksize", *blocksize)
                    .put("factorization", crate::compress::FACTORIZATION);
            }
        }
        if self.pattern == Pattern::Rows && !key.has("count") {
            key.put("count", ROUNDED_COUNT);
        }
        self.selection.cache_key(key);
        if !self.overrides.is_empty() {
            let o: Vec<_> = self
                .overrides
                .iter()
                .map(|o| {
                    crate::cache::key::ParamValue::List(vec![
                        o.pattern.as_str().into(),
                        o.sparsity.get().into(),
                    ])
                })
                .collect();
            key.put("overrides", o);
        }
    }
}

impl Kind for PruneSpec {
    const NAME: &'static str = "prune";
    // 2: overlays are packed (`overlay/`), no longer one dense safetensors file.
    const VERSION: u32 = 2;
    const KEYS: &'static [&'static str] = &[
        "model",
        "method",
        "sparsity",
        "pattern",
        "calibration",
        "calibration_mode",
        "scope",
        "seed",
        "percdamp",
        "blocksize",
        "modules",
        "targets",
        "ignore",
        "overrides",
    ];
    // A `calibration:` the method ignores still counts: the method may be swept.
    const REF_KEYS: &'static [&'static str] = &["model", "calibration"];
    const ACCELERATED: bool = true;

    fn read(f: &mut Fields) -> Option<Self> {
        read::read(f)
    }

    fn inputs(&self) -> Vec<(String, InstanceRef)> {
        let mut v = vec![("model".into(), self.model)];
        if let Some((calibration, _)) = self.method.calibration() {
            v.push(("calibration".into(), calibration));
        }
        v
    }

    fn memory(&self, model: ModelSize) -> u64 {
        let hessians = matches!(self.method, PruneMethod::SparseGpt { .. });
        let calibrated = self.method.calibration().map(|(_, mode)| (mode, hessians));
        super::compress::compress_memory(model, calibrated)
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError> {
        run::run(ctx, self)
    }
}
