//! `calibrate`: sample windows from a dataset and record per-linear-layer input statistics.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::weights::materialize;
use super::{StageCtx, StageError, StageOutput};
use crate::calibrate::{collect_sq_norms, contiguous_windows, random_windows};
use crate::data::read_documents;
use crate::pipeline::spec::{CalibrateSpec, Sampling};

/// Name of the statistics file in a calibration entry.
pub const STATS_FILE: &str = "stats.safetensors";
/// The sampled token windows, so that other stages (and other tools) can use exactly these.
pub const TOKENS_FILE: &str = "tokens.safetensors";
/// Windows per forward pass. Fixed: the f32 partial sums depend (slightly) on it.
const BATCH: usize = 8;

/// The tensor holding Σx² of a linear layer's input features.
pub fn sq_norm_name(linear: &str) -> String {
    format!("{linear}.input_sq_norm_sum")
}

pub fn run(ctx: &StageCtx, spec: &CalibrateSpec) -> Result<StageOutput, StageError> {
    let weights = materialize(ctx, ctx.input_node("model")?, ctx.device)?;
    let tokenizer = weights.tokenizer()?;
    let dataset = &ctx.plan.pipeline.datasets[&spec.dataset];
    let docs = read_documents(dataset)?;
    // Windows are tokenized as the reference does: each document on its own, with the tokenizer's
    // special tokens (a LLaMA tokenizer prepends <s>).
    let windows = match spec.sampling {
        Sampling::Random => random_windows(
            docs.len(),
            |i| tokenizer.encode(&docs[i], true).map_err(|e| e.to_string()),
            spec.samples,
            spec.seqlen,
            spec.seed,
        ),
        Sampling::Contiguous => {
            let ids = tokenizer.encode(&docs.join("\n\n"), true)?;
            contiguous_windows(&ids, spec.samples, spec.seqlen)
        }
    }
    .map_err(|e| StageError::Invalid(format!("dataset `{}`: {e}", spec.dataset)))?;

    let model = weights.model()?;
    ctx.progress.start(windows.len() as u64, "calibrating");
    let norms = collect_sq_norms(&model, &windows, BATCH, ctx.device, &mut |n| {
        ctx.progress.inc(n);
        if ctx.check_cancel().is_err() {
            candle_core::bail!("cancelled");
        }
        Ok(())
    })
    .map_err(|e| cancelled_or(ctx, e))?;

    let mut stats = HashMap::new();
    for (id, sums) in &norms {
        let n = sums.len();
        stats.insert(
            sq_norm_name(&id.to_string()),
            Tensor::from_vec(sums.clone(), n, &Device::Cpu)?,
        );
    }
    candle_core::safetensors::save(&stats, ctx.out_path(STATS_FILE))?;
    let flat: Vec<u32> = windows.iter().flatten().copied().collect();
    let tokens = Tensor::from_vec(flat, (windows.len(), spec.seqlen), &Device::Cpu)?;
    candle_core::safetensors::save(
        &HashMap::from([("tokens".to_string(), tokens)]),
        ctx.out_path(TOKENS_FILE),
    )?;
    ctx.note(&format!(
        "{} windows of {} tokens, {} linear layers",
        windows.len(),
        spec.seqlen,
        norms.len()
    ));
    Ok(StageOutput {
        content: None,
        meta: json!({
            "nsamples": windows.len(),
            "seqlen": spec.seqlen,
            "tokens": windows.len() * spec.seqlen,
            "linear_layers": norms.len(),
            "statistics": ["input_sq_norm_sum"],
        }),
    })
}

/// An error raised because the user cancelled becomes `Cancelled`.
pub(super) fn cancelled_or(ctx: &StageCtx, e: crate::model::ModelError) -> StageError {
    if ctx.check_cancel().is_err() {
        StageError::Cancelled
    } else {
        StageError::Model(e)
    }
}
