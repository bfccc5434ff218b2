//! Plan renderings: text for people, JSON for programs, DOT and Mermaid for drawings.

use serde_json::json;

use super::{Plan, Status};

/// Version of the JSON plan format.
pub const PLAN_JSON_SCHEMA: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Dot,
    Mermaid,
}

fn short_key(s: &Status) -> String {
    s.key()
        .map_or_else(|| "(pending)".to_string(), |k| k.short())
}

fn status_word(s: &Status) -> &'static str {
    match s {
        Status::Cached { .. } => "cached",
        Status::Run { .. } if s.is_corrupt() => "corrupt",
        Status::Run { .. } => "run",
    }
}

fn reason(s: &Status) -> String {
    match s {
        Status::Cached { .. } => String::new(),
        Status::Run { reason, .. } => reason.to_string(),
    }
}

pub fn render(plan: &Plan, statuses: &[Status], format: Format) -> String {
    match format {
        Format::Text => text(plan, statuses),
        Format::Json => json(plan, statuses),
        Format::Dot => dot(plan, statuses),
        Format::Mermaid => mermaid(plan, statuses),
    }
}

fn text(plan: &Plan, statuses: &[Status]) -> String {
    let cached = statuses.iter().filter(|s| s.is_cached()).count();
    let mut out = format!(
        "plan for {}: {} nodes, {} cached, {} to run\n",
        plan.pipeline.path.display(),
        plan.nodes.len(),
        cached,
        plan.nodes.len() - cached
    );
    let width = plan.nodes.iter().map(|n| n.label.len()).max().unwrap_or(0);
    for (n, s) in plan.nodes.iter().zip(statuses) {
        let why = reason(s);
        let line = format!(
            "  {:<6}  {:<12}  {:<10}  {:<width$}  {}",
            status_word(s),
            short_key(s),
            n.kind().as_str(),
            n.label,
            why
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn json(plan: &Plan, statuses: &[Status]) -> String {
    let nodes: Vec<_> = plan
        .nodes
        .iter()
        .zip(statuses)
        .enumerate()
        .map(|(i, (n, s))| {
            json!({
                "id": i,
                "label": n.label,
                "stage": n.stage,
                "kind": n.kind().as_str(),
                "point": n.point,
                "key": s.key().map(|k| k.hex()),
                "status": status_word(s),
                "reason": match s { Status::Run { reason, .. } => Some(reason.to_string()), _ => None },
                "inputs": n.inputs.iter().map(|(role, j)| json!({"role": role, "node": j})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({
        "schema": PLAN_JSON_SCHEMA,
        "pipeline": plan.pipeline.path.display().to_string(),
        "pipeline_digest": plan.pipeline.source_digest.hex(),
        "engine_version": crate::ENGINE_VERSION,
        "nodes": nodes,
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value always serializes") + "\n"
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn dot(plan: &Plan, statuses: &[Status]) -> String {
    let mut out =
        String::from("digraph plan {\n  rankdir=LR;\n  node [shape=box, style=filled];\n");
    for (i, (n, s)) in plan.nodes.iter().zip(statuses).enumerate() {
        let color = if s.is_cached() {
            "palegreen"
        } else {
            "lightsalmon"
        };
        out.push_str(&format!(
            "  n{i} [label=\"{}\\n{} {}\", fillcolor={color}];\n",
            escape(&n.label),
            status_word(s),
            short_key(s)
        ));
    }
    for (i, n) in plan.nodes.iter().enumerate() {
        for (role, j) in &n.inputs {
            out.push_str(&format!("  n{j} -> n{i} [label=\"{}\"];\n", escape(role)));
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid(plan: &Plan, statuses: &[Status]) -> String {
    let mut out = String::from("flowchart LR\n");
    for (i, (n, s)) in plan.nodes.iter().zip(statuses).enumerate() {
        out.push_str(&format!(
            "  n{i}[\"{}<br/>{} {}\"]:::{}\n",
            n.label.replace('"', "#quot;"),
            status_word(s),
            short_key(s),
            status_word(s)
        ));
    }
    for (i, n) in plan.nodes.iter().enumerate() {
        for (_, j) in &n.inputs {
            out.push_str(&format!("  n{j} --> n{i}\n"));
        }
    }
    out.push_str("  classDef cached fill:#b7e4b7\n  classDef run fill:#f4b183\n");
    out
}
