//! Stage kinds: each a function from its inputs (cache entries, files) to a new cache entry.
//!
//! A kind lives in one folder, `stages/<kind>/`: its typed spec and cache key (`mod.rs`), its
//! reader of pipeline keys (`read.rs`) and its execution (`run.rs`), behind the [`Kind`] trait.
//! The `stage_kinds!` list below is the only other place that names it.
//!
//! A stage writes its files into a staging directory and returns the metadata for its manifest;
//! the executor makes the entry atomic. Stages see the DAG through [`Dag`] and the entries they
//! are handed, never the cache's layout, the planner or the scheduler.

mod ctx;
pub mod dag;
mod error;
mod kind;
pub mod weights;

pub mod calibrate;
pub mod compress;
pub mod evaluate;
pub mod load;
pub mod prune;
pub mod quantize;
pub mod report;
pub mod train;

pub use crate::cancel::Cancelled;
pub use ctx::{Progress, StageCtx, StageOutput};
pub use dag::{ancestors, Dag, NodeId};
pub use error::{read_tensors, write_tensors, Invariant, StageError};
pub use kind::{Kind, ModelSize, OVERHEAD};
pub use report::TEXT_FILE as REPORT_TEXT_FILE;

use std::fmt;
use std::path::Path;

use crate::cache::key::{CacheKey, KeyWriter, Params};
use crate::pipeline::fields::Fields;
use crate::pipeline::spec::{InstanceRef, Pipeline};

/// Declares the stage kinds: the [`StageKind`] names, the [`StageSpec`] values, and their
/// dispatch to each kind's [`Kind`] implementation.
macro_rules! stage_kinds {
    ($($variant:ident => $spec:ty),* $(,)?) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum StageKind {
            $($variant),*
        }

        impl StageKind {
            pub const ALL: &'static [StageKind] = &[$(StageKind::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(StageKind::$variant => <$spec as Kind>::NAME),*
                }
            }

            /// The kind's algorithm version (see [`Kind::VERSION`]).
            pub fn version(self) -> u32 {
                match self {
                    $(StageKind::$variant => <$spec as Kind>::VERSION),*
                }
            }

            /// The keys a stage of the kind accepts, besides `kind`.
            pub fn keys(self) -> &'static [&'static str] {
                match self {
                    $(StageKind::$variant => <$spec as Kind>::KEYS),*
                }
            }

            /// The keys whose values name other stages.
            pub fn ref_keys(self) -> &'static [&'static str] {
                match self {
                    $(StageKind::$variant => <$spec as Kind>::REF_KEYS),*
                }
            }

            /// Whether the kind can use an accelerator (otherwise it runs on a CPU slot).
            pub fn accelerated(self) -> bool {
                match self {
                    $(StageKind::$variant => <$spec as Kind>::ACCELERATED),*
                }
            }

            /// Whether a run hands the entry's files out (see [`Kind::SERVED`]).
            pub fn served(self) -> bool {
                match self {
                    $(StageKind::$variant => <$spec as Kind>::SERVED),*
                }
            }
        }

        /// What a stage instance does, with every reference resolved.
        #[derive(Clone, Debug, PartialEq)]
        pub enum StageSpec {
            $($variant($spec)),*
        }

        impl StageSpec {
            pub fn kind(&self) -> StageKind {
                match self {
                    $(StageSpec::$variant(_) => StageKind::$variant),*
                }
            }

            /// Reads one instance of a stage of `kind`.
            pub(crate) fn read(kind: StageKind, f: &mut Fields) -> Option<StageSpec> {
                match kind {
                    $(StageKind::$variant => <$spec as Kind>::read(f).map(StageSpec::$variant)),*
                }
            }

            pub fn inputs(&self) -> Vec<(String, InstanceRef)> {
                match self {
                    $(StageSpec::$variant(s) => s.inputs()),*
                }
            }

            pub fn datasets(&self) -> Vec<(&'static str, &str)> {
                match self {
                    $(StageSpec::$variant(s) => s.datasets()),*
                }
            }

            pub fn models(&self) -> Vec<(&str, &'static [&'static str])> {
                match self {
                    $(StageSpec::$variant(s) => s.models()),*
                }
            }

            pub fn extra_files(&self) -> Vec<(&'static str, &Path)> {
                match self {
                    $(StageSpec::$variant(s) => s.extra_files()),*
                }
            }

            /// Key parameters that only the pipeline knows of.
            pub fn pipeline_key(&self, pipeline: &Pipeline, key: &mut KeyWriter) {
                match self {
                    $(StageSpec::$variant(s) => s.pipeline_key(pipeline, key)),*
                }
            }

            pub fn source_model(&self, pipeline: &Pipeline) -> Option<ModelSize> {
                match self {
                    $(StageSpec::$variant(s) => s.source_model(pipeline)),*
                }
            }

            pub fn memory(&self, model: ModelSize) -> u64 {
                match self {
                    $(StageSpec::$variant(s) => s.memory(model)),*
                }
            }

            /// Runs the stage.
            pub fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError> {
                match self {
                    $(StageSpec::$variant(s) => s.run(ctx)),*
                }
            }
        }

        impl CacheKey for StageSpec {
            fn cache_key(&self, key: &mut KeyWriter) {
                match self {
                    $(StageSpec::$variant(s) => s.cache_key(key)),*
                }
            }
        }
    };
}

stage_kinds! {
    Load => load::LoadSpec,
    Train => train::TrainSpec,
    Calibrate => calibrate::CalibrateSpec,
    Prune => prune::PruneSpec,
    Quantize => quantize::QuantizeSpec,
    Evaluate => evaluate::EvaluateSpec,
    Report => report::ReportSpec,
}

impl StageKind {
    pub fn parse(s: &str) -> Option<Self> {
        StageKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StageSpec {
    /// The parameters the spec contributes to its cache key (execution-only settings such as
    /// `batch_size` stay out; references enter as input digests, not here).
    pub fn key_params(&self) -> Params {
        crate::cache::key::params_of(self)
    }
}

/// Runs one stage.
pub fn execute(ctx: &StageCtx) -> Result<StageOutput, StageError> {
    ctx.spec().run(ctx)
}
