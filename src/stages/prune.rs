//! `prune`: zero weights of the blocks' linear layers by magnitude or Wanda score.

use std::collections::BTreeMap;

use serde_json::json;

use super::calibrate::{sq_norm_name, STATS_FILE};
use super::weights::{materialize, overlay_writer, write_overlay};
use super::{StageCtx, StageError, StageOutput};
use crate::compress::{self, Mask, Matrix};
use crate::pipeline::spec::{Pattern, PruneMethod, PruneSpec};

pub fn run(ctx: &StageCtx, spec: &PruneSpec) -> Result<StageOutput, StageError> {
    let model_node = ctx.input_node("model")?;
    let weights = materialize(ctx, model_node, ctx.device)?;
    let stats = match &spec.method {
        PruneMethod::Wanda { .. } => {
            let entry = ctx.entry(ctx.input_node("calibration")?)?;
            let nsamples = entry.manifest().meta["nsamples"].as_u64().unwrap_or(0);
            if nsamples == 0 {
                return Err(StageError::Invalid(
                    "the calibration entry records no samples".into(),
                ));
            }
            let t =
                candle_core::safetensors::load(entry.path(STATS_FILE), &candle_core::Device::Cpu)?;
            Some((t, nsamples as f64))
        }
        _ => None,
    };

    let model = weights.model()?;
    let linears = model.linear_ids();
    ctx.progress.start(linears.len() as u64, "pruning");
    let mut overlay = overlay_writer(ctx, &weights)?;
    let mut report = Vec::new();
    for id in linears {
        ctx.check_cancel()?;
        let name = id.weight_name();
        let tensor = &weights.tensors[&name];
        let mut w = Matrix::from_tensor(tensor).map_err(invalid)?;
        let mask = match (&spec.method, &stats) {
            (PruneMethod::Magnitude { .. }, _) => match spec.pattern {
                Pattern::Unstructured => compress::magnitude::magnitude(&w, spec.sparsity.get()),
                Pattern::NM { n, m } => compress::magnitude::magnitude_nm(&w, n, m),
                Pattern::Rows => unimplemented!(),
            },
            (PruneMethod::Wanda { .. }, Some((t, nsamples))) => {
                let sums = t.get(&sq_norm_name(&id.to_string())).ok_or_else(|| {
                    StageError::Invalid(format!("the calibration has no statistics for {id}"))
                })?;
                // Wanda's scaler_row: mean over calibration sequences of ‖X_j‖².
                let scaler: Vec<f32> = sums
                    .to_vec1::<f64>()?
                    .into_iter()
                    .map(|s| (s / nsamples) as f32)
                    .collect();
                match spec.pattern {
                    Pattern::Unstructured => {
                        compress::wanda::wanda(&w, &scaler, spec.sparsity.get())
                    }
                    Pattern::NM { n, m } => compress::wanda::wanda_nm(&w, &scaler, n, m),
                    Pattern::Rows => unimplemented!(),
                }
            }
            _ => unimplemented!(),
        }
        .map_err(|e| StageError::Invalid(format!("{id}: {e}")))?;
        mask.apply(&mut w).map_err(invalid)?;
        report.push(sparsity_record(&name, &mask, &w));
        overlay.put_masked(&name, tensor, &mask)?;
        ctx.progress.inc(1);
    }
    let (meta, size) = write_overlay(&weights, overlay)?;
    let zeros: u64 = report
        .iter()
        .map(|r| r["zeros"].as_u64().unwrap_or(0))
        .sum();
    let numel: u64 = report
        .iter()
        .map(|r| r["numel"].as_u64().unwrap_or(0))
        .sum();
    let overall = zeros as f64 / numel.max(1) as f64;
    ctx.write_json(
        "sparsity.json",
        &json!({ "overall": overall, "matrices": report }),
    )?;
    ctx.note(&format!(
        "overall sparsity of the pruned matrices: {overall:.4}"
    ));
    Ok(StageOutput {
        content: Some(meta.content()),
        meta: json!({
            "method": spec.method.name(),
            "pattern": spec.pattern.to_string(),
            "requested_sparsity": spec.sparsity.get(),
            "actual_sparsity": overall,
            "size": size,
            "weights": meta,
        }),
    })
}

fn invalid(e: compress::CompressError) -> StageError {
    StageError::Invalid(e.to_string())
}

/// Zeros per matrix and the spread of zeros per row, from the weights as written.
fn sparsity_record(name: &str, mask: &Mask, w: &Matrix) -> serde_json::Value {
    let (rows, cols) = w.shape();
    let mut row_zeros: BTreeMap<&str, usize> = BTreeMap::new();
    let per_row: Vec<usize> = (0..rows)
        .map(|r| w.row(r).iter().filter(|x| **x == 0.0).count())
        .collect();
    row_zeros.insert("min", per_row.iter().copied().min().unwrap_or(0));
    row_zeros.insert("max", per_row.iter().copied().max().unwrap_or(0));
    let zeros: usize = per_row.iter().sum();
    json!({
        "name": name,
        "rows": rows,
        "cols": cols,
        "numel": rows * cols,
        "pruned": mask.count(),
        "zeros": zeros,
        "sparsity": zeros as f64 / (rows * cols).max(1) as f64,
        "row_zeros": row_zeros,
    })
}
