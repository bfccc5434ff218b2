//! `train`: a small LLaMA-architecture model trained from scratch on a dataset's documents,
//! written as a Hugging Face folder inside the entry. Downstream stages use it as they use a
//! loaded checkpoint.

use candle_core::{DType, Device};
use serde_json::json;

use super::TrainSpec;
use crate::cache::blake3_file;
use crate::data::read_documents;
use crate::model::{load_weights, Checkpoint, ModelConfig};
use crate::stages::load::digests;
use crate::stages::weights::WeightsMeta;
use crate::stages::{StageCtx, StageError, StageOutput};
use crate::train::{tokenizer::build_tokenizer, train};

/// The Hugging Face folder inside a train entry.
pub const MODEL_DIR: &str = "model";

pub(super) fn run(ctx: &StageCtx, spec: &TrainSpec) -> Result<StageOutput, StageError> {
    let datasets = &ctx.pipeline().datasets;
    let docs = read_documents(&datasets[&spec.dataset])?;
    // Held-out words join the vocabulary, so evaluating on them never meets `<unk>`.
    let extra = match &spec.vocabulary {
        Some(name) => read_documents(&datasets[name])?
            .iter()
            .map(|d| crate::train::tokenizer::split_words(d))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect(),
        None => Default::default(),
    };
    let tokenizer = match spec.config.architecture {
        crate::train::TrainArch::T5 => crate::train::seq2seq::build_tokenizer(&docs, &extra)?,
        _ => build_tokenizer(&docs, &extra)?,
    };
    let out = ctx.out_path(MODEL_DIR);
    std::fs::create_dir_all(&out).map_err(StageError::io(format!("creating {}", out.display())))?;
    ctx.progress.start(spec.config.steps as u64, "training");
    // On the CPU, whatever device the stage was given: the trained bytes must not depend on it.
    let summary = train(
        &docs,
        &tokenizer,
        &spec.config,
        &Device::Cpu,
        &out,
        &mut |_, _| Ok(ctx.tick(1)?),
    )?;
    ctx.note(&format!(
        "trained {} parameters for {} steps: final loss {:.4} nats/token ({:.1} s)",
        summary.parameters, spec.config.steps, summary.final_loss, summary.seconds
    ));
    let checkpoint = Checkpoint::resolve(&out)?;
    let config = ModelConfig::from_file(&checkpoint.config)?;
    let tensors = load_weights(&checkpoint, &config, DType::F32, &Device::Cpu)?;
    let hash = |p: &std::path::Path| {
        blake3_file(p).map_err(StageError::io(format!("hashing {}", p.display())))
    };
    let meta = WeightsMeta {
        config: hash(&checkpoint.config)?,
        tokenizer: hash(&checkpoint.tokenizer)?,
        dtype: "f32".into(),
        tensors: digests(&tensors)?,
        // A trained model's word-level file reads the same either way.
        tokenizer_semantics: Default::default(),
        tokenizer_files: Default::default(),
    };
    Ok(StageOutput {
        content: Some(meta.content()),
        meta: json!({
            "parameters": summary.parameters,
            "layers": config.num_layers,
            "vocab_size": summary.vocab_size,
            "final_loss": summary.final_loss,
            "tokens_seen": summary.tokens_seen,
            "corpus_tokens": summary.corpus_tokens,
            "seconds": summary.seconds,
            "losses": summary.losses,
            "weights": meta,
        }),
    })
}
