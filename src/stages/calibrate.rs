//! `calibrate`: sample windows from a dataset and record per-linear-layer input statistics.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::weights::materialize;
use super::{StageCtx, StageError, StageOutput};
use crate::calibrate::{
    collect_stats, contiguous_windows, random_windows, InputGroup, Stats, Wanted,
};
use crate::data::read_documents;
use crate::pipeline::spec::{CalibrateSpec, Sampling, Statistic};

/// Name of the statistics file in a calibration entry.
pub const STATS_FILE: &str = "stats.safetensors";
/// The sampled token windows, so that other stages (and other tools) can use exactly these.
pub const TOKENS_FILE: &str = "tokens.safetensors";
/// Windows per forward pass. Fixed: the f32 partial sums depend (slightly) on it.
pub const CALIBRATION_BATCH: usize = 8;

/// The tensor holding Σx² of a linear layer's input features.
pub fn sq_norm_name(linear: &str) -> String {
    format!("{linear}.input_sq_norm_sum")
}

/// The tensor holding ΣXᵀX of one input of a block.
pub fn xtx_name(layer: usize, group: InputGroup) -> String {
    format!("layers.{layer}.{}.xtx_sum", group.as_str())
}

/// Reads the statistics a calibrate entry recorded.
pub fn read_stats(entry: &crate::cache::Entry, device: &Device) -> Result<Stats, StageError> {
    let nsamples = entry.manifest().meta["nsamples"].as_u64().unwrap_or(0) as usize;
    if nsamples == 0 {
        return Err(StageError::Invalid(
            "the calibration entry records no samples".into(),
        ));
    }
    let tensors = super::read_tensors(&entry.path(STATS_FILE), device)?;
    let mut stats = Stats {
        nsamples,
        ..Stats::default()
    };
    for (name, t) in tensors {
        if let Some(linear) = name.strip_suffix(".input_sq_norm_sum") {
            let id = linear
                .parse()
                .map_err(|e: String| StageError::Invalid(format!("calibration entry: {e}")))?;
            stats.norms.insert(id, t.to_vec1::<f64>()?);
        } else if let Some(rest) = name.strip_suffix(".xtx_sum") {
            let found = rest.strip_prefix("layers.").and_then(|r| {
                let (layer, group) = r.split_once('.')?;
                let group = InputGroup::ALL.into_iter().find(|g| g.as_str() == group)?;
                Some((layer.parse().ok()?, group))
            });
            let key = found.ok_or_else(|| {
                StageError::Invalid(format!("calibration entry: unexpected tensor `{name}`"))
            })?;
            stats.xtx.insert(key, t);
        }
    }
    Ok(stats)
}

/// The sampled windows a calibrate entry holds.
pub fn read_windows(entry: &crate::cache::Entry) -> Result<Vec<Vec<u32>>, StageError> {
    let t = super::read_tensors(&entry.path(TOKENS_FILE), &Device::Cpu)?;
    let tokens = t
        .get("tokens")
        .ok_or_else(|| StageError::Invalid("calibration entry has no `tokens`".into()))?;
    Ok(tokens.to_vec2::<u32>()?)
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
    .map_err(|e| crate::data::DataError::Invalid {
        name: spec.dataset.clone(),
        path: dataset.path.clone(),
        message: e.to_string(),
    })?;

    let model = weights.model()?;
    let wanted = Wanted {
        norms: spec.statistics.contains(&Statistic::Norms),
        hessian: spec.statistics.contains(&Statistic::Hessian),
    };
    ctx.progress.start(windows.len() as u64, "calibrating");
    let stats = collect_stats(
        &model,
        &windows,
        wanted,
        CALIBRATION_BATCH,
        ctx.device,
        &mut |n| ctx.tick(n),
    )
    .map_err(|e| cancelled_or(ctx, e))?;

    let mut out = HashMap::new();
    for (id, sums) in &stats.norms {
        let n = sums.len();
        out.insert(
            sq_norm_name(&id.to_string()),
            Tensor::from_vec(sums.clone(), n, &Device::Cpu)?,
        );
    }
    for ((layer, group), t) in &stats.xtx {
        out.insert(xtx_name(*layer, *group), t.to_device(&Device::Cpu)?);
    }
    super::write_tensors(&out, &ctx.out_path(STATS_FILE))?;
    let flat: Vec<u32> = windows.iter().flatten().copied().collect();
    let tokens = Tensor::from_vec(flat, (windows.len(), spec.seqlen), &Device::Cpu)?;
    super::write_tensors(
        &HashMap::from([("tokens".to_string(), tokens)]),
        &ctx.out_path(TOKENS_FILE),
    )?;
    ctx.note(&format!(
        "{} windows of {} tokens, statistics of {} linear layers, {} Hessians",
        windows.len(),
        spec.seqlen,
        stats.norms.len(),
        stats.xtx.len()
    ));
    Ok(StageOutput {
        content: None,
        meta: json!({
            "nsamples": windows.len(),
            "seqlen": spec.seqlen,
            "tokens": windows.len() * spec.seqlen,
            "statistics": spec.statistics.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        }),
    })
}

/// An error raised because the user cancelled becomes `Cancelled`.
pub(super) fn cancelled_or(ctx: &StageCtx, e: impl Into<StageError>) -> StageError {
    if ctx.check_cancel().is_err() {
        StageError::Cancelled
    } else {
        e.into()
    }
}
