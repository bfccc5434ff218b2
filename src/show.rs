//! `whittle show`: what the cache holds for a pipeline's evaluate stages, one row per instance
//! (its sweep axes, then its metrics), so a number can be read without opening cache folders.

use serde_json::Value;

use crate::cache::key::ParamValue;
use crate::pipeline::spec::StageKind;
use crate::plan::{Plan, Status};
use crate::stages::report::observe::Measurement;
use crate::table::{Cell, Table};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShowFormat {
    /// Aligned columns for the terminal.
    Table,
    Csv,
    /// An array of objects, one per instance; `null` where a value is missing or pending.
    Json,
}

/// The results table: `stage`, the axes any evaluate stage varies over (in declaration order),
/// `status` (`cached`, `pending`, or `corrupt` where the metrics fail their hash), then every metric recorded, in order of first appearance.
pub fn table(plan: &Plan, statuses: &[Status]) -> Table {
    let evals: Vec<usize> = (0..plan.nodes.len())
        .filter(|&i| plan.nodes[i].kind() == StageKind::Evaluate)
        .collect();
    let axes: Vec<&String> = plan
        .pipeline
        .axes
        .iter()
        .filter(|a| evals.iter().any(|&i| plan.nodes[i].point.contains_key(*a)))
        .collect();
    // `Some(Err)`: cached, but its metrics do not match their recorded hash.
    let measured: Vec<Option<Result<Measurement, _>>> = evals
        .iter()
        .map(|&i| match &statuses[i] {
            Status::Cached { entry, .. } => Some(Measurement::from_entry(entry)),
            Status::Run { .. } => None,
        })
        .collect();
    let mut metrics: Vec<&str> = Vec::new();
    for m in measured.iter().flatten().flatten() {
        for (k, _) in &m.metrics {
            if !metrics.contains(&k.as_str()) {
                metrics.push(k);
            }
        }
    }
    let columns = ["stage"]
        .into_iter()
        .chain(axes.iter().map(|a| a.as_str()))
        .chain(["status"])
        .chain(metrics.iter().copied())
        .map(String::from)
        .collect();
    let mut t = Table::new(columns);
    for (&i, m) in evals.iter().zip(&measured) {
        let node = &plan.nodes[i];
        let mut row = vec![Cell::Text(node.stage.clone())];
        row.extend(
            axes.iter()
                .map(|a| node.point.get(*a).map_or(Cell::Missing, axis_cell)),
        );
        row.push(Cell::Text(
            match m {
                Some(Ok(_)) => "cached",
                Some(Err(_)) => "corrupt",
                None => "pending",
            }
            .into(),
        ));
        row.extend(metrics.iter().map(|k| match m {
            None => Cell::Pending,
            Some(Err(_)) => Cell::Missing,
            Some(Ok(m)) => m.metric(k).map_or(Cell::Missing, metric_cell),
        }));
        t.push(row);
    }
    t
}

/// The table in `format`.
pub fn render(plan: &Plan, statuses: &[Status], format: ShowFormat) -> String {
    let t = table(plan, statuses);
    match format {
        ShowFormat::Table => t.to_text(),
        ShowFormat::Csv => t.to_csv(),
        ShowFormat::Json => {
            let rows: Vec<Value> = t
                .to_jsonl()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let mut s = serde_json::to_string_pretty(&Value::Array(rows)).unwrap_or_default();
            s.push('\n');
            s
        }
    }
}

fn axis_cell(v: &ParamValue) -> Cell {
    match v {
        ParamValue::Int(i) => Cell::Int(*i),
        ParamValue::Float(x) => Cell::Exact(*x),
        other => Cell::Text(other.to_string()),
    }
}

fn metric_cell(v: &Value) -> Cell {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None => n.as_f64().map_or(Cell::Missing, Cell::Num),
        },
        Value::String(s) => Cell::Text(s.clone()),
        Value::Null => Cell::Missing,
        other => Cell::Text(other.to_string()),
    }
}
