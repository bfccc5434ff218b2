//! Reports: paper-style tables and plots of what a pipeline measured, with their provenance.
//!
//! - [`observe`]: one observation per input instance (metrics, or `pending` / `failed`), read
//!   from the cache through a plan, and the provenance of them all;
//! - [`pivot`]: observations into a table with a row per compressed model (the dense baseline
//!   first) and a column per metric; [`long`]: the unpivoted table of everything;
//! - [`crate::table`]: a table's renderings (text, Markdown, CSV, LaTeX, JSON Lines);
//! - [`plot`]: line and trade-off plots, as SVG and PNG (the font is embedded);
//! - [`mod@render`]: every file of a report stage, in memory.
//!
//! A report stage says what to draw (every key but `inputs` is optional):
//!
//! ```yaml
//! table:
//!   kind: report
//!   inputs: [ppl-dense, ppl, wiki-dense, wiki]
//!   formats: [md, csv, tex, jsonl]       # default [csv, md, jsonl]; jsonl is the long format
//!   tables:                              # default: one table `report`, rows over every axis
//!     - name: main                       # files main.md, main.csv, main.tex
//!       rows: [method, sparsity]         # default: the axes the columns' stages vary over
//!       columns: [model_mb, ppl.ppl, {metric: wiki.ppl, label: WikiText}]  # default: all
//!       where: {sparsity: [0.3, 0.5]}    # keep these points (and the dense row)
//!   plots:
//!     - name: ppl-vs-sparsity            # files ppl-vs-sparsity.svg, .png
//!       x: sparsity                      # a numeric axis
//!       y: [ppl.ppl, wiki.ppl]           # one panel each, side by side
//!       series: method                   # default: the other axes the y stages vary over
//!       y_scale: log                     # default linear (so is x_scale)
//!       formats: [svg, png]              # default both
//!     - name: knowledge-vs-ppl
//!       kind: tradeoff                   # a point per model, joined per series
//!       x: ppl.ppl
//!       y: [lama.p@1]
//!       series: method                   # default: the categorical axes
//!       label: sparsity                  # default: the other (numeric) axes
//!       change: ratio                    # none | diff | ratio, against the dense model
//! ```
//!
//! A column `<stage>.<metric>` also shows the stages that measure the same thing (same kind,
//! parameters and datasets) on other models, such as the dense evaluation: its value fills the
//! dense baseline row. Every file carries the provenance (`provenance.json` beside the CSV).
//!
//! ```no_run
//! # fn demo(plan: &whittle::plan::Plan, node: usize) -> Result<(), whittle::stages::report::ReportError> {
//! use whittle::stages::report::{gather, render, InputState};
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
mod read;
pub mod render;
mod run;
mod spec;

use std::path::PathBuf;

pub use run::TEXT_FILE;
pub use spec::*;

use super::{Kind, ModelSize, StageCtx, StageError, StageOutput};
use crate::cache::key::{KeyWriter, ParamValue};
use crate::pipeline::fields::Fields;
use crate::pipeline::spec::{InstanceRef, Pipeline};

impl Kind for ReportSpec {
    const NAME: &'static str = "report";
    // 2: pivoted tables, LaTeX, plots, provenance.
    const VERSION: u32 = 2;
    const KEYS: &'static [&'static str] = &["inputs", "formats", "tables", "plots"];
    const REF_KEYS: &'static [&'static str] = &["inputs"];
    // `whittle run` copies the tables and plots out of the entry.
    const SERVED: bool = true;

    fn read(f: &mut Fields) -> Option<Self> {
        read::read(f)
    }

    fn inputs(&self) -> Vec<(String, InstanceRef)> {
        self.inputs
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("input.{i:04}"), *r))
            .collect()
    }

    /// Row labels are part of what a report shows, so they belong to its key.
    fn pipeline_key(&self, pipeline: &Pipeline, key: &mut KeyWriter) {
        let rows: Vec<ParamValue> = self
            .inputs
            .iter()
            .map(|r| ParamValue::Str(pipeline.label(*r)))
            .collect();
        key.put("rows", rows);
    }

    fn memory(&self, _: ModelSize) -> u64 {
        0
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError> {
        run::run(ctx, self)
    }
}

pub use crate::table::{Cell, Table};
pub use observe::{gather, InputState, Measurement, Observation, Outcome, ReportData};
pub use provenance::Provenance;
pub use render::{render, Rendered};

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
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("internal: {0}")]
    Internal(String),
}
