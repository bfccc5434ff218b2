//! Pivoting observations into a paper table: one row per compressed model (a distinct assignment
//! of the row axes), one column per metric; instances that measure the uncompressed model (by
//! lineage: a `load` or `train` stage's weights, no compression on the way) make the dense
//! baseline row, first; a compressed model no row axis identifies gets a row named by its stage
//! and parameters. A point with no result shows as
//! `pending` or `failed`, never as a number.

use serde_json::Value;

use super::observe::{Measurement, Observation, Outcome, ReportData};
use super::spec::{MetricRef, ReportColumn, ReportFilter};
use super::ReportError;
use crate::cache::key::ParamValue;
use crate::table::{Cell, Table};

/// Recorded by evaluations to describe the protocol rather than its result: left out of default
/// columns (still available by name).
pub const PROTOCOL_KEYS: [&str; 3] = ["tokens", "windows", "seqlen"];

/// The first row's label in its first axis column.
pub const DENSE: &str = "dense";

/// What a column (or a plot coordinate) shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A metric of the column group's instances.
    Metric { group: String, metric: String },
    /// The deployed size of the row's model, in MB.
    ModelMb,
    /// The dense size of the row's model ÷ its deployed size.
    Compression,
    /// A group none of whose instances has a result yet: only their status.
    Status { group: String },
}

/// A column: its header and what it shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub header: String,
    pub source: Source,
}

/// A metric reference as a source.
pub fn source(data: &ReportData, r: &MetricRef) -> Result<Source, ReportError> {
    match r {
        MetricRef::ModelMb => Ok(Source::ModelMb),
        MetricRef::Compression => Ok(Source::Compression),
        MetricRef::Metric { stage, metric } => {
            let group = data.group_of(stage).ok_or_else(|| {
                ReportError::Internal(format!("`{r}`: stage `{stage}` is not an input"))
            })?;
            Ok(Source::Metric {
                group: group.name.clone(),
                metric: metric.clone(),
            })
        }
    }
}

/// The columns a table config asks for; `None`: the model size and compression if known, then
/// every metric of
/// every group (in the order recorded), protocol settings left out.
pub fn columns(
    data: &ReportData,
    config: Option<&[ReportColumn]>,
) -> Result<Vec<Column>, ReportError> {
    if let Some(cols) = config {
        return cols
            .iter()
            .map(|c| {
                Ok(Column {
                    header: c.label.clone().unwrap_or_else(|| c.value.to_string()),
                    source: source(data, &c.value)?,
                })
            })
            .collect();
    }
    let measured = || {
        data.observations.iter().filter_map(|o| match &o.outcome {
            Outcome::Measured(m) => Some((o, m)),
            _ => None,
        })
    };
    let mut out = Vec::new();
    if measured().any(|(_, m)| m.model_bytes.is_some()) {
        out.push(Column {
            header: MetricRef::MODEL_MB.into(),
            source: Source::ModelMb,
        });
        out.push(Column {
            header: MetricRef::COMPRESSION.into(),
            source: Source::Compression,
        });
    }
    for g in &data.groups {
        let mut names: Vec<&str> = Vec::new();
        for (_, m) in measured().filter(|(o, _)| o.group == g.name) {
            for (k, _) in &m.metrics {
                if !names.contains(&k.as_str()) && !PROTOCOL_KEYS.contains(&k.as_str()) {
                    names.push(k);
                }
            }
        }
        // Only while nothing of the group is measured: a stage that records no metrics (a
        // prune stage listed for its size) gets no column.
        if names.is_empty() && !measured().any(|(o, _)| o.group == g.name) {
            out.push(Column {
                header: g.name.clone(),
                source: Source::Status {
                    group: g.name.clone(),
                },
            });
        }
        out.extend(names.into_iter().map(|n| Column {
            header: format!("{}.{n}", g.name),
            source: Source::Metric {
                group: g.name.clone(),
                metric: n.to_string(),
            },
        }));
    }
    Ok(out)
}

/// Rows keyed by their axes' values, each with one cell per source.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub axes: Vec<String>,
    pub rows: Vec<GridRow>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GridRow {
    /// The value of each axis; all `None` for the dense baseline.
    pub key: Vec<Option<ParamValue>>,
    /// A compressed model that no row axis identifies: its stage and parameters (see
    /// [`Observation::compressed`]). `None` for the dense baseline and for rows the axes tell
    /// apart.
    pub model: Option<String>,
    pub cells: Vec<Cell>,
}

impl GridRow {
    /// The uncompressed model's row: decided by lineage, not by the absence of axes.
    pub fn is_dense(&self) -> bool {
        self.key.iter().all(Option::is_none) && self.model.is_none()
    }

    /// What the row's first axis column says where the axes say nothing.
    fn name(&self) -> Option<&str> {
        if !self.key.iter().all(Option::is_none) {
            return None;
        }
        Some(self.model.as_deref().unwrap_or(DENSE))
    }
}

impl Grid {
    pub fn dense(&self) -> Option<&GridRow> {
        self.rows.first().filter(|r| r.is_dense())
    }
}

fn passes(o: &Observation, filter: &ReportFilter) -> bool {
    filter
        .iter()
        .all(|(axis, values)| o.point.get(axis).is_none_or(|v| values.contains(v)))
}

pub(crate) fn metric_cell(v: Option<&Value>) -> Cell {
    match v {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None => n.as_f64().map_or(Cell::Missing, Cell::Num),
        },
        Some(Value::String(s)) => Cell::Text(s.clone()),
        Some(Value::Bool(b)) => Cell::Text(b.to_string()),
        _ => Cell::Missing,
    }
}

/// `model_mb` or `compression` of a measurement (`None` for other sources, or not recorded).
pub(crate) fn size_value(m: &Measurement, source: &Source) -> Option<f64> {
    match source {
        Source::ModelMb => m.model_bytes.map(|b| b as f64 / 1e6),
        Source::Compression => match (m.dense_bytes, m.model_bytes) {
            (Some(d), Some(b)) if b > 0 => Some(d as f64 / b as f64),
            _ => None,
        },
        _ => None,
    }
}

fn status_cell(o: &Observation) -> Option<Cell> {
    match o.outcome {
        Outcome::Pending => Some(Cell::Pending),
        Outcome::Failed => Some(Cell::Failed),
        Outcome::Measured(_) => None,
    }
}

/// The cell of `source` in the row made of `members`.
fn cell(members: &[&Observation], source: &Source, row: &str) -> Result<Cell, ReportError> {
    let group = match source {
        Source::Metric { group, .. } | Source::Status { group } => group,
        Source::ModelMb | Source::Compression => {
            let size = members.iter().find_map(|o| match &o.outcome {
                Outcome::Measured(m) => size_value(m, source),
                _ => None,
            });
            return Ok(match size {
                Some(v) => Cell::Num(v),
                None => members
                    .iter()
                    .filter_map(|o| status_cell(o))
                    .min_by_key(|c| matches!(c, Cell::Failed))
                    .unwrap_or(Cell::Missing),
            });
        }
    };
    let mut hits = members.iter().filter(|o| &o.group == group);
    let Some(o) = hits.next() else {
        return Ok(Cell::Missing);
    };
    if let Some(other) = hits.next() {
        return Err(ReportError::Ambiguous {
            row: row.to_string(),
            first: o.label.clone(),
            second: other.label.clone(),
        });
    }
    Ok(match (&o.outcome, source) {
        (Outcome::Measured(m), Source::Metric { metric, .. }) => metric_cell(m.metric(metric)),
        (Outcome::Measured(_), _) => Cell::Missing,
        _ => status_cell(o).unwrap_or(Cell::Missing),
    })
}

fn key_text(axes: &[String], key: &[Option<ParamValue>], model: Option<&str>) -> String {
    let parts: Vec<String> = axes
        .iter()
        .zip(key)
        .filter_map(|(a, v)| v.as_ref().map(|v| format!("{a}={v}")))
        .collect();
    if parts.is_empty() {
        model.unwrap_or(DENSE).to_string()
    } else {
        parts.join(",")
    }
}

/// Groups the observations that pass `filter` into rows by their values of `axes`: the dense
/// baseline first, then in order of first appearance (the sweep's order).
pub fn grid(
    observations: &[Observation],
    axes: &[String],
    sources: &[Source],
    filter: &ReportFilter,
) -> Result<Grid, ReportError> {
    type Key = (Vec<Option<ParamValue>>, Option<String>);
    let mut keys: Vec<Key> = Vec::new();
    let mut members: Vec<Vec<&Observation>> = Vec::new();
    for o in observations.iter().filter(|o| passes(o, filter)) {
        let values: Vec<Option<ParamValue>> =
            axes.iter().map(|a| o.point.get(a).cloned()).collect();
        // A compressed model the axes do not identify gets its own row, never the dense one.
        let model = match values.iter().all(Option::is_none) {
            true => o.compressed.clone(),
            false => None,
        };
        let key = (values, model);
        match keys.iter().position(|k| *k == key) {
            Some(i) => members[i].push(o),
            None => {
                keys.push(key);
                members.push(vec![o]);
            }
        }
    }
    let mut rows = Vec::with_capacity(keys.len());
    for ((key, model), m) in keys.into_iter().zip(members) {
        let label = key_text(axes, &key, model.as_deref());
        let cells = sources
            .iter()
            .map(|s| cell(&m, s, &label))
            .collect::<Result<_, _>>()?;
        rows.push(GridRow { key, model, cells });
    }
    // Stable: the sweep's order is kept among the others.
    rows.sort_by_key(|r| !r.is_dense());
    Ok(Grid {
        axes: axes.to_vec(),
        rows,
    })
}

fn axis_cell(v: &Option<ParamValue>) -> Cell {
    match v {
        None => Cell::Missing,
        Some(ParamValue::Int(i)) => Cell::Int(*i),
        Some(ParamValue::Float(x)) => Cell::Exact(*x),
        Some(v) => Cell::Text(v.to_string()),
    }
}

/// The column naming a row when the table has no axes but a compressed model's row.
pub const MODEL: &str = "model";

/// The grid as a table: the axes' columns (the dense row says `dense` in the first, a compressed
/// model no axis identifies its stage and parameters), then `headers`.
pub fn to_table(grid: &Grid, headers: &[String]) -> Table {
    let mut columns = grid.axes.clone();
    let named = columns.is_empty() && grid.rows.iter().any(|r| r.model.is_some());
    if named {
        columns.push(MODEL.into());
    }
    columns.extend(headers.iter().cloned());
    let mut t = Table::new(columns);
    for r in &grid.rows {
        let mut row: Vec<Cell> = r.key.iter().map(axis_cell).collect();
        if named {
            row.push(Cell::Missing);
        }
        if let (Some(first), Some(name)) = (row.first_mut(), r.name()) {
            *first = Cell::Text(name.into());
        }
        row.extend(r.cells.iter().cloned());
        t.push(row);
    }
    t
}

/// The pivoted table of `data` over `rows`, with `columns`.
pub fn pivot(
    data: &ReportData,
    rows: &[String],
    columns: &[Column],
    filter: &ReportFilter,
) -> Result<Table, ReportError> {
    let sources: Vec<Source> = columns.iter().map(|c| c.source.clone()).collect();
    let g = grid(&data.observations, rows, &sources, filter)?;
    let headers: Vec<String> = columns.iter().map(|c| c.header.clone()).collect();
    Ok(to_table(&g, &headers))
}
