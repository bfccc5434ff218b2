//! The validated, fully typed form of a pipeline file, with sweeps expanded into stage instances.
//!
//! Everything here is checked: references resolve, values are in range, files exist. Nothing in it
//! is optional that a stage needs, so the planner and the stages never re-validate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::cache::key::{ParamValue, Params};

/// A validated pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The pipeline file, canonicalized.
    pub path: PathBuf,
    /// blake3 of the file's bytes (provenance only: keys never depend on it).
    pub source_digest: crate::cache::key::Digest,
    pub name: String,
    pub models: BTreeMap<String, ModelSource>,
    pub datasets: BTreeMap<String, DatasetSource>,
    /// Axis names in the order the file declares them.
    pub axes: Vec<String>,
    /// Stages in file order; each expanded into its instances.
    pub stages: Vec<Stage>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSource {
    pub name: String,
    /// Directory holding `config.json`, `tokenizer.json` and the weights.
    pub dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DatasetSource {
    pub name: String,
    pub path: PathBuf,
    pub format: DatasetFormat,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DatasetFormat {
    /// Plain text, cut into documents as `documents` says.
    Text { documents: TextDocuments },
    /// JSON Lines; each line's `field` is one document.
    Jsonl { field: String },
}

#[derive(Clone, Debug, PartialEq)]
pub enum TextDocuments {
    /// The whole file is one document.
    Whole,
    /// One document per line, as Hugging Face's `text` loader gives them (the newline kept, blank
    /// lines as empty documents): the rows WikiText's perplexity protocol joins with "\n\n".
    Lines,
    /// Split on a separator string; each piece trimmed, empty pieces dropped.
    Separator(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageKind {
    Load,
    Calibrate,
    Prune,
    Quantize,
    Evaluate,
    Report,
}

impl StageKind {
    pub const ALL: [StageKind; 6] = [
        StageKind::Load,
        StageKind::Calibrate,
        StageKind::Prune,
        StageKind::Quantize,
        StageKind::Evaluate,
        StageKind::Report,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Load => "load",
            StageKind::Calibrate => "calibrate",
            StageKind::Prune => "prune",
            StageKind::Quantize => "quantize",
            StageKind::Evaluate => "evaluate",
            StageKind::Report => "report",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        StageKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named stage of the file.
#[derive(Clone, Debug)]
pub struct Stage {
    pub name: String,
    pub kind: StageKind,
    /// The sweep axes this stage depends on (directly or through its inputs), in declaration order.
    pub axes: Vec<String>,
    /// One instance per distinct assignment of `axes` among the sweep's points (exactly one if
    /// `axes` is empty), in sweep order.
    pub instances: Vec<Instance>,
    /// 1-based line of the stage's key in the file, for messages.
    pub line: usize,
}

/// A sweep point restricted to some axes.
pub type Point = BTreeMap<String, ParamValue>;

/// Which instance of which stage: indices into `Pipeline::stages` and `Stage::instances`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceRef {
    pub stage: usize,
    pub instance: usize,
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub point: Point,
    pub spec: StageSpec,
}

/// What a stage instance does, with every reference resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum StageSpec {
    Load(LoadSpec),
    Calibrate(CalibrateSpec),
    Prune(PruneSpec),
    Quantize(QuantizeSpec),
    Evaluate(EvaluateSpec),
    Report(ReportSpec),
}

impl StageSpec {
    pub fn kind(&self) -> StageKind {
        match self {
            StageSpec::Load(_) => StageKind::Load,
            StageSpec::Calibrate(_) => StageKind::Calibrate,
            StageSpec::Prune(_) => StageKind::Prune,
            StageSpec::Quantize(_) => StageKind::Quantize,
            StageSpec::Evaluate(_) => StageKind::Evaluate,
            StageSpec::Report(_) => StageKind::Report,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    Bf16,
}

impl DType {
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoadSpec {
    /// Name of the entry in `models`.
    pub model: String,
    pub dtype: DType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// Seeded random windows of random documents longer than `seqlen` (the reference behaviour).
    Random,
    /// The first `samples` non-overlapping windows of the tokenized, concatenated text.
    Contiguous,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CalibrateSpec {
    pub model: InstanceRef,
    /// Name of the entry in `datasets`.
    pub dataset: String,
    pub samples: usize,
    pub seqlen: usize,
    pub sampling: Sampling,
    pub seed: u64,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Unstructured,
    /// N of every M consecutive input columns are zeroed; 0 < n < m.
    NM {
        n: usize,
        m: usize,
    },
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured => f.write_str("unstructured"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PruneMethod {
    Magnitude,
    /// Needs per-column input norms from a calibrate stage.
    Wanda {
        calibration: InstanceRef,
    },
}

impl PruneMethod {
    pub fn name(&self) -> &'static str {
        match self {
            PruneMethod::Magnitude => "magnitude",
            PruneMethod::Wanda { .. } => "wanda",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PruneSpec {
    pub model: InstanceRef,
    pub method: PruneMethod,
    /// For `Pattern::NM` the sparsity is n/m and this holds it.
    pub sparsity: Sparsity,
    pub pattern: Pattern,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeSpec {
    pub model: InstanceRef,
    pub method: QuantMethod,
}

#[derive(Clone, Debug, PartialEq)]
pub enum QuantMethod {
    /// Round-to-nearest min-max, per output channel (`group_size: None`) or per group of columns.
    Rtn {
        bits: u32,
        group_size: Option<usize>,
        symmetric: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvaluateSpec {
    pub model: InstanceRef,
    pub task: EvalTask,
    /// Sequences per forward pass: throughput only, never part of a key.
    pub batch_size: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EvalTask {
    /// The WikiText protocol: join documents with `join`, tokenize once, cut into non-overlapping
    /// windows of `seqlen`, drop the remainder; optionally only the first `limit` windows.
    Perplexity {
        dataset: String,
        seqlen: usize,
        join: String,
        limit: Option<usize>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Csv,
    Markdown,
    Jsonl,
}

impl ReportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Csv => "csv",
            ReportFormat::Markdown => "md",
            ReportFormat::Jsonl => "jsonl",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReportSpec {
    /// Every instance of every listed stage, in order.
    pub inputs: Vec<InstanceRef>,
    pub formats: Vec<ReportFormat>,
}

impl StageSpec {
    /// The parameters that enter the cache key (execution-only settings such as `batch_size` are
    /// left out; references enter as input digests, not here).
    pub fn key_params(&self) -> Params {
        let mut p = Params::new();
        match self {
            StageSpec::Load(s) => {
                p.insert("dtype".into(), s.dtype.as_str().into());
            }
            StageSpec::Calibrate(s) => {
                p.insert("samples".into(), s.samples.into());
                p.insert("seqlen".into(), s.seqlen.into());
                let sampling = match s.sampling {
                    Sampling::Random => "random",
                    Sampling::Contiguous => "contiguous",
                };
                p.insert("sampling".into(), sampling.into());
                // The seed only matters for random sampling.
                if s.sampling == Sampling::Random {
                    p.insert("seed".into(), s.seed.into());
                }
            }
            StageSpec::Prune(s) => {
                p.insert("method".into(), s.method.name().into());
                p.insert("sparsity".into(), s.sparsity.get().into());
                p.insert("pattern".into(), s.pattern.to_string().into());
            }
            StageSpec::Quantize(s) => match &s.method {
                QuantMethod::Rtn {
                    bits,
                    group_size,
                    symmetric,
                } => {
                    p.insert("method".into(), "rtn".into());
                    p.insert("bits".into(), (*bits as i64).into());
                    p.insert(
                        "group_size".into(),
                        group_size.map_or(-1, |g| g as i64).into(),
                    );
                    p.insert("symmetric".into(), (*symmetric).into());
                }
            },
            StageSpec::Evaluate(s) => match &s.task {
                EvalTask::Perplexity {
                    dataset: _,
                    seqlen,
                    join,
                    limit,
                } => {
                    p.insert("task".into(), "perplexity".into());
                    p.insert("seqlen".into(), (*seqlen).into());
                    p.insert("join".into(), join.as_str().into());
                    if let Some(l) = limit {
                        p.insert("limit".into(), (*l).into());
                    }
                }
            },
            StageSpec::Report(s) => {
                let f = s
                    .formats
                    .iter()
                    .map(|f| ParamValue::from(f.as_str()))
                    .collect();
                p.insert("formats".into(), ParamValue::List(f));
            }
        }
        p
    }

    /// The stage instances this one reads, by role ("model", "calibration", "input.3", …).
    pub fn inputs(&self) -> Vec<(String, InstanceRef)> {
        match self {
            StageSpec::Load(_) => vec![],
            StageSpec::Calibrate(s) => vec![("model".into(), s.model)],
            StageSpec::Prune(s) => {
                let mut v = vec![("model".into(), s.model)];
                if let PruneMethod::Wanda { calibration } = &s.method {
                    v.push(("calibration".into(), *calibration));
                }
                v
            }
            StageSpec::Quantize(s) => vec![("model".into(), s.model)],
            StageSpec::Evaluate(s) => vec![("model".into(), s.model)],
            StageSpec::Report(s) => s
                .inputs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("input.{i:04}"), *r))
                .collect(),
        }
    }

    /// Datasets read directly, by role.
    pub fn datasets(&self) -> Vec<(&'static str, &str)> {
        match self {
            StageSpec::Calibrate(s) => vec![("dataset", s.dataset.as_str())],
            StageSpec::Evaluate(s) => match &s.task {
                EvalTask::Perplexity { dataset, .. } => vec![("dataset", dataset.as_str())],
            },
            _ => vec![],
        }
    }
}
