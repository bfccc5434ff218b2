//! `calibrate`: sample windows from a dataset and record per-linear-layer input statistics.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::{Accumulation, CalibrateSpec, Sampling, Statistic};
use crate::capture::{
    collect_stats, contiguous_windows, random_windows, InputGroup, Stats, Wanted,
};
use crate::data::read_documents;
use crate::stages::weights::materialize;
use crate::stages::{StageCtx, StageError, StageOutput};

/// Name of the statistics file in a calibration entry.
pub const STATS_FILE: &str = "stats.safetensors";
/// The sampled token windows, so that other stages (and other tools) can use exactly these.
pub const TOKENS_FILE: &str = "tokens.safetensors";
/// Written by a windows-only calibration with `accumulation: reference`: the sequential method
/// that reads it accumulates its statistics that way, so the entry's content must differ from
/// an `exact` one's, or a prune keyed on it would be served the other's result.
const ACCUMULATION_FILE: &str = "accumulation.txt";
/// Windows per forward pass. Fixed: the f32 partial sums depend (slightly) on it.
pub const CALIBRATION_BATCH: usize = 8;

/// The suffixes of the tensors holding a linear layer's input norms and a block input's
/// Hessian statistic: sums when exact (Σx², f64; ΣXᵀX), the running averages otherwise
/// (Wanda's `scaler_row`, f32; SparseGPT's `H`).
fn suffixes(accumulation: Accumulation) -> (&'static str, &'static str) {
    match accumulation {
        Accumulation::Exact => (".input_sq_norm_sum", ".xtx_sum"),
        Accumulation::Reference => (".scaler_row", ".hessian"),
    }
}

/// The tensor holding the input norms of a linear layer's features.
pub fn sq_norm_name(linear: &str, accumulation: Accumulation) -> String {
    format!("{linear}{}", suffixes(accumulation).0)
}

/// The tensor holding the Hessian statistic of one input of a block.
pub fn xtx_name(layer: usize, group: InputGroup, accumulation: Accumulation) -> String {
    format!(
        "layers.{layer}.{}{}",
        group.as_str(),
        suffixes(accumulation).1
    )
}

/// Reads the statistics a calibrate entry recorded with `accumulation`.
pub fn read_stats(
    entry: &crate::cache::Entry,
    device: &Device,
    accumulation: Accumulation,
) -> Result<Stats, StageError> {
    let nsamples = entry.manifest().meta["nsamples"].as_u64().unwrap_or(0) as usize;
    if nsamples == 0 {
        return Err(bad_entry(entry, "it records no samples".into()));
    }
    let tensors = crate::stages::read_tensors(&entry.path(STATS_FILE), device)?;
    let mut stats = Stats {
        nsamples,
        ..Stats::new(accumulation)
    };
    let (norms, hessian) = suffixes(accumulation);
    for (name, t) in tensors {
        if let Some(linear) = name.strip_suffix(norms) {
            let id = linear.parse().map_err(|e: String| bad_entry(entry, e))?;
            let v = t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
            stats.norms.insert(id, v);
        } else if let Some(rest) = name.strip_suffix(hessian) {
            let found = rest.strip_prefix("layers.").and_then(|r| {
                let (layer, group) = r.split_once('.')?;
                let group = InputGroup::ALL.into_iter().find(|g| g.as_str() == group)?;
                Some((layer.parse().ok()?, group))
            });
            let key =
                found.ok_or_else(|| bad_entry(entry, format!("unexpected tensor `{name}`")))?;
            stats.xtx.insert(key, t);
        }
    }
    Ok(stats)
}

/// The sampled windows a calibrate entry holds.
pub fn read_windows(entry: &crate::cache::Entry) -> Result<Vec<Vec<u32>>, StageError> {
    let t = crate::stages::read_tensors(&entry.path(TOKENS_FILE), &Device::Cpu)?;
    let tokens = t
        .get("tokens")
        .ok_or_else(|| bad_entry(entry, "it has no `tokens`".into()))?;
    Ok(tokens.to_vec2::<u32>()?)
}

/// A calibration entry that does not hold what a calibrate stage writes.
fn bad_entry(entry: &crate::cache::Entry, problem: String) -> StageError {
    StageError::BadEntry {
        entry: format!("{} (calibration)", entry.manifest().key.short()),
        problem,
    }
}

pub(super) fn run(ctx: &StageCtx, spec: &CalibrateSpec) -> Result<StageOutput, StageError> {
    let weights = materialize(ctx, ctx.input_node("model")?, ctx.device)?;
    let tokenizer = weights.tokenizer()?;
    let dataset = &ctx.pipeline().datasets[&spec.dataset];
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

    let wanted = Wanted {
        norms: spec.statistics.contains(&Statistic::Norms),
        hessian: spec.statistics.contains(&Statistic::Hessian),
        accumulation: spec.accumulation,
    };
    // Windows only (`statistics: []`, for sequential methods): the model never runs.
    let stats = if spec.statistics.is_empty() {
        crate::capture::Stats::new(spec.accumulation)
    } else {
        let model = weights.model()?;
        ctx.progress.start(windows.len() as u64, "calibrating");
        collect_stats(
            model.blocks(),
            &windows,
            wanted,
            CALIBRATION_BATCH,
            ctx.device,
            &mut |n| ctx.tick(n),
        )?
    };

    let acc = spec.accumulation;
    let mut out = HashMap::new();
    for (id, sums) in &stats.norms {
        let n = sums.len();
        let t = Tensor::from_vec(sums.clone(), n, &Device::Cpu)?;
        // The reference's scaler_row is an f32 vector: stored as one.
        let t = match acc {
            Accumulation::Exact => t,
            Accumulation::Reference => t.to_dtype(candle_core::DType::F32)?,
        };
        out.insert(sq_norm_name(&id.to_string(), acc), t);
    }
    for ((layer, group), t) in &stats.xtx {
        out.insert(xtx_name(*layer, *group, acc), t.to_device(&Device::Cpu)?);
    }
    crate::stages::write_tensors(&out, &ctx.out_path(STATS_FILE))?;
    // Statistics already name their accumulation; windows alone do not (the exact one writes
    // nothing, so that existing entries keep their content).
    if spec.statistics.is_empty() && acc != Accumulation::Exact {
        let path = ctx.out_path(ACCUMULATION_FILE);
        std::fs::write(&path, format!("{}\n", acc.as_str()))
            .map_err(StageError::io(format!("writing {}", path.display())))?;
    }
    let flat: Vec<u32> = windows.iter().flatten().copied().collect();
    let tokens = Tensor::from_vec(flat, (windows.len(), spec.seqlen), &Device::Cpu)?;
    crate::stages::write_tensors(
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
            "accumulation": acc.as_str(),
        }),
    })
}
