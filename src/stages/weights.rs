//! The weights artifact: a base checkpoint plus the overlays that compression stages wrote.
//!
//! A `load` entry stores no tensors, only the digests of the checkpoint's tensors; each prune or
//! quantize entry stores `overlay.safetensors` with the tensors it replaced. The weights a node
//! stands for are its `load` ancestor's checkpoint with the overlays along the `model` inputs applied
//! in order. Their content identity is a digest over config, tokenizer and every tensor's digest, so
//! two routes to the same tensors are the same weights.

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::{StageCtx, StageError};
use crate::cache::key::{Digest, KeyHasher};
use crate::model::{load_weights, Checkpoint, Llama, ModelConfig, TensorMap, Tokenizer};
use crate::pipeline::spec::{self, StageSpec};
use crate::plan::NodeId;

/// Name of the overlay file inside a compression stage's entry.
pub const OVERLAY_FILE: &str = "overlay.safetensors";

/// What the manifest of any weights-producing entry records under `meta.weights`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WeightsMeta {
    pub config: Digest,
    pub tokenizer: Digest,
    pub dtype: String,
    pub tensors: BTreeMap<String, Digest>,
}

impl WeightsMeta {
    /// The content identity of these weights.
    pub fn content(&self) -> Digest {
        let mut h = KeyHasher::new();
        h.str("weights/v1");
        h.digest(&self.config);
        h.digest(&self.tokenizer);
        h.str(&self.dtype);
        h.digest_map(&self.tensors);
        h.finish()
    }

    pub fn from_entry(entry: &crate::cache::Entry) -> Result<Self, StageError> {
        let w = entry
            .manifest()
            .meta
            .get("weights")
            .cloned()
            .ok_or_else(|| {
                StageError::Invalid(format!(
                    "cache entry {} holds no weights metadata",
                    entry.manifest().key.short()
                ))
            })?;
        serde_json::from_value(w).map_err(|e| {
            StageError::Invalid(format!(
                "cache entry {} has malformed weights metadata: {e}",
                entry.manifest().key.short()
            ))
        })
    }
}

pub fn candle_dtype(d: spec::DType) -> DType {
    match d {
        spec::DType::F32 => DType::F32,
        spec::DType::F16 => DType::F16,
        spec::DType::Bf16 => DType::BF16,
    }
}

/// A model materialized for a stage.
pub struct Materialized {
    pub checkpoint: Checkpoint,
    pub config: ModelConfig,
    pub tensors: TensorMap,
    pub meta: WeightsMeta,
    pub dtype: DType,
}

impl Materialized {
    pub fn model(&self) -> Result<Llama, StageError> {
        Ok(Llama::new(&self.config, &self.tensors)?)
    }

    pub fn tokenizer(&self) -> Result<Tokenizer, StageError> {
        Ok(Tokenizer::from_file(&self.checkpoint.tokenizer)?)
    }
}

/// The `load` ancestor of a weights node and the compression nodes between, outermost last.
pub fn chain(ctx: &StageCtx, mut node: NodeId) -> Result<(NodeId, Vec<NodeId>), StageError> {
    let mut overlays = Vec::new();
    loop {
        match &ctx.plan.nodes[node].spec {
            StageSpec::Load(_) => break,
            StageSpec::Prune(_) | StageSpec::Quantize(_) => {
                overlays.push(node);
                node = ctx.plan.nodes[node].input("model").ok_or_else(|| {
                    StageError::Invalid("internal: compression stage without model".into())
                })?;
            }
            other => {
                return Err(StageError::Invalid(format!(
                    "internal: a {} stage does not produce weights",
                    other.kind()
                )))
            }
        }
    }
    overlays.reverse();
    Ok((node, overlays))
}

/// Loads the weights that `node` (a load, prune or quantize node) produced, on `device`.
pub fn materialize(
    ctx: &StageCtx,
    node: NodeId,
    device: &Device,
) -> Result<Materialized, StageError> {
    let (base, overlays) = chain(ctx, node)?;
    let StageSpec::Load(load) = &ctx.plan.nodes[base].spec else {
        unreachable!("chain() ends at a load node")
    };
    let source = &ctx.plan.pipeline.models[&load.model];
    let checkpoint = Checkpoint::resolve(&source.dir)?;
    let config = ModelConfig::from_file(&checkpoint.config)?;
    let dtype = candle_dtype(load.dtype);
    let mut tensors = load_weights(&checkpoint, &config, dtype, device)?;
    for o in overlays {
        let entry = ctx.entry(o)?;
        let replaced = candle_core::safetensors::load(entry.path(OVERLAY_FILE), device)?;
        for (name, t) in replaced {
            tensors.insert(name, t.to_dtype(dtype)?);
        }
    }
    let meta = WeightsMeta::from_entry(&ctx.entry(node)?)?;
    Ok(Materialized {
        checkpoint,
        config,
        tensors,
        meta,
        dtype,
    })
}

/// Writes the tensors a compression stage replaced and returns the new weights' metadata.
pub fn write_overlay(
    ctx: &StageCtx,
    parent: &WeightsMeta,
    replaced: &TensorMap,
) -> Result<WeightsMeta, StageError> {
    let mut meta = parent.clone();
    for (name, t) in replaced {
        meta.tensors
            .insert(name.clone(), crate::model::tensor_digest(t)?);
    }
    let replaced: std::collections::HashMap<&str, candle_core::Tensor> = replaced
        .iter()
        .map(|(k, t)| (k.as_str(), t.clone()))
        .collect();
    candle_core::safetensors::save(&replaced, ctx.out_path(OVERLAY_FILE))?;
    Ok(meta)
}

/// What a compression stage wrote.
pub struct Written {
    pub meta: WeightsMeta,
    /// The dense matrices the model now computes with, by name.
    pub dense: Vec<(String, crate::compress::Matrix)>,
    /// Stored and dense sizes in bytes.
    pub size: serde_json::Value,
}

/// Stores a compression stage's replacements on top of `original` (the input weights).
pub fn write_replacements(
    ctx: &StageCtx,
    parent: &WeightsMeta,
    original: &TensorMap,
    reps: &[(String, super::replace::Replacement)],
) -> Result<Written, StageError> {
    let mut replaced = TensorMap::new();
    let mut dense = Vec::new();
    for (name, rep) in reps {
        let like = super::select::weight(original, name)?;
        let parent_m = crate::compress::Matrix::from_tensor(like)
            .map_err(|e| StageError::Invalid(format!("{name}: {e}")))?;
        let d = rep
            .dense(&parent_m)
            .map_err(|e| StageError::Invalid(format!("{name}: {e}")))?;
        replaced.insert(name.clone(), super::replace::tensor_like(&d, like)?);
        dense.push((name.clone(), d));
    }
    let dense_bytes: usize = replaced.values().map(|t| t.elem_count() * 4).sum();
    let meta = write_overlay(ctx, parent, &replaced)?;
    Ok(Written {
        meta,
        dense,
        size: serde_json::json!({ "stored_bytes": dense_bytes, "dense_bytes": dense_bytes }),
    })
}
