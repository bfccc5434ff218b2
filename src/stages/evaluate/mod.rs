//! `evaluate`: one task (perplexity, divergence from a reference model, LAMA knowledge probe,
//! multiple choice, generation) on one model, with per-sample outputs beside the metrics.

mod read;
mod run;

use std::path::{Path, PathBuf};

use super::{Kind, ModelSize, StageCtx, StageError, StageOutput};
use crate::cache::key::{CacheKey, KeyWriter};
use crate::eval::choice::ChoiceTask;
use crate::eval::generation::GenerationTask;
pub use crate::eval::knowledge::Ranking;
pub use crate::eval::lama::Split as LamaSplit;
use crate::key_value_as_str;
use crate::pipeline::fields::Fields;
use crate::pipeline::spec::InstanceRef;

#[derive(Clone, Debug, PartialEq)]
pub struct EvaluateSpec {
    pub model: InstanceRef,
    pub task: EvalTask,
    /// Sequences per forward pass: throughput only, never part of a key.
    pub batch_size: usize,
}

/// A task file, read and checked when the pipeline is read. Its digest enters the key as a
/// file's; two specs naming one file are the same.
#[derive(Clone, Debug)]
pub struct TaskFile<T> {
    pub path: PathBuf,
    pub task: T,
}

impl<T> PartialEq for TaskFile<T> {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum EvalTask {
    /// Perplexity of a token stream or of documents (see [`PplMode`]).
    Perplexity {
        dataset: String,
        seqlen: usize,
        /// What documents are joined with before tokenizing (`windows` and `sliding`).
        join: String,
        /// At most this many windows (documents in `documents` mode).
        limit: Option<usize>,
        mode: PplMode,
    },
    /// Jensen-Shannon divergence, KL(reference‖model) and top-1 agreement of the next-token
    /// distributions, on the non-overlapping windows of the joined documents.
    Divergence {
        dataset: String,
        seqlen: usize,
        join: String,
        limit: Option<usize>,
        reference: InstanceRef,
    },
    /// LAMA knowledge probe.
    Knowledge {
        dataset: String,
        ranking: Ranking,
        splits: Vec<LamaSplit>,
        /// Only these relations (all if empty).
        relations: Vec<String>,
        /// At most this many facts per relation, in file order.
        limit: Option<usize>,
        /// Keep only the facts the reference model ranks first.
        known_only: bool,
        reference: InstanceRef,
    },
    /// lm-evaluation-harness multiple choice, the mapping from fields declared in a task file.
    MultipleChoice {
        dataset: String,
        task_file: TaskFile<ChoiceTask>,
        limit: Option<usize>,
    },
    /// Greedy generation scored by EM, F1 and ROUGE-1, as a task file declares it.
    Generation {
        dataset: String,
        task_file: TaskFile<GenerationTask>,
        limit: Option<usize>,
        max_new_tokens: Option<usize>,
    },
}

impl EvalTask {
    pub fn name(&self) -> &'static str {
        match self {
            EvalTask::Perplexity { .. } => "perplexity",
            EvalTask::Divergence { .. } => "divergence",
            EvalTask::Knowledge { .. } => "knowledge",
            EvalTask::MultipleChoice { .. } => "multiple-choice",
            EvalTask::Generation { .. } => "generation",
        }
    }

    pub fn dataset(&self) -> &str {
        match self {
            EvalTask::Perplexity { dataset, .. }
            | EvalTask::Divergence { dataset, .. }
            | EvalTask::Knowledge { dataset, .. }
            | EvalTask::MultipleChoice { dataset, .. }
            | EvalTask::Generation { dataset, .. } => dataset,
        }
    }

    /// The second model the task reads, if any.
    pub fn reference(&self) -> Option<InstanceRef> {
        match self {
            EvalTask::Divergence { reference, .. } => Some(*reference),
            EvalTask::Knowledge {
                known_only: true,
                reference,
                ..
            } => Some(*reference),
            _ => None,
        }
    }

    fn task_file(&self) -> Option<&Path> {
        match self {
            EvalTask::MultipleChoice { task_file, .. } => Some(&task_file.path),
            EvalTask::Generation { task_file, .. } => Some(&task_file.path),
            _ => None,
        }
    }
}

/// How perplexity cuts its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PplMode {
    /// The WikiText protocol: one stream, non-overlapping windows, the remainder dropped.
    Windows,
    /// Windows of `seqlen` every `stride` tokens; each scores only the tokens the previous
    /// windows did not, with the rest of the window as context.
    Sliding { stride: usize },
    /// Each document tokenized on its own and cut into chunks of at most `seqlen`.
    Documents,
}

impl PplMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PplMode::Windows => "windows",
            PplMode::Sliding { .. } => "sliding",
            PplMode::Documents => "documents",
        }
    }
}

key_value_as_str!(Ranking, LamaSplit, PplMode);

/// An evaluation's parameters as they enter its key: everything that can change a score. The
/// perplexity keys of earlier versions are kept as they were (`mode` only when not `windows`).
impl CacheKey for EvalTask {
    fn cache_key(&self, key: &mut KeyWriter) {
        key.put("task", self.name());
        match self {
            EvalTask::Perplexity {
                dataset: _,
                seqlen,
                join,
                limit,
                mode,
            } => {
                key.put("seqlen", *seqlen).put_some("limit", *limit);
                match mode {
                    PplMode::Windows => {
                        key.put("join", join);
                    }
                    PplMode::Sliding { stride } => {
                        key.put("join", join)
                            .put("mode", *mode)
                            .put("stride", *stride);
                    }
                    PplMode::Documents => {
                        key.put("mode", *mode);
                    }
                }
            }
            EvalTask::Divergence {
                dataset: _,
                seqlen,
                join,
                limit,
                reference: _,
            } => {
                key.put("seqlen", *seqlen)
                    .put("join", join)
                    .put_some("limit", *limit);
            }
            EvalTask::Knowledge {
                dataset: _,
                ranking,
                splits,
                relations,
                limit,
                known_only,
                reference: _,
            } => {
                key.put("ranking", *ranking).put("splits", splits);
                if !relations.is_empty() {
                    key.put("relations", relations);
                }
                key.put_some("limit", *limit).put("known_only", *known_only);
            }
            EvalTask::MultipleChoice {
                dataset: _,
                task_file: _,
                limit,
            } => {
                key.put_some("limit", *limit);
            }
            EvalTask::Generation {
                dataset: _,
                task_file: _,
                limit,
                max_new_tokens,
            } => {
                key.put_some("limit", *limit)
                    .put_some("max_new_tokens", *max_new_tokens);
            }
        }
    }
}

impl CacheKey for EvaluateSpec {
    fn cache_key(&self, key: &mut KeyWriter) {
        self.task.cache_key(key);
    }
}

impl Kind for EvaluateSpec {
    const NAME: &'static str = "evaluate";
    // 3: per-sample outputs, settings in the manifest.
    const VERSION: u32 = 3;
    const KEYS: &'static [&'static str] = &[
        "model",
        "task",
        "dataset",
        "seqlen",
        "join",
        "limit",
        "batch_size",
        "mode",
        "stride",
        "reference",
        "ranking",
        "splits",
        "relations",
        "known_only",
        "task_file",
        "max_new_tokens",
    ];
    const REF_KEYS: &'static [&'static str] = &["model", "reference"];
    const ACCELERATED: bool = true;

    fn read(f: &mut Fields) -> Option<Self> {
        read::read(f)
    }

    fn inputs(&self) -> Vec<(String, InstanceRef)> {
        let mut v = vec![("model".into(), self.model)];
        if let Some(r) = self.task.reference() {
            v.push(("reference".into(), r));
        }
        v
    }

    fn datasets(&self) -> Vec<(&'static str, &str)> {
        vec![("dataset", self.task.dataset())]
    }

    fn extra_files(&self) -> Vec<(&'static str, &Path)> {
        self.task
            .task_file()
            .map(|p| ("task_file", p))
            .into_iter()
            .collect()
    }

    fn memory(&self, model: ModelSize) -> u64 {
        let (bytes, vocab, batch) = (model.held, model.vocab, self.batch_size as u64);
        let activations = match &self.task {
            // Logits and their log-softmax for one batch, f32.
            EvalTask::Perplexity { seqlen, .. } => batch * *seqlen as u64 * vocab * 8,
            // Both models' logits and log-probabilities, and the mixture's.
            EvalTask::Divergence { seqlen, .. } => batch * *seqlen as u64 * vocab * 24 + bytes,
            // Short prompts: a batch's logits over a few hundred positions.
            EvalTask::Knowledge { .. } | EvalTask::MultipleChoice { .. } => {
                batch * 512 * vocab * 8 + bytes
            }
            EvalTask::Generation { .. } => 2048 * vocab * 8,
        };
        bytes * 2 + activations
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError> {
        run::run(ctx, self)
    }
}
