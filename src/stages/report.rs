//! `report`: one table of every input instance × metric, as text, CSV, Markdown and JSON Lines.

use serde_json::{json, Value};

use super::{metrics_of, StageCtx, StageError, StageOutput};
use crate::cache::key::ParamValue;
use crate::pipeline::spec::{ReportFormat, ReportSpec};
use crate::report::{Cell, Table};

/// The terminal rendering, printed at the end of a run.
pub const TEXT_FILE: &str = "report.txt";

pub fn run(ctx: &StageCtx, spec: &ReportSpec) -> Result<StageOutput, StageError> {
    let table = build_table(ctx, spec)?;
    let write = |name: &str, text: String| {
        std::fs::write(ctx.out_path(name), text).map_err(StageError::io(format!("writing {name}")))
    };
    write(TEXT_FILE, table.to_text())?;
    for f in &spec.formats {
        match f {
            ReportFormat::Csv => write("report.csv", table.to_csv())?,
            ReportFormat::Markdown => write("report.md", table.to_markdown())?,
            ReportFormat::Jsonl => write("report.jsonl", table.to_jsonl())?,
        }
    }
    Ok(StageOutput {
        content: None,
        meta: json!({ "rows": table.rows.len(), "columns": table.columns }),
    })
}

fn build_table(ctx: &StageCtx, spec: &ReportSpec) -> Result<Table, StageError> {
    let plan = ctx.plan;
    let axes: Vec<&String> = plan
        .pipeline
        .axes
        .iter()
        .filter(|a| {
            spec.inputs.iter().any(|r| {
                plan.pipeline.stages[r.stage].instances[r.instance]
                    .point
                    .contains_key(*a)
            })
        })
        .collect();
    let mut rows = Vec::new();
    let mut metric_names: Vec<String> = Vec::new();
    for r in &spec.inputs {
        let node = plan.node_of(*r).ok_or_else(|| {
            StageError::Invalid("internal: report input is not in the plan".into())
        })?;
        let entry = ctx.entry(node)?;
        let metrics = metrics_of(&entry);
        for k in metrics.keys() {
            if !metric_names.contains(k) {
                metric_names.push(k.clone());
            }
        }
        let weights = entry
            .manifest()
            .meta
            .get("weights")
            .and_then(Value::as_str)
            .map(|s| s.chars().take(12).collect::<String>());
        let dataset = entry
            .manifest()
            .meta
            .get("dataset")
            .and_then(Value::as_str)
            .map(str::to_string);
        let size = entry
            .manifest()
            .meta
            .get("model_bytes")
            .and_then(Value::as_u64);
        rows.push((*r, weights, dataset, size, metrics));
    }
    let has_dataset = rows.iter().any(|r| r.2.is_some());
    let has_size = rows.iter().any(|r| r.3.is_some());
    // The protocol's own settings first, then the metrics.
    let order = ["ppl", "nll", "tokens", "windows", "seqlen"];
    metric_names.sort_by_key(|m| order.iter().position(|o| o == m).unwrap_or(order.len()));

    let mut columns = vec!["stage".to_string()];
    columns.extend(axes.iter().map(|a| a.to_string()));
    if has_dataset {
        columns.push("dataset".into());
    }
    columns.push("weights".into());
    if has_size {
        columns.push("size_mb".into());
    }
    columns.extend(metric_names.iter().cloned());
    let mut table = Table::new(columns);
    for (r, weights, dataset, size, metrics) in rows {
        let stage = &plan.pipeline.stages[r.stage];
        let point = &stage.instances[r.instance].point;
        let mut row = vec![Cell::Text(stage.name.clone())];
        for a in &axes {
            row.push(match point.get(*a) {
                None => Cell::Missing,
                Some(ParamValue::Int(i)) => Cell::Int(*i),
                Some(ParamValue::Float(x)) => Cell::Exact(*x),
                Some(v) => Cell::Text(v.to_string()),
            });
        }
        if has_dataset {
            row.push(dataset.map_or(Cell::Missing, Cell::Text));
        }
        row.push(weights.map_or(Cell::Missing, Cell::Text));
        if has_size {
            row.push(size.map_or(Cell::Missing, |b| Cell::Num(b as f64 / 1e6)));
        }
        for m in &metric_names {
            row.push(match metrics.get(m) {
                Some(Value::Number(n)) if n.is_i64() => Cell::Int(n.as_i64().unwrap_or_default()),
                Some(Value::Number(n)) => n.as_f64().map_or(Cell::Missing, Cell::Num),
                Some(Value::String(s)) => Cell::Text(s.clone()),
                _ => Cell::Missing,
            });
        }
        table.push(row);
    }
    Ok(table)
}
