//! What enters a node's cache key, in one place: planning (inputs by structural digest) and
//! execution (inputs by content digest) assemble it with the same function.

use std::collections::BTreeMap;

use super::Node;
use crate::cache::key::{CacheKey, Digest, KeyInputs, KeyWriter, Params};
use crate::pipeline::spec::{DatasetFormat, Pipeline, StageSpec, TextDocuments};

/// The parameters of an instance's key: its spec's own, and what only the pipeline knows of it
/// (a report's row labels, how each dataset it reads is cut into documents).
pub(super) fn params(pipeline: &Pipeline, spec: &StageSpec) -> Params {
    let mut key = KeyWriter::new();
    spec.cache_key(&mut key);
    spec.pipeline_key(pipeline, &mut key);
    for (role, name) in spec.datasets() {
        // How a file is cut into documents changes what a stage reads.
        key.put(
            format!("{role}.format"),
            dataset_format(&pipeline.datasets[name].format),
        );
    }
    key.finish()
}

/// The key inputs of a node, given its inputs' digests by role: their structural digests while
/// planning, their content digests once they are cached.
pub fn key_inputs(node: &Node, inputs: &BTreeMap<String, Digest>) -> KeyInputs {
    let mut k = KeyInputs::new(node.kind().as_str(), node.version);
    k.params = node.params.clone();
    k.inputs = inputs.clone();
    for (role, (_, d)) in &node.files {
        k.files.insert(role.clone(), *d);
    }
    k
}

fn dataset_format(f: &DatasetFormat) -> String {
    match f {
        DatasetFormat::Text { documents } => match documents {
            TextDocuments::Whole => "text".into(),
            TextDocuments::Lines => "text:lines".into(),
            TextDocuments::Separator(s) => format!("text:separator:{s}"),
        },
        DatasetFormat::Jsonl { field } => format!("jsonl:{field}"),
        DatasetFormat::Json { field } => format!("json:{field}"),
        DatasetFormat::Squad => "squad".into(),
        DatasetFormat::Lama => "lama".into(),
    }
}
