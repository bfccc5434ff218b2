//! `load`: resolve a checkpoint and record the digest of every tensor in it.

use candle_core::Device;
use rayon::prelude::*;
use serde_json::json;

use super::LoadSpec;
use crate::model::{
    tensor_digest, Checkpoint, CheckpointReader, ModelConfig, TensorSource, Tokenizer,
    TokenizerSemantics,
};
use crate::stages::weights::{candle_dtype, WeightsMeta};
use crate::stages::{Invariant, StageCtx, StageError, StageOutput};

/// The content digest of every tensor, by name.
pub(crate) fn digests(
    tensors: &crate::model::TensorMap,
) -> Result<std::collections::BTreeMap<String, crate::cache::Digest>, StageError> {
    Ok(tensors
        .par_iter()
        .map(|(name, t)| Ok((name.clone(), tensor_digest(t)?)))
        .collect::<Result<_, crate::model::ModelError>>()?)
}

pub(super) fn run(ctx: &StageCtx, spec: &LoadSpec) -> Result<StageOutput, StageError> {
    let source = &ctx.pipeline().models[&spec.model];
    let checkpoint = Checkpoint::resolve(&source.dir)?;
    let config = ModelConfig::from_file(&checkpoint.config)?;
    // Every later stage reads the tokenizer: a file that does not parse must fail here rather
    // than be cached as a good model.
    crate::model::Tokenizer::from_file(&checkpoint.tokenizer)?;
    ctx.note(&format!("loading {}", source.dir.display()));
    // Digests are taken on the CPU copy: the same bytes whatever device later stages use. One
    // tensor at a time, so a model larger than memory loads too.
    let reader =
        CheckpointReader::open(&checkpoint, &config, candle_dtype(spec.dtype), &Device::Cpu)?;
    let mut digests = std::collections::BTreeMap::new();
    let mut params = 0usize;
    for name in reader.expected().keys() {
        ctx.check_cancel()?;
        let t = reader.tensor(name)?;
        params += t.elem_count();
        digests.insert(name.clone(), tensor_digest(&t)?);
    }
    let files = ctx.dag.files(ctx.node);
    let file_digest = |name: &str| {
        files
            .get(&format!("model/{name}"))
            .map(|(_, d)| *d)
            .ok_or_else(|| StageError::from(Invariant::NotHashed(name.to_string())))
    };
    let semantics = spec.tokenizer_semantics;
    let tokenizer_files = semantics
        .extra_files()
        .iter()
        .filter_map(|name| Some((name.to_string(), files.get(&format!("model/{name}"))?.1)))
        .collect();
    let meta = WeightsMeta {
        config: file_digest("config.json")?,
        tokenizer: file_digest("tokenizer.json")?,
        dtype: spec.dtype.as_str().to_string(),
        tensors: digests,
        tokenizer_semantics: semantics,
        tokenizer_files,
    };
    ctx.note(&format!(
        "{} tensors, {params} parameters",
        reader.expected().len()
    ));
    // A rebuilt tokenizer is read now, so that files it cannot read fail here; the default
    // reading is left to the stages that tokenize, as before the setting.
    let rebuilt_as = match semantics {
        TokenizerSemantics::Tokenizers => None,
        TokenizerSemantics::Transformers => Tokenizer::load(&checkpoint.tokenizer, semantics)?
            .class()
            .map(str::to_string),
    };
    if let Some(class) = &rebuilt_as {
        ctx.note(&format!("tokenizer rebuilt as transformers 5's {class}"));
    }
    Ok(StageOutput {
        content: Some(meta.content()),
        meta: json!({
            "checkpoint": source.dir.display().to_string(),
            "parameters": params,
            "layers": config.num_layers,
            "tokenizer": {
                "semantics": semantics.as_str(),
                "transformers_class": rebuilt_as,
            },
            "weights": meta,
        }),
    })
}
