//! What a report stage draws: its typed spec and how it enters the key.

use std::fmt;

use crate::cache::key::{CacheKey, KeyWriter, ParamValue};
use crate::pipeline::spec::InstanceRef;

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

impl CacheKey for ReportSpec {
    fn cache_key(&self, key: &mut KeyWriter) {
        let formats: Vec<&str> = self.formats.iter().map(|f| f.as_str()).collect();
        key.put("formats", formats);
        // What is drawn is part of the output; absent when not configured.
        if !self.tables.is_empty() {
            let t: Vec<ParamValue> = self.tables.iter().map(report_table_param).collect();
            key.put("tables", t);
        }
        if !self.plots.is_empty() {
            let t: Vec<ParamValue> = self.plots.iter().map(report_plot_param).collect();
            key.put("plots", t);
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
