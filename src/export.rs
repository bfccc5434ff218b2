//! `whittle export`: a cached weights stage as a Hugging Face model folder.
//!
//! The folder holds what `transformers` needs to load the model as it loads the original:
//!
//! ```text
//! <out>/config.json              the checkpoint's, with `tie_word_embeddings: false` when the LM
//!                                head was replaced while tied (and `torch_dtype` when it changed);
//!                                such a head carries the factor its input was scaled by while
//!                                tied (T5 v1.0's d_model^-½), as an untied head's is not
//! <out>/model.safetensors        every weight, dense, metadata {"format": "pt"}
//! <out>/tokenizer.json, tokenizer_config.json, special_tokens_map.json, …   copied when present
//! <out>/whittle_export.json      provenance: pipeline, stage, cache key, weights digest
//! ```
//!
//! Weights are written in the checkpoint's dtype (f32 for GGUF sources) when the compressed
//! weights convert to it exactly, otherwise in the dtype the pipeline computed with: a 4-bit grid
//! dequantized in f32 does not survive bf16, and exporting must not change the model.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::cache::{Cache, CacheError, Entry};
use crate::model::{Checkpoint, TensorMap, WeightFiles};
use crate::pipeline::spec::StageSpec;
use crate::plan::{self, History, NodeId, Plan, Status};
use crate::stages::weights::{materialize_in, Hold, Materialized};
use crate::stages::StageError;

/// Tokenizer and generation files copied beside the weights when the checkpoint has them.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no stage or instance `{stage}` in {}{hint}", pipeline.display())]
    NotFound {
        stage: String,
        pipeline: PathBuf,
        hint: String,
    },
    #[error("stage `{stage}` has {} instances; name one: {}", instances.len(), instances.join(", "))]
    Ambiguous {
        stage: String,
        instances: Vec<String>,
    },
    #[error("`{label}` (kind {kind}) produces no weights: export a load, prune or quantize stage")]
    NotWeights { label: String, kind: String },
    #[error("`{label}` is not in the cache ({reason}): run `whittle run {}` first", pipeline.display())]
    NotCached {
        label: String,
        reason: String,
        pipeline: PathBuf,
    },
    #[error("{} already exists and is not empty: export into a new or empty directory", .0.display())]
    OutNotEmpty(PathBuf),
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, ExportError>;

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io {
        context,
        path,
        source,
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub label: String,
    pub dir: PathBuf,
    pub dtype: DType,
    pub tensors: usize,
    pub bytes: u64,
    /// Whether the LM head was written untied.
    pub untied: bool,
    /// Why the weights are not in the checkpoint's dtype, when they are not.
    pub dtype_note: Option<String>,
    /// Linears that whittle runs as dynamic int8; the folder holds their dequantized weights.
    pub int8_linears: usize,
}

/// The single node `stage` (a stage name with one instance, or an instance label) names.
pub fn find_node(plan: &Plan, stage: &str) -> Result<NodeId> {
    let ids = plan.find(stage);
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => {
            let hint = plan
                .nodes
                .iter()
                .flat_map(|n| [n.stage.as_str(), n.label.as_str()])
                .min_by_key(|n| strsim::levenshtein(n, stage))
                .map(|n| format!("; did you mean `{n}`?"))
                .unwrap_or_default();
            Err(ExportError::NotFound {
                stage: stage.to_string(),
                pipeline: plan.pipeline.path.clone(),
                hint,
            })
        }
        _ => Err(ExportError::Ambiguous {
            stage: stage.to_string(),
            instances: ids
                .iter()
                .map(|&i| format!("'{}'", plan.nodes[i].label))
                .collect(),
        }),
    }
}

/// The weights `stage` produced, from the cache, on `device`, with its cache entry.
pub fn materialize_stage(
    plan: &Plan,
    cache: &Cache,
    stage: &str,
    device: &Device,
) -> Result<(Materialized, Entry)> {
    let id = find_node(plan, stage)?;
    let node = &plan.nodes[id];
    if !matches!(
        node.spec,
        StageSpec::Load(_) | StageSpec::Train(_) | StageSpec::Prune(_) | StageSpec::Quantize(_)
    ) {
        return Err(ExportError::NotWeights {
            label: node.label.clone(),
            kind: node.kind().as_str().to_string(),
        });
    }
    let history = History::load(cache, &plan.pipeline.path.display().to_string());
    let statuses = plan::resolve(plan, cache, &history)?;
    let entry_of = |i: NodeId| match &statuses[i] {
        Status::Cached { entry, .. } => Ok(entry.clone()),
        Status::Run { .. } => Err(StageError::NotCached(plan.nodes[i].label.clone())),
    };
    let entry = match &statuses[id] {
        Status::Cached { entry, .. } => entry.clone(),
        Status::Run { reason, .. } => {
            return Err(ExportError::NotCached {
                label: node.label.clone(),
                reason: reason.to_string(),
                pipeline: plan.pipeline.path.clone(),
            })
        }
    };
    let weights = materialize_in(plan, &entry_of, id, device, Hold::Whole)?;
    Ok((weights, entry))
}

/// Writes the weights of `stage` (cached) as a Hugging Face folder at `out`.
pub fn export(plan: &Plan, cache: &Cache, stage: &str, out: &Path) -> Result<Exported> {
    if out.exists() {
        let mut items = std::fs::read_dir(out).map_err(io("reading", out))?;
        if items.next().is_some() {
            return Err(ExportError::OutNotEmpty(out.to_path_buf()));
        }
    }
    let (weights, entry) = materialize_stage(plan, cache, stage, &Device::Cpu)?;
    let label = plan.nodes[find_node(plan, stage)?].label.clone();
    std::fs::create_dir_all(out).map_err(io("creating", out))?;

    let ckpt = &weights.checkpoint;
    let (dtype, dtype_note) = export_dtype(&weights, checkpoint_dtype(ckpt)?)?;
    let arch = weights.config.architecture();
    let untied = arch.tied(&weights.config) && weights.tensors.contains(arch.head_name());

    let config_path = &ckpt.config;
    let text = std::fs::read_to_string(config_path).map_err(io("reading", config_path))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ExportError::Json {
            path: config_path.clone(),
            source,
        })?;
    if let Some(obj) = config.as_object_mut() {
        if untied {
            obj.insert("tie_word_embeddings".into(), json!(false));
        }
        if dtype_note.is_some() {
            obj.insert("torch_dtype".into(), json!(torch_dtype(dtype)));
        }
    }
    write_json(&out.join("config.json"), &config)?;
    for name in TOKENIZER_FILES {
        let src = ckpt.dir.join(name);
        if src.is_file() {
            let dest = out.join(name);
            std::fs::copy(&src, &dest).map_err(io("writing", &dest))?;
        }
    }

    // Tied and not replaced: there is no `lm_head.weight`; transformers ties it to the embedding.
    let mut tensors = weights.tensors.to_map()?;
    if untied {
        if let Some(scale) = arch.tied_head_scale(&weights.config) {
            let name = arch.head_name();
            if let Some(head) = tensors.get(name) {
                let scaled = (head * scale)?;
                tensors.insert(name.to_string(), scaled);
            }
        }
        for (name, source) in arch.untied_extras() {
            if let Some(t) = tensors.get(*source).cloned() {
                tensors.insert(name.to_string(), t);
            }
        }
    }
    let tensors = &tensors;
    let st = out.join("model.safetensors");
    let bytes = write_safetensors(&st, tensors, dtype)?;
    write_json(
        &out.join("whittle_export.json"),
        &json!({
            "pipeline": plan.pipeline.path.display().to_string(),
            "stage": label,
            "key": entry.manifest().key,
            "weights": weights.meta.content(),
            "dtype": dtype.as_str(),
            "int8_linears": weights.int8.keys().collect::<Vec<_>>(),
        }),
    )?;
    Ok(Exported {
        label,
        dir: out.to_path_buf(),
        dtype,
        tensors: tensors.len(),
        bytes,
        untied,
        dtype_note,
        int8_linears: weights.int8.len(),
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialize") + "\n";
    std::fs::write(path, text).map_err(io("writing", path))
}

fn torch_dtype(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

fn st_dtype(d: DType) -> &'static str {
    match d {
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::F64 => "F64",
        _ => "F32",
    }
}

/// The float dtype most of the checkpoint's tensors have (f32 for GGUF, dequantized on load).
pub fn checkpoint_dtype(ckpt: &Checkpoint) -> Result<DType> {
    let file = match &ckpt.weights {
        WeightFiles::Safetensors(p) => p,
        WeightFiles::Sharded { shards, .. } => match shards.first() {
            Some(p) => p,
            None => return Ok(DType::F32),
        },
        WeightFiles::Gguf(_) => return Ok(DType::F32),
    };
    let header = read_safetensors_header(file)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    if let Some(obj) = header.as_object() {
        for (name, info) in obj {
            if name == "__metadata__" {
                continue;
            }
            if let Some(d) = info.get("dtype").and_then(|d| d.as_str()) {
                *counts.entry(d).or_default() += 1;
            }
        }
    }
    let best = counts
        .iter()
        .filter(|(d, _)| matches!(**d, "F32" | "F16" | "BF16" | "F64"))
        .max_by_key(|(_, n)| **n)
        .map(|(d, _)| *d);
    Ok(match best {
        Some("F16") => DType::F16,
        Some("BF16") => DType::BF16,
        Some("F64") => DType::F64,
        _ => DType::F32,
    })
}

fn read_safetensors_header(path: &Path) -> Result<serde_json::Value> {
    let mut f = std::fs::File::open(path).map_err(io("opening", path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io("reading", path))?;
    let len = u64::from_le_bytes(len);
    // safetensors caps headers at 100 MB.
    if len > 100_000_000 {
        return Err(ExportError::Io {
            context: "reading the safetensors header of",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "header too large"),
        });
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(io("reading", path))?;
    serde_json::from_slice(&buf).map_err(|source| ExportError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The checkpoint's dtype if every tensor converts to it exactly, else the computed dtype.
fn export_dtype(w: &Materialized, ckpt: DType) -> Result<(DType, Option<String>)> {
    if ckpt == w.dtype {
        return Ok((ckpt, None));
    }
    for (name, t) in &w.tensors.to_map()? {
        let back = t.to_dtype(ckpt)?.to_dtype(w.dtype)?;
        if bytes_of(&back)? != bytes_of(t)? {
            return Ok((
                w.dtype,
                Some(format!(
                    "written in {} (the pipeline's dtype): `{name}` does not convert to the \
                     checkpoint's {} exactly",
                    w.dtype.as_str(),
                    ckpt.as_str()
                )),
            ));
        }
    }
    Ok((ckpt, None))
}

fn bytes_of(t: &Tensor) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(t.elem_count() * t.dtype().size_in_bytes());
    t.write_bytes(&mut out)?;
    Ok(out)
}

/// Writes `tensors` (converted to `dtype`) as one safetensors file with the metadata
/// `{"format": "pt"}` that `transformers` checks; returns the file's size.
pub fn write_safetensors(path: &Path, tensors: &TensorMap, dtype: DType) -> Result<u64> {
    let size = dtype.size_in_bytes();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = offset + t.elem_count() * size;
        header.insert(
            name.clone(),
            json!({"dtype": st_dtype(dtype), "shape": t.dims(), "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&header).expect("JSON values serialize");
    // The data must start 8-byte aligned; the format pads the header with spaces.
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let file = std::fs::File::create(path).map_err(io("creating", path))?;
    let mut w = BufWriter::new(file);
    let write_err = io("writing", path);
    let result = (|| -> std::io::Result<()> {
        w.write_all(&(head.len() as u64).to_le_bytes())?;
        w.write_all(&head)?;
        Ok(())
    })();
    result.map_err(write_err)?;
    for t in tensors.values() {
        let t = t.to_dtype(dtype)?;
        t.write_bytes(&mut w).map_err(|e| match e {
            candle_core::Error::Io(source) => io("writing", path)(source),
            other => ExportError::Candle(other),
        })?;
    }
    w.flush().map_err(io("writing", path))?;
    Ok((8 + head.len() + offset) as u64)
}
