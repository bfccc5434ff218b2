//! The weights artifact: a base checkpoint plus the overlays that compression stages wrote.
//!
//! A `load` entry stores no tensors, only the digests of the checkpoint's tensors; each prune or
//! quantize entry stores an overlay (`overlay/`, packed: see [`crate::overlay`]) with the tensors
//! it replaced. The weights a node stands for are its `load` ancestor's checkpoint with the
//! overlays along the `model` inputs applied in order; linears an overlay stored as dynamic int8
//! run as the emulated integer product. Their content identity is a digest over config, tokenizer and every tensor's digest, so
//! two routes to the same tensors are the same weights.

use std::collections::BTreeMap;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::compress::kernel;
use super::StageSpec;
use super::{Dag, Invariant, NodeId, StageCtx, StageError};
use crate::cache::key::{Digest, KeyHasher};
use crate::cache::Entry;
use crate::model::{
    load_weights, Checkpoint, CheckpointReader, LanguageModel, ModelConfig, SpillPolicy, TensorMap,
    TensorSource, Tokenizer, TokenizerSemantics,
};
use crate::overlay::{apply_chain, AppliedChain, ChainSource, Overlay};
pub use crate::overlay::{Int8Linear, OverlayWriter, OVERLAY_DIR};
use crate::stages::compress::replace::Replacement;

/// What the manifest of any weights-producing entry records under `meta.weights`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WeightsMeta {
    pub config: Digest,
    pub tokenizer: Digest,
    pub dtype: String,
    pub tensors: BTreeMap<String, Digest>,
    /// How text becomes token ids; the default is left out of the manifest and the digest, so
    /// weights recorded before the setting keep their identity.
    #[serde(default, skip_serializing_if = "TokenizerSemantics::is_default")]
    pub tokenizer_semantics: TokenizerSemantics,
    /// The other files that reading depends on (`tokenizer_config.json`, ...), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokenizer_files: BTreeMap<String, Digest>,
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
        if !self.tokenizer_semantics.is_default() {
            h.str("tokenizer_semantics");
            h.str(self.tokenizer_semantics.as_str());
            h.digest_map(&self.tokenizer_files);
        }
        h.finish()
    }

    pub fn from_entry(entry: &crate::cache::Entry) -> Result<Self, StageError> {
        let w = entry
            .manifest()
            .meta
            .get("weights")
            .cloned()
            .ok_or_else(|| StageError::BadEntry {
                entry: entry.manifest().key.short(),
                problem: "it holds no weights metadata".into(),
            })?;
        serde_json::from_value(w).map_err(|e| StageError::BadEntry {
            entry: entry.manifest().key.short(),
            problem: format!("its weights metadata is malformed: {e}"),
        })
    }
}

pub fn candle_dtype(d: super::load::DType) -> DType {
    match d {
        super::load::DType::F32 => DType::F32,
        super::load::DType::F16 => DType::F16,
        super::load::DType::Bf16 => DType::BF16,
    }
}

/// A model's tensors as a stage holds them: all in memory, or read from the checkpoint (the
/// overlays applied) when asked for.
pub enum Tensors {
    Held(TensorMap),
    Streamed(Arc<ChainSource>),
}

impl Tensors {
    /// The tensor `name` (a tied model's unreplaced head is its embedding).
    pub fn get(&self, name: &str) -> Result<Tensor, StageError> {
        match self {
            Tensors::Held(map) => crate::model::tensor_or_tied(map, name)
                .cloned()
                .ok_or_else(|| StageError::NoSuchWeight(name.to_string())),
            Tensors::Streamed(source) => {
                let name = if source.contains(name) {
                    name
                } else {
                    crate::model::family::tied_parent(name, &|e| source.contains(e))
                        .ok_or_else(|| StageError::NoSuchWeight(name.to_string()))?
                };
                Ok(source.tensor(name)?)
            }
        }
    }

    /// The weight of linear layer `name` in nn.Linear's layout (`out × in`), as the kernels
    /// take it: a `Conv1D` weight transposed.
    pub fn linear_weight(&self, name: &str) -> Result<Tensor, StageError> {
        Ok(crate::model::as_linear(name, &self.get(name)?)?)
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Tensors::Held(map) => map.contains_key(name),
            Tensors::Streamed(source) => source.contains(name),
        }
    }

    /// Every tensor's name and shape.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        match self {
            Tensors::Held(map) => map
                .iter()
                .map(|(n, t)| (n.clone(), t.dims().to_vec()))
                .collect(),
            Tensors::Streamed(source) => source.shapes(),
        }
    }

    /// Makes `replaced` what [`Tensors::get`] returns for their names. A streamed model keeps
    /// them until [`Tensors::forget_replaced`].
    pub fn replace(&mut self, replaced: TensorMap) {
        match self {
            Tensors::Held(map) => map.extend(replaced),
            Tensors::Streamed(source) => source.set(replaced),
        }
    }

    /// A streamed model lets go of what [`Tensors::replace`] put (it is in the stage's overlay
    /// already); a held one keeps everything.
    pub fn forget_replaced(&self) {
        if let Tensors::Streamed(source) = self {
            source.clear();
        }
    }

    /// Every tensor, read into memory.
    pub fn to_map(&self) -> Result<TensorMap, StageError> {
        match self {
            Tensors::Held(map) => Ok(map.clone()),
            Tensors::Streamed(source) => source
                .names()
                .into_iter()
                .map(|n| Ok((n.clone(), source.tensor(&n)?)))
                .collect(),
        }
    }
}

/// A model materialized for a stage.
pub struct Materialized {
    pub checkpoint: Checkpoint,
    pub config: ModelConfig,
    pub tensors: Tensors,
    pub meta: WeightsMeta,
    pub dtype: DType,
    /// The linears that run as dynamic int8 (their dequantized weights are in `tensors`).
    pub int8: BTreeMap<String, Int8Linear>,
    /// Deployed bytes of each tensor an overlay of the chain holds (the last one to replace it),
    /// in its packed format (see [`crate::overlay`]).
    pub deployed: BTreeMap<String, u64>,
    /// Where the model's layer-wise passes keep hidden states (memory only when `None`).
    pub spill: Option<SpillPolicy>,
}

impl Materialized {
    /// The model, with the dynamic-int8 linears running as the emulated integer product.
    pub fn model(&self) -> Result<LanguageModel, StageError> {
        let arch = self.config.architecture();
        let model = match &self.tensors {
            Tensors::Held(map) => {
                let int8 = self.int8.iter();
                let int8 = int8.map(|(name, lin)| (name.clone(), lin.weight.clone()));
                arch.build(&self.config, map, int8.collect())?
            }
            Tensors::Streamed(source) => arch.build_streamed(&self.config, source.clone())?,
        };
        Ok(match &self.spill {
            Some(policy) => model.spilling(policy.clone()),
            None => model,
        })
    }

    pub fn is_streamed(&self) -> bool {
        matches!(self.tensors, Tensors::Streamed(_))
    }

    /// The tokenizer, read with the semantics its `load` stage recorded.
    pub fn tokenizer(&self) -> Result<Tokenizer, StageError> {
        Ok(Tokenizer::load(
            &self.checkpoint.tokenizer,
            self.meta.tokenizer_semantics,
        )?)
    }

    /// The model's size as it would be deployed: compressed tensors in their packed format,
    /// every other tensor dense in `dtype`.
    pub fn model_bytes(&self) -> u64 {
        self.tensors
            .shapes()
            .iter()
            .map(|(name, shape)| {
                self.deployed
                    .get(name)
                    .copied()
                    .unwrap_or(self.dense(shape))
            })
            .sum()
    }

    /// The model's size dense in `dtype`.
    pub fn dense_bytes(&self) -> u64 {
        self.tensors.shapes().values().map(|s| self.dense(s)).sum()
    }

    fn dense(&self, shape: &[usize]) -> u64 {
        (shape.iter().product::<usize>() * self.dtype.size_in_bytes()) as u64
    }
}

/// The `load` ancestor of a weights node and the compression nodes between, outermost last.
pub fn chain(ctx: &StageCtx, node: NodeId) -> Result<(NodeId, Vec<NodeId>), StageError> {
    chain_in(ctx.dag, node)
}

/// [`chain`] in any DAG.
pub fn chain_in(dag: &dyn Dag, mut node: NodeId) -> Result<(NodeId, Vec<NodeId>), StageError> {
    let mut overlays = Vec::new();
    loop {
        match dag.spec(node) {
            StageSpec::Load(_) | StageSpec::Train(_) => break,
            StageSpec::Prune(_) | StageSpec::Quantize(_) => {
                overlays.push(node);
                node = dag.input(node, "model").ok_or(Invariant::NoModelInput)?;
            }
            other => return Err(Invariant::NoWeights(other.kind()).into()),
        }
    }
    overlays.reverse();
    Ok((node, overlays))
}

/// How much of a model a stage may hold.
#[derive(Clone, Copy, Debug)]
pub enum Hold {
    /// Every tensor in memory.
    Whole,
    /// Every tensor in memory if the model takes at most half of this many bytes; otherwise
    /// read from the checkpoint as needed (blocks one at a time).
    Within(u64),
}

/// Loads the weights that `node` (a load, prune or quantize node) produced, on `device`, held
/// whole when they fit half of the stage's memory and streamed otherwise.
pub fn materialize(
    ctx: &StageCtx,
    node: NodeId,
    device: &Device,
) -> Result<Materialized, StageError> {
    let mut m = materialize_in(
        ctx.dag,
        &|id| ctx.entry(id),
        node,
        device,
        Hold::Within(ctx.memory),
    )?;
    m.spill = Some(ctx.spill_policy());
    if m.is_streamed() {
        ctx.note(&format!(
            "the model ({:.1} GB in {:?}) is over half of the {:.1} GB this stage may hold: \
             reading it block by block",
            m.dense_bytes() as f64 / 1e9,
            m.dtype,
            ctx.memory as f64 / 1e9
        ));
    }
    Ok(m)
}

/// [`materialize`] with the entries of the chain found by `entry`.
pub fn materialize_in(
    dag: &dyn Dag,
    entry: &dyn Fn(NodeId) -> Result<Entry, StageError>,
    node: NodeId,
    device: &Device,
    hold: Hold,
) -> Result<Materialized, StageError> {
    let (base, overlays) = chain_in(dag, node)?;
    let (checkpoint, dtype) = match dag.spec(base) {
        StageSpec::Load(load) => {
            let source = &dag.pipeline().models[&load.model];
            (Checkpoint::resolve(&source.dir)?, candle_dtype(load.dtype))
        }
        // A trained model is a Hugging Face folder inside its entry.
        _ => (
            Checkpoint::resolve(entry(base)?.path(super::train::MODEL_DIR))?,
            DType::F32,
        ),
    };
    let config = ModelConfig::from_file(&checkpoint.config)?;
    let overlays = overlays
        .into_iter()
        .map(|o| Ok(Overlay::open(entry(o)?.path(OVERLAY_DIR))?))
        .collect::<Result<Vec<_>, StageError>>()?;
    let bytes = config.architecture().parameter_count(&config) * dtype.size_in_bytes() as u64;
    let meta = WeightsMeta::from_entry(&entry(node)?)?;
    let (tensors, int8, deployed) = match hold {
        Hold::Within(memory) if bytes > memory / 2 => {
            let reader = CheckpointReader::open(&checkpoint, &config, dtype, device)?;
            let source = ChainSource::new(reader, overlays);
            let deployed = source.deployed()?;
            (
                Tensors::Streamed(Arc::new(source)),
                BTreeMap::new(),
                deployed,
            )
        }
        _ => {
            let mut tensors = load_weights(&checkpoint, &config, dtype, device)?;
            let AppliedChain { int8, deployed } = apply_chain(&overlays, &mut tensors, device)?;
            for t in tensors.values_mut() {
                if t.dtype() != dtype {
                    *t = t.to_dtype(dtype)?;
                }
            }
            (Tensors::Held(tensors), int8, deployed)
        }
    };
    Ok(Materialized {
        checkpoint,
        config,
        tensors,
        meta,
        dtype,
        int8,
        deployed,
        spill: None,
    })
}

/// The sizes a compression stage records under `meta.size`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredSize {
    /// Tensors in this stage's overlay.
    pub tensors: usize,
    /// The overlay's bytes on disk.
    pub stored_bytes: u64,
    /// The overlay's tensors dense in f32.
    pub dense_bytes: u64,
    /// The whole model as deployed: packed where an overlay holds a tensor (a `masked` one as
    /// mask and kept values), dense in the model dtype elsewhere.
    pub model_bytes: u64,
    /// The whole model dense in the model dtype.
    pub model_dense_bytes: u64,
}

/// Finishes a compression stage's overlay (`writer`, whose puts replaced tensors of the model
/// whose tensors are `tensors`, input or output: only their names and shapes are read): returns
/// the new weights' metadata (the digests of the tensors as applied, so identical weights share
/// keys) and the sizes to record.
pub fn write_overlay(
    ctx: &StageCtx,
    parent: &WeightsMeta,
    tensors: &Tensors,
    writer: OverlayWriter,
) -> Result<(WeightsMeta, StoredSize), StageError> {
    let dtype = writer.dtype();
    let summary = writer.finish()?;
    let mut meta = parent.clone();
    meta.tensors.extend(summary.digests.clone());
    // What each tensor takes on disk: packed where an overlay of the chain (this one last) holds
    // it, dense in the model's dtype elsewhere.
    let (_, chain) = chain(ctx, ctx.input_node("model")?)?;
    let mut stored = BTreeMap::new();
    for o in chain {
        let overlay = Overlay::open(ctx.entry(o)?.path(OVERLAY_DIR))?;
        stored.extend(overlay.deployed()?);
    }
    stored.extend(Overlay::open(ctx.out_path(OVERLAY_DIR))?.deployed()?);
    let shapes = tensors.shapes();
    // A tied model's head, stored once replaced, has its embedding's shape.
    let numel = |name: &str| -> Result<u64, StageError> {
        let shape = shapes
            .get(name)
            .or_else(|| {
                let parent = crate::model::family::tied_parent(name, &|e| shapes.contains_key(e));
                parent.and_then(|e| shapes.get(e))
            })
            .ok_or_else(|| StageError::NoSuchWeight(name.to_string()))?;
        Ok(shape.iter().product::<usize>() as u64)
    };
    let (mut model_bytes, mut model_dense_bytes) = (0u64, 0u64);
    let names: std::collections::BTreeSet<&String> =
        shapes.keys().chain(summary.stored.keys()).collect();
    for name in names {
        let dense = numel(name)? * dtype.size_in_bytes() as u64;
        model_dense_bytes += dense;
        model_bytes += stored.get(name).copied().unwrap_or(dense);
    }
    let size = StoredSize {
        tensors: summary.tensors,
        stored_bytes: summary.stored_bytes,
        dense_bytes: summary.dense_bytes,
        model_bytes,
        model_dense_bytes,
    };
    Ok((meta, size))
}

/// What a compression stage wrote.
pub struct Written {
    pub meta: WeightsMeta,
    /// Each replaced matrix as the model now computes with it.
    pub matrices: Vec<super::compress::replace::MatrixStats>,
    /// Stored and dense sizes in bytes.
    pub size: serde_json::Value,
}

/// A compression stage's overlay, written as the replacements are made: each matrix is stored
/// and compared with the tensor it replaces at once, so a stage never holds the model's input
/// weights beside its output (one matrix at a time is expanded).
pub struct ReplacementWriter {
    writer: OverlayWriter,
    matrices: Vec<super::compress::replace::MatrixStats>,
}

impl ReplacementWriter {
    /// Starts the stage's overlay, applied in the model's `dtype`.
    pub fn new(ctx: &StageCtx, dtype: DType) -> Result<Self, StageError> {
        Ok(Self {
            writer: OverlayWriter::new(ctx.out_path(OVERLAY_DIR), dtype)?,
            matrices: Vec::new(),
        })
    }

    /// Stores `rep` for `name`: `parent` is the tensor it replaces; `updated` the stage's new
    /// values, which a `Sparse` replacement stores. All three are in nn.Linear's layout
    /// ([`Tensors::linear_weight`]); the overlay turns a `Conv1D` weight back.
    pub fn put(
        &mut self,
        name: &str,
        rep: &Replacement,
        parent: &candle_core::Tensor,
        updated: Option<&candle_core::Tensor>,
    ) -> Result<(), StageError> {
        let matrix = |t: &candle_core::Tensor| {
            crate::compress::Matrix::from_tensor(t).map_err(|e| kernel(name, e))
        };
        let before = matrix(parent)?;
        let after = match rep {
            Replacement::Sparse { mask } => {
                let updated = updated.ok_or_else(|| Invariant::NoUpdate(name.to_string()))?;
                let w = matrix(updated)?;
                self.writer.put_sparse(name, &w, mask)?;
                w
            }
            Replacement::Masked(mask) => {
                self.writer.put_masked(name, parent, mask)?;
                rep.dense(&before, None)?
            }
            Replacement::Quantized(q) => {
                self.writer.put_quantized(name, q)?;
                rep.dense(&before, None)?
            }
            Replacement::Int8(w) => {
                self.writer.put_int8(name, w)?;
                rep.dense(&before, None)?
            }
        };
        self.matrices
            .push(super::compress::replace::MatrixStats::of(
                name, &before, &after,
            ));
        Ok(())
    }

    /// Finishes the overlay on top of `parent` (the input weights' metadata); `tensors` are the
    /// model's tensors (input or output: only their shapes are read).
    pub fn finish(
        self,
        ctx: &StageCtx,
        parent: &WeightsMeta,
        tensors: &Tensors,
    ) -> Result<Written, StageError> {
        let (meta, size) = write_overlay(ctx, parent, tensors, self.writer)?;
        Ok(Written {
            meta,
            matrices: self.matrices,
            size: serde_json::to_value(size).expect("sizes serialize"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> WeightsMeta {
        WeightsMeta {
            config: Digest([1; 32]),
            tokenizer: Digest([2; 32]),
            dtype: "f32".into(),
            tensors: [("w".to_string(), Digest([3; 32]))].into(),
            tokenizer_semantics: TokenizerSemantics::Tokenizers,
            tokenizer_files: BTreeMap::new(),
        }
    }

    #[test]
    fn tokenizer_semantics_changes_the_weights_identity_only_when_not_default() {
        // The digest as computed before the setting existed: default weights keep it.
        let m = meta();
        let mut h = KeyHasher::new();
        h.str("weights/v1");
        h.digest(&m.config);
        h.digest(&m.tokenizer);
        h.str(&m.dtype);
        h.digest_map(&m.tensors);
        assert_eq!(m.content(), h.finish());
        let json = serde_json::to_value(&m).unwrap();
        assert!(json.get("tokenizer_semantics").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<WeightsMeta>(json).unwrap(), m);

        let mut t = meta();
        t.tokenizer_semantics = TokenizerSemantics::Transformers;
        assert_ne!(t.content(), m.content());
        let mut t2 = t.clone();
        t2.tokenizer_files
            .insert("tokenizer_config.json".into(), Digest([4; 32]));
        assert_ne!(t2.content(), t.content());
        let json = serde_json::to_value(&t2).unwrap();
        assert_eq!(json["tokenizer_semantics"], "transformers");
        assert_eq!(serde_json::from_value::<WeightsMeta>(json).unwrap(), t2);
    }
}
