//! `report`: the tables and plots of its inputs' results (see [`crate::stages::report`]), written into
//! the entry; `whittle run` prints `report.txt` and copies the files out.

use serde_json::json;

use super::ReportSpec;
use crate::stages::report::{gather, render, InputState};
use crate::stages::{Invariant, StageCtx, StageError, StageOutput};

/// The terminal rendering, printed at the end of a run.
pub const TEXT_FILE: &str = crate::stages::report::render::TEXT_FILE;

pub(super) fn run(ctx: &StageCtx, spec: &ReportSpec) -> Result<StageOutput, StageError> {
    // The scheduler hands over every entry this node reads: each input is ready.
    let state = |id| match (ctx.entries)(id) {
        Some(e) => InputState::Ready(e),
        None => InputState::Pending,
    };
    let data = gather(ctx.dag, ctx.node, &state)?;
    let missing = data.provenance.points.missing();
    if missing > 0 {
        return Err(Invariant::ReportInputs(missing).into());
    }
    let rendered = render(&data, spec)?;
    rendered.write(ctx.out)?;
    let files: Vec<&str> = rendered.files.iter().map(|(n, _)| n.as_str()).collect();
    ctx.note(&format!("wrote {}", files.join(", ")));
    Ok(StageOutput {
        content: None,
        meta: json!({
            "points": data.observations.len(),
            "files": files,
        }),
    })
}
