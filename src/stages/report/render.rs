//! A report's files, rendered in memory from [`ReportData`]: the pivoted tables (terminal text,
//! Markdown, CSV, LaTeX), the long JSON Lines, `provenance.json`, and the plots (SVG, PNG). The
//! report stage and `whittle report` both write what this returns, so their files are the same.

use std::path::Path;

use super::long::long_table;
use super::observe::ReportData;
use super::pivot::{columns, pivot};
use super::plot::{figure_labelled, metric_labels, png, svg};
use super::spec::{PlotFormat, ReportFormat, ReportSpec, ReportTable};
use super::ReportError;
use crate::table::Table;

/// The terminal rendering, printed at the end of a run.
pub const TEXT_FILE: &str = "report.txt";
/// The long format: every input instance, every metric.
pub const JSONL_FILE: &str = "report.jsonl";
/// Provenance for every table and plot of the stage (the CSV files' sidecar).
pub const PROVENANCE_FILE: &str = "provenance.json";
/// The table drawn when a report configures none.
pub const DEFAULT_TABLE: &str = "report";

/// Rendered files, ready to write.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// `(file name, contents)`, in a fixed order.
    pub files: Vec<(String, Vec<u8>)>,
    /// What `report.txt` holds: every table as aligned text, then the provenance.
    pub text: String,
}

impl Rendered {
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    /// Makes `dir` hold exactly these files (see [`replace_dir`]).
    pub fn publish(&self, dir: &Path) -> Result<(), ReportError> {
        replace_dir(dir, |tmp| self.write(tmp))
    }

    /// Writes every file into `dir` (which must exist).
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        for (name, bytes) in &self.files {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|source| ReportError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Replaces the directory `dir` with one that `fill` writes from empty, so that files of an
/// earlier rendering this one no longer writes (a renamed table, a dropped plot) do not linger
/// beside the new ones. `dir` is swapped by two renames: at any instant it holds either the old
/// rendering or the new one.
pub fn replace_dir(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), ReportError>,
) -> Result<(), ReportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let sibling = |what: &str| parent.join(format!(".{name}.{what}-{}", std::process::id()));
    let (new, old) = (sibling("new"), sibling("old"));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    for d in [&new, &old] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(io(d))?;
        }
    }
    std::fs::create_dir(&new).map_err(io(&new))?;
    if let Err(e) = fill(&new) {
        let _ = std::fs::remove_dir_all(&new);
        return Err(e);
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&new, dir).map_err(io(dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// The default table: rows over every sweep axis the inputs use, every metric.
fn default_table(data: &ReportData) -> ReportTable {
    let rows = data
        .axes
        .iter()
        .filter(|a| data.observations.iter().any(|o| o.point.contains_key(*a)))
        .cloned()
        .collect();
    ReportTable {
        name: DEFAULT_TABLE.into(),
        rows,
        columns: None,
        filter: Vec::new(),
    }
}

/// `\label` text: letters, digits, `-` and `:` only.
fn label_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == ':' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn latex(data: &ReportData, name: &str, t: &Table) -> String {
    let p = &data.provenance;
    format!(
        "% whittle report {}, table `{name}`; needs \\usepackage{{booktabs}}\n{}\
         \\begin{{table}}[t]\n\\centering\n{}\\caption{{{}}}\n\\label{{tab:{}}}\n\\end{{table}}\n",
        data.title,
        p.latex_comment(),
        t.to_latex(),
        p.latex_caption(),
        label_text(&format!("{}-{name}", p.pipeline.name)),
    )
}

/// Renders every table, format and plot `spec` asks for.
pub fn render(data: &ReportData, spec: &ReportSpec) -> Result<Rendered, ReportError> {
    let configs = if spec.tables.is_empty() {
        vec![default_table(data)]
    } else {
        spec.tables.clone()
    };
    let prov = &data.provenance;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut text = String::new();
    for cfg in &configs {
        let cols = columns(data, cfg.columns.as_deref())?;
        let t = pivot(data, &cfg.rows, &cols, &cfg.filter)?;
        text.push_str(&format!("{}\n{}\n", cfg.name, t.to_text()));
        for f in &spec.formats {
            let (ext, body) = match f {
                ReportFormat::Markdown => {
                    ("md", format!("{}\n{}", t.to_markdown(), prov.markdown()))
                }
                ReportFormat::Csv => ("csv", t.to_csv()),
                ReportFormat::Latex => ("tex", latex(data, &cfg.name, &t)),
                ReportFormat::Jsonl => continue,
            };
            files.push((format!("{}.{ext}", cfg.name), body.into_bytes()));
        }
    }
    if let Some(m) = prov.missing_note() {
        text.push_str(&format!("{m}\n"));
    }
    text.push_str(&format!("provenance: {}\n", prov.line()));
    if spec.formats.contains(&ReportFormat::Jsonl) {
        files.push((JSONL_FILE.into(), long_table(data).to_jsonl().into_bytes()));
    }
    let labels = metric_labels(&spec.tables);
    for plot in &spec.plots {
        let fig = figure_labelled(data, plot, &labels)?;
        for f in &plot.formats {
            let bytes = match f {
                PlotFormat::Svg => svg(&fig)?.into_bytes(),
                PlotFormat::Png => png(&fig)?,
            };
            files.push((format!("{}.{}", plot.name, f.as_str()), bytes));
        }
    }
    files.push((PROVENANCE_FILE.into(), prov.to_json().into_bytes()));
    files.push((TEXT_FILE.into(), text.clone().into_bytes()));
    Ok(Rendered { files, text })
}
