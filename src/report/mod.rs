//! Reports: paper-style tables and plots of what a pipeline measured, with their provenance.
//!
//! - [`observe`]: one observation per input instance (metrics, or `pending` / `failed`), read
//!   from the cache through a plan, and the provenance of them all;
//! - [`pivot`]: observations into a table with a row per compressed model (the dense baseline
//!   first) and a column per metric; [`long`]: the unpivoted table of everything;
//! - [`table`]: a table's renderings (text, Markdown, CSV, LaTeX, JSON Lines);
//! - [`plot`]: line and trade-off plots, as SVG and PNG (the font is embedded);
//! - [`render`]: every file of a report stage, in memory.
//!
//! ```no_run
//! # fn demo(plan: &whittle::plan::Plan, node: usize) -> Result<(), whittle::report::ReportError> {
//! use whittle::report::{gather, render, InputState};
//! use whittle::pipeline::spec::StageSpec;
//! let StageSpec::Report(spec) = &plan.nodes[node].spec else { return Ok(()) };
//! let data = gather(plan, node, &|_| InputState::Pending)?;
//! let files = render(&data, spec)?;
//! print!("{}", files.text);
//! # Ok(()) }
//! ```

pub mod long;
pub mod observe;
pub mod pivot;
pub mod plot;
pub mod provenance;
pub mod render;
pub mod table;

use std::path::PathBuf;

pub use observe::{gather, InputState, Measurement, Observation, Outcome, ReportData};
pub use provenance::Provenance;
pub use render::{render, Rendered};
pub use table::{Cell, Table};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "row `{row}` gets two values for one column, from `{first}` and `{second}`: \
         add the axis that tells them apart to the table's `rows` (or the plot's `series`)"
    )]
    Ambiguous {
        row: String,
        first: String,
        second: String,
    },
    #[error(
        "plot `{plot}`: `change` compares with the dense baseline, but no input evaluates the \
         uncompressed model; add such an evaluation (e.g. of the `load` stage) to `inputs`"
    )]
    NoBaseline { plot: String },
    #[error("drawing a plot: {0}")]
    Draw(String),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("internal: {0}")]
    Internal(String),
}
