//! `whittle status`: per pipeline stage, how many instances are cached, corrupt or still to run,
//! as a table for people or JSON for programs.

use serde::Serialize;

use super::{Plan, Status};
use crate::cache::RunRecord;
use crate::table::{Cell, Table};

/// Version of the JSON status format.
pub const STATUS_JSON_SCHEMA: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub kind: String,
    pub instances: usize,
    pub cached: usize,
    /// Entries present but failing their check; `run` quarantines and recomputes them.
    pub corrupt: usize,
    /// Instances that must run (corrupt ones included).
    pub to_run: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastRun {
    pub run_id: String,
    pub started: String,
    pub finished: Option<String>,
    pub failed: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusSummary {
    pub schema: u32,
    pub pipeline: String,
    pub cache: String,
    pub stages: Vec<StageSummary>,
    pub last_run: Option<LastRun>,
}

impl StatusSummary {
    pub fn new(plan: &Plan, statuses: &[Status], cache: &str, last: Option<&RunRecord>) -> Self {
        let stages = plan
            .pipeline
            .stages
            .iter()
            .map(|stage| {
                let ids = plan.find(&stage.name);
                let count =
                    |f: fn(&Status) -> bool| ids.iter().filter(|&&i| f(&statuses[i])).count();
                let cached = count(Status::is_cached);
                StageSummary {
                    stage: stage.name.clone(),
                    kind: stage.kind.as_str().to_string(),
                    instances: ids.len(),
                    cached,
                    corrupt: count(Status::is_corrupt),
                    to_run: ids.len() - cached,
                }
            })
            .collect();
        let last_run = last.map(|run| LastRun {
            run_id: run.run_id.clone(),
            started: run.started.clone(),
            finished: run.finished.clone(),
            failed: run
                .stages
                .iter()
                .filter(|s| s.status == crate::cache::StageStatus::Failed)
                .count(),
        });
        StatusSummary {
            schema: STATUS_JSON_SCHEMA,
            pipeline: plan.pipeline.path.display().to_string(),
            cache: cache.to_string(),
            stages,
            last_run,
        }
    }

    pub fn render(&self, format: StatusFormat) -> String {
        match format {
            StatusFormat::Json => {
                let mut s = serde_json::to_string_pretty(self).expect("plain data serialises");
                s.push('\n');
                s
            }
            StatusFormat::Text => self.text(),
        }
    }

    fn text(&self) -> String {
        let any_corrupt = self.stages.iter().any(|s| s.corrupt > 0);
        let mut columns = vec!["stage", "kind", "instances", "cached"];
        if any_corrupt {
            columns.push("corrupt");
        }
        columns.push("to run");
        let mut table = Table::new(columns.into_iter().map(String::from).collect());
        for s in &self.stages {
            let mut row = vec![
                Cell::Text(s.stage.clone()),
                Cell::Text(s.kind.clone()),
                Cell::Int(s.instances as i64),
                Cell::Int(s.cached as i64),
            ];
            if any_corrupt {
                row.push(Cell::Int(s.corrupt as i64));
            }
            row.push(Cell::Int(s.to_run as i64));
            table.push(row);
        }
        let mut out = format!("{}\n{}", self.pipeline, table.to_text());
        if any_corrupt {
            let n: usize = self.stages.iter().map(|s| s.corrupt).sum();
            out.push_str(&format!(
                "{n} corrupt entries: `whittle run` recomputes them, `whittle verify` quarantines them\n"
            ));
        }
        match &self.last_run {
            Some(run) => out.push_str(&format!(
                "last run {} started {}{}\n",
                run.run_id,
                run.started,
                if run.failed > 0 {
                    format!(", {} failed", run.failed)
                } else {
                    String::new()
                }
            )),
            None => out.push_str(&format!("never run with this cache ({})\n", self.cache)),
        }
        out
    }
}
