//! Pipeline files: YAML with positions, sweeps, and validation into typed specs.
//!
//! [`load`] reads a pipeline file and returns either the fully checked [`spec::Pipeline`] (sweeps
//! expanded into stage instances, references resolved) or every problem found, as
//! [`Diagnostics`] rendered like compiler errors. The steps, one module each:
//! - `yaml`: a YAML tree with positions (anchors, aliases, merge keys, duplicate keys);
//! - `schema`: the top level, `models`, `datasets`, and the stages as written;
//! - `sweep`: the axes and the list of sweep points;
//! - `validate`: files on disk, which axes each stage uses, reference cycles;
//! - `fields`: each stage instance substituted (`interp`) and read into its typed spec by its
//!   kind's reader (`stages/<kind>/read.rs`) through typed field accessors.
//!
//! ```no_run
//! let pipeline = whittle::pipeline::load(std::path::Path::new("pipelines/wanda.yaml"))
//!     .unwrap_or_else(|diags| panic!("{diags}"));
//! for stage in &pipeline.stages {
//!     println!("{}: {} instance(s)", stage.name, stage.instances.len());
//! }
//! ```

pub mod diag;
pub(crate) mod fields;
pub(crate) mod interp;
pub mod resources;
pub(crate) mod schema;
pub mod spec;
pub(crate) mod sweep;
mod validate;
pub(crate) mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::cache::key::{Digest, ParamValue};

use diag::Sink;
pub use diag::{Diagnostic, Diagnostics};
use yaml::Mark;

/// Reads and checks a pipeline file.
pub fn load(path: &Path) -> Result<spec::Pipeline, Diagnostics> {
    let fail = |msg: String| {
        Diagnostics(vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            key_path: String::new(),
            message: msg,
            expected: None,
            help: None,
            snippet: None,
        }])
    };
    let bytes = std::fs::read(path)
        .map_err(|e| fail(format!("cannot read pipeline file {}: {e}", path.display())))?;
    let source = String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "pipeline file {} is not UTF-8 (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    load_str(path, &source)
}

/// Checks pipeline text; `path_for_messages` names it in diagnostics, gives the default name, and
/// relative paths in it resolve against its parent directory.
pub fn load_str(path_for_messages: &Path, source: &str) -> Result<spec::Pipeline, Diagnostics> {
    let mut sink = Sink::new(path_for_messages.to_path_buf(), source);
    let Some(root) = yaml::parse(source, &mut sink) else {
        if !sink.has_errors() {
            sink.error(Mark { line: 1, col: 1 }, "", "the pipeline file is empty")
                .with_help("a pipeline needs at least `stages:`");
        }
        return Err(sink.finish());
    };
    let base = path_for_messages
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));

    let top = schema::top_level(&root, &mut sink);
    let (models, model_names) = schema::models(top.models, base, &mut sink);
    let (datasets, dataset_names) = schema::datasets(top.datasets, base, &mut sink);
    let sweep = sweep::parse(top.sweep, &mut sink);
    let raw = schema::raw_stages(top.stages, &mut sink);
    let stage_axes = validate::stage_axes(&raw, &sweep, &mut sink);

    // A stage's instances: the distinct projections of the sweep points onto its axes, in order
    // of first appearance; each remembers one full point it came from.
    let mut instance_index: Vec<HashMap<String, usize>> = Vec::with_capacity(raw.len());
    let mut instance_points: Vec<Vec<usize>> = Vec::with_capacity(raw.len());
    for axes in &stage_axes {
        let mut index = HashMap::new();
        let mut points = Vec::new();
        for (pi, p) in sweep.points.iter().enumerate() {
            let key = sweep::projection_key(p, axes);
            if let std::collections::hash_map::Entry::Vacant(e) = index.entry(key) {
                e.insert(points.len());
                points.push(pi);
            }
        }
        instance_index.push(index);
        instance_points.push(points);
    }

    let env = fields::Env {
        stages: &raw,
        sweep: &sweep,
        stage_axes: &stage_axes,
        instance_index: &instance_index,
        models: &model_names,
        model_sources: &models,
        datasets: &dataset_names,
        dataset_sources: &datasets,
        base,
    };
    let mut stages = Vec::with_capacity(raw.len());
    for (si, st) in raw.iter().enumerate() {
        let mut instances = Vec::new();
        for &pi in &instance_points[si] {
            let point = &sweep.points[pi];
            if let Some(spec) = fields::check(&env, si, point, &mut sink) {
                let point: spec::Point = stage_axes[si]
                    .iter()
                    .map(|&a| {
                        let v = point[a].value().unwrap_or(ParamValue::Str(String::new()));
                        (sweep.axes[a].name.clone(), v)
                    })
                    .collect();
                instances.push(spec::Instance { point, spec });
            }
        }
        if let Some(kind) = st.kind {
            stages.push(spec::Stage {
                name: st.name.clone(),
                kind,
                axes: stage_axes[si]
                    .iter()
                    .map(|&a| sweep.axes[a].name.clone())
                    .collect(),
                instances,
                line: st.mark.line,
                resources: st.resources.clone(),
            });
        }
    }

    // Without `name:`, the file's stem names the reports folder: it must be as safe.
    let name = top.name.unwrap_or_else(|| {
        let stem = path_for_messages
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !schema::is_pipeline_name(&stem) {
            schema::bad_pipeline_name(Mark { line: 1, col: 1 }, &stem, &mut sink);
            sink.last_help(
                "the file name gives the default name; add a `name:` line to choose one",
            );
        }
        stem
    });
    if sink.has_errors() {
        return Err(sink.finish());
    }
    let path = canonical(path_for_messages);
    Ok(spec::Pipeline {
        path,
        source_digest: Digest::of_bytes(source.as_bytes()),
        name,
        models,
        datasets,
        axes: sweep.axes.iter().map(|a| a.name.clone()).collect(),
        stages,
    })
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize()
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests;
