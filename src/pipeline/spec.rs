//! The validated, fully typed form of a pipeline file, with sweeps expanded into stage instances.
//!
//! Everything here is checked: references resolve, values are in range, files exist. Nothing in it
//! is optional that a stage needs, so the planner and the stages never re-validate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::cache::key::{ParamValue, Params};
pub use crate::calibrate::Accumulation;

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
    /// A file, or a directory for [`DatasetFormat::Lama`].
    pub path: PathBuf,
    pub format: DatasetFormat,
    /// One label per line, merged into record i as its field `label` (PIQA's and SIQA's
    /// releases keep the labels in a file of their own).
    pub labels: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DatasetFormat {
    /// Plain text, cut into documents as `documents` says.
    Text { documents: TextDocuments },
    /// JSON Lines: one record per line; as documents, each record's `field`.
    Jsonl { field: String },
    /// A JSON array of records (Alpaca's release); as documents, each record's `field`.
    Json { field: String },
    /// The SQuAD v1.1 JSON release: one record per question (`id`, `title`, `context`,
    /// `question`, `answers` as a list of strings).
    Squad,
    /// A LAMA directory: `relations.jsonl` with `TREx/`, `Google_RE/` and `Squad/` beside it.
    Lama,
}

impl DatasetFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            DatasetFormat::Text { .. } => "text",
            DatasetFormat::Jsonl { .. } => "jsonl",
            DatasetFormat::Json { .. } => "json",
            DatasetFormat::Squad => "squad",
            DatasetFormat::Lama => "lama",
        }
    }

    /// Whether the dataset reads as a list of text documents (perplexity, calibration).
    pub fn has_documents(&self) -> bool {
        matches!(
            self,
            DatasetFormat::Text { .. } | DatasetFormat::Jsonl { .. } | DatasetFormat::Json { .. }
        )
    }

    /// Whether the dataset reads as JSON records (multiple-choice and generation tasks).
    pub fn has_records(&self) -> bool {
        matches!(
            self,
            DatasetFormat::Jsonl { .. } | DatasetFormat::Json { .. } | DatasetFormat::Squad
        )
    }
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
    Train,
    Calibrate,
    Prune,
    Quantize,
    Evaluate,
    Report,
}

impl StageKind {
    pub const ALL: [StageKind; 7] = [
        StageKind::Load,
        StageKind::Train,
        StageKind::Calibrate,
        StageKind::Prune,
        StageKind::Quantize,
        StageKind::Evaluate,
        StageKind::Report,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Load => "load",
            StageKind::Train => "train",
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
    Train(TrainSpec),
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
            StageSpec::Train(_) => StageKind::Train,
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

/// Trains a small model from scratch (the quickstart's embedded default model).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSpec {
    /// The training documents.
    pub dataset: String,
    /// Another dataset whose words join the vocabulary (held-out text), if any.
    pub vocabulary: Option<String>,
    pub config: crate::train::TrainConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoadSpec {
    /// Name of the entry in `models`.
    pub model: String,
    pub dtype: DType,
    /// How text becomes token ids for every stage that reads this model.
    pub tokenizer_semantics: crate::model::TokenizerSemantics,
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
    /// What to accumulate over the windows (the windows themselves are always kept).
    pub statistics: Vec<Statistic>,
    /// How the statistics are summed over the windows.
    pub accumulation: Accumulation,
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
    /// Whole output rows, those of smallest L1 norm (structured pruning; magnitude only).
    Rows,
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

/// Which linear layers a compression stage touches, by module group and by weight-name regexes
/// (Hugging Face names such as `model.layers.3.self_attn.q_proj.weight`, `lm_head.weight`).
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub group: ModuleGroup,
    /// If non-empty, only weights whose name matches one of these (the llm-compressor convention).
    pub targets: Vec<String>,
    /// Weights whose name matches one of these are left alone.
    pub ignore: Vec<String>,
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

/// Module groups are the model families' (see [`crate::model::family`]).
pub use crate::model::ModuleGroup;

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

/// Whether a magnitude threshold is per matrix or shared by every selected matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Layer,
    Global,
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
    pub pattern: String,
    pub sparsity: Sparsity,
}

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

#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeSpec {
    pub model: InstanceRef,
    pub method: QuantMethod,
    pub selection: Selection,
}

#[derive(Clone, Debug, PartialEq)]
pub enum QuantMethod {
    /// Round-to-nearest min-max, per output channel (`group_size: None`) or per group of columns.
    Rtn {
        bits: u32,
        group_size: Option<usize>,
        symmetric: bool,
    },
    /// RTN's grid with GPTQ's error feedback through the inverse Hessian.
    Gptq {
        bits: u32,
        group_size: Option<usize>,
        symmetric: bool,
        act_order: bool,
        percdamp: f64,
        blocksize: usize,
        calibration: InstanceRef,
        mode: CalibrationMode,
    },
    /// PyTorch `quantize_dynamic`: int8 weights per tensor, inputs quantized on every call.
    DynamicInt8,
}

impl QuantMethod {
    pub fn name(&self) -> &'static str {
        match self {
            QuantMethod::Rtn { .. } => "rtn",
            QuantMethod::Gptq { .. } => "gptq",
            QuantMethod::DynamicInt8 => "dynamic-int8",
        }
    }
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
        task_file: PathBuf,
        limit: Option<usize>,
    },
    /// Greedy generation scored by EM, F1 and ROUGE-1, as a task file declares it.
    Generation {
        dataset: String,
        task_file: PathBuf,
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

/// How the knowledge probe ranks the gold object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranking {
    /// The object's first token among the whole vocabulary.
    Vocabulary,
    /// The object among the relation's objects, each scored by its summed log-probability.
    Candidates,
}

impl Ranking {
    pub fn as_str(self) -> &'static str {
        match self {
            Ranking::Vocabulary => "vocabulary",
            Ranking::Candidates => "candidates",
        }
    }
}

/// The parts of a LAMA directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LamaSplit {
    Trex,
    GoogleRe,
    Squad,
}

impl LamaSplit {
    pub const ALL: [LamaSplit; 3] = [LamaSplit::Trex, LamaSplit::GoogleRe, LamaSplit::Squad];

    pub fn as_str(self) -> &'static str {
        match self {
            LamaSplit::Trex => "trex",
            LamaSplit::GoogleRe => "google_re",
            LamaSplit::Squad => "squad",
        }
    }
}

/// A table rendering of a report stage (the terminal text is always written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Csv,
    Markdown,
    Latex,
    /// The long format: one JSON object per input instance, every metric (not pivoted).
    Jsonl,
}

impl ReportFormat {
    pub const ALL: [ReportFormat; 4] = [
        ReportFormat::Csv,
        ReportFormat::Markdown,
        ReportFormat::Latex,
        ReportFormat::Jsonl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Csv => "csv",
            ReportFormat::Markdown => "md",
            ReportFormat::Latex => "tex",
            ReportFormat::Jsonl => "jsonl",
        }
    }
}

/// What a report cell or plot coordinate shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricRef {
    /// `<stage>.<metric>`: a metric an input stage recorded (`metrics.json`).
    Metric { stage: String, metric: String },
    /// `model_mb`: the size of the row's model as it would be deployed, in MB (10^6 bytes):
    /// compressed tensors in their packed format, the others dense in the model's dtype.
    ModelMb,
    /// `compression`: the dense model's size ÷ `model_mb` (1 for the dense model).
    Compression,
}

impl MetricRef {
    pub const MODEL_MB: &'static str = "model_mb";
    pub const COMPRESSION: &'static str = "compression";
    /// The former name of a number that was not a model size; rejected with a pointer to
    /// `model_mb`.
    pub const SIZE_MB: &'static str = "size_mb";

    /// `model_mb`, `compression`, or `<stage>.<metric>` split at the first dot (stage names have
    /// none).
    pub fn parse(s: &str) -> Option<MetricRef> {
        match s {
            Self::MODEL_MB => return Some(MetricRef::ModelMb),
            Self::COMPRESSION => return Some(MetricRef::Compression),
            _ => {}
        }
        let (stage, metric) = s.split_once('.')?;
        (!stage.is_empty() && !metric.is_empty()).then(|| MetricRef::Metric {
            stage: stage.to_string(),
            metric: metric.to_string(),
        })
    }

    pub fn stage(&self) -> Option<&str> {
        match self {
            MetricRef::Metric { stage, .. } => Some(stage),
            MetricRef::ModelMb | MetricRef::Compression => None,
        }
    }
}

impl fmt::Display for MetricRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricRef::Metric { stage, metric } => write!(f, "{stage}.{metric}"),
            MetricRef::ModelMb => f.write_str(Self::MODEL_MB),
            MetricRef::Compression => f.write_str(Self::COMPRESSION),
        }
    }
}

/// A column of a report table.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportColumn {
    pub value: MetricRef,
    /// The header; `None`: the metric reference as written.
    pub label: Option<String>,
}

/// Which sweep points a table or plot keeps: each axis listed must take one of its values
/// (instances that do not use the axis, such as the dense baseline, are kept).
pub type ReportFilter = Vec<(String, Vec<ParamValue>)>;

/// A pivoted table: one row per compressed model, one column per metric.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportTable {
    /// File stem of its renderings (`<name>.md`, …).
    pub name: String,
    /// The axes that identify a row, in order. Instances using none of them (evaluations of the
    /// uncompressed model) form the dense baseline row, first.
    pub rows: Vec<String>,
    /// `None`: every metric of every input.
    pub columns: Option<Vec<ReportColumn>>,
    pub filter: ReportFilter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlotFormat {
    Svg,
    Png,
}

impl PlotFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PlotFormat::Svg => "svg",
            PlotFormat::Png => "png",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxisScale {
    Linear,
    Log,
}

impl AxisScale {
    pub fn as_str(self) -> &'static str {
        match self {
            AxisScale::Linear => "linear",
            AxisScale::Log => "log",
        }
    }
}

/// How a trade-off plot shows its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The values themselves.
    None,
    /// Value − dense baseline.
    Diff,
    /// Value ÷ dense baseline.
    Ratio,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::None => "none",
            Change::Diff => "diff",
            Change::Ratio => "ratio",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PlotKind {
    /// Each `y` against a numeric sweep axis: one panel per `y`, side by side, one line per
    /// series; the dense baseline as a dashed line.
    Line { x: String, y: Vec<MetricRef> },
    /// Each `y` against the metric `x`: a point per row, labelled with the `label` axes, joined
    /// per series; the dense baseline as a black star.
    Tradeoff {
        x: MetricRef,
        y: Vec<MetricRef>,
        label: Vec<String>,
        change: Change,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReportPlot {
    /// File stem of its renderings (`<name>.svg`, …).
    pub name: String,
    pub kind: PlotKind,
    /// The axes whose values make a series (one line or colour each).
    pub series: Vec<String>,
    /// Every axis that identifies a point (the x axis of a line plot, series, labels).
    pub rows: Vec<String>,
    pub filter: ReportFilter,
    pub x_scale: AxisScale,
    pub y_scale: AxisScale,
    pub formats: Vec<PlotFormat>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReportSpec {
    /// Every instance of every listed stage, in order.
    pub inputs: Vec<InstanceRef>,
    pub formats: Vec<ReportFormat>,
    /// Empty: one table named `report`, rows = every sweep axis the inputs use, every metric.
    pub tables: Vec<ReportTable>,
    pub plots: Vec<ReportPlot>,
}

impl ReportSpec {
    fn key_params(&self, p: &mut Params) {
        let f = self
            .formats
            .iter()
            .map(|f| ParamValue::from(f.as_str()))
            .collect();
        p.insert("formats".into(), ParamValue::List(f));
        // What is drawn is part of the output; absent when not configured.
        if !self.tables.is_empty() {
            let t = self.tables.iter().map(report_table_param).collect();
            p.insert("tables".into(), ParamValue::List(t));
        }
        if !self.plots.is_empty() {
            let t = self.plots.iter().map(report_plot_param).collect();
            p.insert("plots".into(), ParamValue::List(t));
        }
    }
}

fn strs(items: &[String]) -> ParamValue {
    ParamValue::List(items.iter().map(|s| s.as_str().into()).collect())
}

fn filter_param(filter: &ReportFilter) -> ParamValue {
    let f = filter
        .iter()
        .map(|(axis, values)| {
            ParamValue::List(vec![axis.as_str().into(), ParamValue::List(values.clone())])
        })
        .collect();
    ParamValue::List(f)
}

fn metrics_param(refs: &[MetricRef]) -> ParamValue {
    ParamValue::List(refs.iter().map(|r| r.to_string().into()).collect())
}

fn report_table_param(t: &ReportTable) -> ParamValue {
    let columns = match &t.columns {
        None => ParamValue::Str("*".into()),
        Some(cols) => ParamValue::List(
            cols.iter()
                .map(|c| {
                    let label = c.label.clone().unwrap_or_else(|| c.value.to_string());
                    ParamValue::List(vec![c.value.to_string().into(), label.into()])
                })
                .collect(),
        ),
    };
    ParamValue::List(vec![
        t.name.as_str().into(),
        strs(&t.rows),
        columns,
        filter_param(&t.filter),
    ])
}

fn report_plot_param(p: &ReportPlot) -> ParamValue {
    let kind = match &p.kind {
        PlotKind::Line { x, y } => {
            ParamValue::List(vec!["line".into(), x.as_str().into(), metrics_param(y)])
        }
        PlotKind::Tradeoff {
            x,
            y,
            label,
            change,
        } => ParamValue::List(vec![
            "tradeoff".into(),
            x.to_string().into(),
            metrics_param(y),
            strs(label),
            change.as_str().into(),
        ]),
    };
    let formats = p.formats.iter().map(|f| f.as_str().into()).collect();
    ParamValue::List(vec![
        p.name.as_str().into(),
        kind,
        strs(&p.series),
        strs(&p.rows),
        filter_param(&p.filter),
        p.x_scale.as_str().into(),
        p.y_scale.as_str().into(),
        ParamValue::List(formats),
    ])
}

impl StageSpec {
    /// The parameters that enter the cache key (execution-only settings such as `batch_size` are
    /// left out; references enter as input digests, not here).
    pub fn key_params(&self) -> Params {
        let mut p = Params::new();
        match self {
            StageSpec::Load(s) => {
                p.insert("dtype".into(), s.dtype.as_str().into());
                // The default stays out, so keys from before the setting still hold.
                if !s.tokenizer_semantics.is_default() {
                    p.insert(
                        "tokenizer_semantics".into(),
                        s.tokenizer_semantics.as_str().into(),
                    );
                }
            }
            StageSpec::Train(s) => {
                // Every setting, as the trainer serializes it: nothing that changes the model
                // can stay out of the key.
                let c = serde_json::to_value(&s.config).expect("the config serializes");
                for (k, v) in c.as_object().expect("a struct") {
                    let v = match v {
                        serde_json::Value::Bool(b) => ParamValue::Bool(*b),
                        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                            ParamValue::Int(n.as_i64().unwrap_or(i64::MAX))
                        }
                        serde_json::Value::Number(n) => {
                            ParamValue::Float(n.as_f64().unwrap_or(0.0))
                        }
                        other => ParamValue::Str(other.to_string()),
                    };
                    p.insert(k.clone(), v);
                }
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
                let stats = s.statistics.iter().map(|x| x.as_str().into()).collect();
                p.insert("statistics".into(), ParamValue::List(stats));
                // Only when not the default, so that existing keys stay as they were.
                if s.accumulation != Accumulation::Exact {
                    p.insert("accumulation".into(), s.accumulation.as_str().into());
                }
            }
            StageSpec::Prune(s) => {
                p.insert("method".into(), s.method.name().into());
                p.insert("sparsity".into(), s.sparsity.get().into());
                p.insert("pattern".into(), s.pattern.to_string().into());
                match &s.method {
                    PruneMethod::Magnitude { scope } => {
                        let name = match scope {
                            Scope::Layer => "layer",
                            Scope::Global => "global",
                        };
                        p.insert("scope".into(), name.into());
                        // Global cuts once pruned `|W| <= sorted[floor(N·s)]`; now exactly
                        // round(N·s) weights: entries of the old rule must not be served.
                        if *scope == Scope::Global {
                            p.insert("count".into(), "round(N*s)".into());
                        }
                    }
                    PruneMethod::Random { seed } => {
                        p.insert("seed".into(), (*seed).into());
                        // Once floor(n·s); now torch's round(n·s), as for global magnitude.
                        p.insert("count".into(), "round(N*s)".into());
                    }
                    PruneMethod::Wanda { mode, .. } => {
                        p.insert("calibration_mode".into(), mode.as_str().into());
                    }
                    PruneMethod::SparseGpt {
                        mode,
                        percdamp,
                        blocksize,
                        ..
                    } => {
                        p.insert("calibration_mode".into(), mode.as_str().into());
                        p.insert("percdamp".into(), (*percdamp).into());
                        p.insert("blocksize".into(), (*blocksize).into());
                    }
                }
                if s.pattern == Pattern::Rows && !p.contains_key("count") {
                    p.insert("count".into(), "round(N*s)".into());
                }
                selection_params(&s.selection, &mut p);
                if !s.overrides.is_empty() {
                    let o = s
                        .overrides
                        .iter()
                        .map(|o| {
                            ParamValue::List(vec![
                                o.pattern.as_str().into(),
                                o.sparsity.get().into(),
                            ])
                        })
                        .collect();
                    p.insert("overrides".into(), ParamValue::List(o));
                }
            }
            StageSpec::Quantize(s) => {
                p.insert("method".into(), s.method.name().into());
                match &s.method {
                    QuantMethod::Rtn {
                        bits,
                        group_size,
                        symmetric,
                    } => {
                        p.insert("bits".into(), (*bits as i64).into());
                        p.insert(
                            "group_size".into(),
                            group_size.map_or(-1, |g| g as i64).into(),
                        );
                        p.insert("symmetric".into(), (*symmetric).into());
                    }
                    QuantMethod::Gptq {
                        bits,
                        group_size,
                        symmetric,
                        act_order,
                        percdamp,
                        blocksize,
                        mode,
                        ..
                    } => {
                        p.insert("bits".into(), (*bits as i64).into());
                        p.insert(
                            "group_size".into(),
                            group_size.map_or(-1, |g| g as i64).into(),
                        );
                        p.insert("symmetric".into(), (*symmetric).into());
                        p.insert("act_order".into(), (*act_order).into());
                        p.insert("percdamp".into(), (*percdamp).into());
                        p.insert("blocksize".into(), (*blocksize).into());
                        p.insert("calibration_mode".into(), mode.as_str().into());
                    }
                    QuantMethod::DynamicInt8 => {}
                }
                selection_params(&s.selection, &mut p);
            }
            StageSpec::Evaluate(s) => eval_params(&s.task, &mut p),
            StageSpec::Report(s) => s.key_params(&mut p),
        }
        p
    }

    /// The stage instances this one reads, by role ("model", "calibration", "input.3", …).
    pub fn inputs(&self) -> Vec<(String, InstanceRef)> {
        match self {
            StageSpec::Load(_) | StageSpec::Train(_) => vec![],
            StageSpec::Calibrate(s) => vec![("model".into(), s.model)],
            StageSpec::Prune(s) => {
                let mut v = vec![("model".into(), s.model)];
                if let Some((calibration, _)) = s.method.calibration() {
                    v.push(("calibration".into(), calibration));
                }
                v
            }
            StageSpec::Quantize(s) => {
                let mut v = vec![("model".into(), s.model)];
                if let QuantMethod::Gptq { calibration, .. } = &s.method {
                    v.push(("calibration".into(), *calibration));
                }
                v
            }
            StageSpec::Evaluate(s) => {
                let mut v = vec![("model".into(), s.model)];
                if let Some(r) = s.task.reference() {
                    v.push(("reference".into(), r));
                }
                v
            }
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
            StageSpec::Train(s) => {
                let mut v = vec![("dataset", s.dataset.as_str())];
                if let Some(d) = &s.vocabulary {
                    v.push(("vocabulary", d.as_str()));
                }
                v
            }
            StageSpec::Evaluate(s) => vec![("dataset", s.task.dataset())],
            _ => vec![],
        }
    }
}

impl StageSpec {
    /// Files other than datasets a stage reads, by role (their digests enter the key).
    pub fn extra_files(&self) -> Vec<(&'static str, &std::path::Path)> {
        match self {
            StageSpec::Evaluate(EvaluateSpec {
                task:
                    EvalTask::MultipleChoice { task_file, .. } | EvalTask::Generation { task_file, .. },
                ..
            }) => vec![("task_file", task_file.as_path())],
            _ => vec![],
        }
    }
}

/// An evaluation's parameters as they enter its key: everything that can change a score. The
/// perplexity keys of earlier versions are kept as they were (`mode` only when not `windows`).
fn eval_params(task: &EvalTask, p: &mut Params) {
    p.insert("task".into(), task.name().into());
    let limit = |p: &mut Params, limit: &Option<usize>| {
        if let Some(l) = limit {
            p.insert("limit".into(), (*l).into());
        }
    };
    match task {
        EvalTask::Perplexity {
            dataset: _,
            seqlen,
            join,
            limit: l,
            mode,
        } => {
            p.insert("seqlen".into(), (*seqlen).into());
            limit(p, l);
            match mode {
                PplMode::Windows => {
                    p.insert("join".into(), join.as_str().into());
                }
                PplMode::Sliding { stride } => {
                    p.insert("join".into(), join.as_str().into());
                    p.insert("mode".into(), mode.as_str().into());
                    p.insert("stride".into(), (*stride).into());
                }
                PplMode::Documents => {
                    p.insert("mode".into(), mode.as_str().into());
                }
            }
        }
        EvalTask::Divergence {
            dataset: _,
            seqlen,
            join,
            limit: l,
            reference: _,
        } => {
            p.insert("seqlen".into(), (*seqlen).into());
            p.insert("join".into(), join.as_str().into());
            limit(p, l);
        }
        EvalTask::Knowledge {
            dataset: _,
            ranking,
            splits,
            relations,
            limit: l,
            known_only,
            reference: _,
        } => {
            p.insert("ranking".into(), ranking.as_str().into());
            let s = splits.iter().map(|s| s.as_str().into()).collect();
            p.insert("splits".into(), ParamValue::List(s));
            if !relations.is_empty() {
                let r = relations.iter().map(|r| r.as_str().into()).collect();
                p.insert("relations".into(), ParamValue::List(r));
            }
            limit(p, l);
            p.insert("known_only".into(), (*known_only).into());
        }
        EvalTask::MultipleChoice {
            dataset: _,
            task_file: _,
            limit: l,
        } => limit(p, l),
        EvalTask::Generation {
            dataset: _,
            task_file: _,
            limit: l,
            max_new_tokens,
        } => {
            limit(p, l);
            if let Some(m) = max_new_tokens {
                p.insert("max_new_tokens".into(), (*m).into());
            }
        }
    }
}

/// The selection's parameters, as they enter a key. Defaults are left out so that adding the
/// feature did not change the keys of stages that do not use it.
fn selection_params(sel: &Selection, p: &mut Params) {
    if sel.group != ModuleGroup::All {
        p.insert("modules".into(), sel.group.as_str().into());
    }
    if !sel.targets.is_empty() {
        let t = sel.targets.iter().map(|t| t.as_str().into()).collect();
        p.insert("targets".into(), ParamValue::List(t));
    }
    if !sel.ignore.is_empty() {
        let t = sel.ignore.iter().map(|t| t.as_str().into()).collect();
        p.insert("ignore".into(), ParamValue::List(t));
    }
}
