//! The long format: one row per input instance with every metric it recorded, not pivoted. It is
//! what `report.jsonl` holds ("all" the data, for scripts).

use super::observe::{Outcome, ReportData};
use super::pivot::{size_value, Source, PROTOCOL_KEYS};
use super::spec::MetricRef;
use crate::cache::key::ParamValue;
use crate::table::{Cell, Table};

pub fn long_table(data: &ReportData) -> Table {
    let obs = &data.observations;
    let axes: Vec<&String> = data
        .axes
        .iter()
        .filter(|a| obs.iter().any(|o| o.point.contains_key(*a)))
        .collect();
    let measured = || {
        obs.iter().filter_map(|o| match &o.outcome {
            Outcome::Measured(m) => Some(m),
            _ => None,
        })
    };
    let mut metrics: Vec<&str> = Vec::new();
    for m in measured() {
        for (k, _) in &m.metrics {
            if !metrics.contains(&k.as_str()) {
                metrics.push(k);
            }
        }
    }
    // Headline metrics first, then the protocol's settings, then the rest as recorded.
    let rank = |m: &&str| match *m {
        "ppl" | "nll" => 0,
        m if PROTOCOL_KEYS.contains(&m) => 1,
        _ => 2,
    };
    metrics.sort_by_key(rank);
    let has_dataset = measured().any(|m| m.dataset.is_some());
    let has_size = measured().any(|m| m.model_bytes.is_some());
    let has_status = obs
        .iter()
        .any(|o| !matches!(o.outcome, Outcome::Measured(_)));

    let mut columns = vec!["stage".to_string()];
    columns.extend(axes.iter().map(|a| a.to_string()));
    if has_dataset {
        columns.push("dataset".into());
    }
    columns.push("weights".into());
    if has_size {
        columns.push(MetricRef::MODEL_MB.into());
        columns.push(MetricRef::COMPRESSION.into());
    }
    columns.extend(metrics.iter().map(|m| m.to_string()));
    if has_status {
        columns.push("status".into());
    }
    let mut table = Table::new(columns);
    for o in obs {
        let mut row = vec![Cell::Text(o.stage.clone())];
        for a in &axes {
            row.push(match o.point.get(*a) {
                None => Cell::Missing,
                Some(ParamValue::Int(i)) => Cell::Int(*i),
                Some(ParamValue::Float(x)) => Cell::Exact(*x),
                Some(v) => Cell::Text(v.to_string()),
            });
        }
        let m = match &o.outcome {
            Outcome::Measured(m) => Some(m),
            _ => None,
        };
        if has_dataset {
            row.push(
                m.and_then(|m| m.dataset.clone())
                    .map_or(Cell::Missing, Cell::Text),
            );
        }
        let weights = m.and_then(|m| m.weights.as_ref());
        row.push(weights.map_or(Cell::Missing, |w| Cell::Text(w.chars().take(12).collect())));
        if has_size {
            for source in [Source::ModelMb, Source::Compression] {
                let v = m.and_then(|m| size_value(m, &source));
                row.push(v.map_or(Cell::Missing, Cell::Num));
            }
        }
        for name in &metrics {
            row.push(super::pivot::metric_cell(m.and_then(|m| m.metric(name))));
        }
        if has_status {
            row.push(Cell::Text(
                match o.outcome {
                    Outcome::Measured(_) => "measured",
                    Outcome::Pending => "pending",
                    Outcome::Failed => "failed",
                }
                .into(),
            ));
        }
        table.push(row);
    }
    table
}
