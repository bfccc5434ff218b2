//! `prune`: zero weights of the selected linear layers by magnitude (layer-wise or global),
//! at random, by whole rows, by Wanda score, or with SparseGPT's reconstruction.

use serde_json::json;

use super::{Pattern, PruneMethod, PruneSpec, Scope};
use crate::capture::{Stats, Wanted};
use crate::compress::tensor::Backend;
use crate::compress::{self, HessianOpts, Mask, Matrix};
use crate::model::LinearId;
use crate::stages::compress::calibrated::{compress_calibrated, Calibrated};
use crate::stages::compress::kernel;
use crate::stages::compress::replace::Replacement;
use crate::stages::compress::select::{selected, weight};
use crate::stages::weights::{materialize, ReplacementWriter, Tensors, WeightsMeta};
use crate::stages::Invariant;
use crate::stages::{StageCtx, StageError, StageOutput};

pub(super) fn run(ctx: &StageCtx, spec: &PruneSpec) -> Result<StageOutput, StageError> {
    let model_node = ctx.input_node("model")?;
    let mut weights = materialize(ctx, model_node, ctx.device)?;
    let names = selected(&weights.config, &spec.selection)?;
    let (arch, config) = (weights.config.architecture(), weights.config.clone());
    let backend = Backend::for_device(ctx.device);
    // The first override whose regex matches a weight's name sets its sparsity.
    let sparsity = |name: &str| -> f64 {
        spec.overrides
            .iter()
            .find(|o| o.pattern.is_match(name))
            .map_or(spec.sparsity.get(), |o| o.sparsity.get())
    };
    let matrix = |tensors: &Tensors, name: &str| -> Result<Matrix, StageError> {
        let t = weight(tensors, name)?;
        Matrix::from_tensor(&t).map_err(|e| kernel(name, e))
    };

    let mut out = ReplacementWriter::new(ctx, weights.dtype)?;
    let put = |out: &mut ReplacementWriter,
               tensors: &Tensors,
               name: &str,
               mask: Mask|
     -> Result<(), StageError> {
        out.put(
            name,
            &Replacement::Masked(mask),
            &weight(tensors, name)?,
            None,
        )
    };
    match &spec.method {
        PruneMethod::Magnitude {
            scope: Scope::Global,
        } => {
            let mats: Vec<Matrix> = names
                .iter()
                .map(|n| matrix(&weights.tensors, n))
                .collect::<Result<_, _>>()?;
            let refs: Vec<&Matrix> = mats.iter().collect();
            let masks = compress::magnitude::magnitude_global(&refs, spec.sparsity.get())
                .map_err(|e| kernel("global magnitude", e))?;
            drop(mats);
            for (name, mask) in names.iter().zip(masks) {
                put(&mut out, &weights.tensors, name, mask)?;
            }
        }
        PruneMethod::Magnitude {
            scope: Scope::Layer,
        }
        | PruneMethod::Random { .. } => {
            ctx.progress.start(names.len() as u64, "pruning");
            for (i, name) in names.iter().enumerate() {
                ctx.check_cancel()?;
                let w = matrix(&weights.tensors, name)?;
                let s = sparsity(name);
                let mask = match (&spec.method, spec.pattern) {
                    (PruneMethod::Random { seed }, _) => {
                        // One stream per matrix, reproducible from the seed alone.
                        compress::random::random(&w, s, seed.wrapping_add(i as u64))
                    }
                    (_, Pattern::Unstructured) => backend.magnitude(&w, s),
                    (_, Pattern::NM { n, m }) => backend.magnitude_nm(&w, n, m),
                    (_, Pattern::Rows) => compress::rows::rows_l1(&w, s),
                }
                .map_err(|e| kernel(name, e))?;
                put(&mut out, &weights.tensors, name, mask)?;
                ctx.progress.inc(1);
            }
        }
        PruneMethod::Wanda { calibration, mode }
        | PruneMethod::SparseGpt {
            calibration, mode, ..
        } => {
            let wanted = Wanted {
                norms: matches!(spec.method, PruneMethod::Wanda { .. }),
                hessian: matches!(spec.method, PruneMethod::SparseGpt { .. }),
                ..Wanted::default()
            };
            let calibrated = Calibrated {
                method: spec.method.name(),
                calibration: *calibration,
                mode: *mode,
                wanted,
            };
            compress_calibrated(
                ctx,
                &calibrated,
                &mut weights,
                &names,
                &mut out,
                &mut |id, w, stats| {
                    prune_calibrated(
                        &backend,
                        &spec.method,
                        spec.pattern,
                        sparsity(&arch.weight_name(&config, id)),
                        id,
                        w,
                        stats,
                    )
                },
            )?;
        }
    }

    let parent = WeightsMeta::from_entry(&ctx.entry(model_node)?)?;
    let written = out.finish(ctx, &parent, &weights.tensors)?;
    let records: Vec<serde_json::Value> = written
        .matrices
        .iter()
        .map(|m| m.sparsity_record())
        .collect();
    let zeros: u64 = records
        .iter()
        .map(|r| r["zeros"].as_u64().unwrap_or(0))
        .sum();
    let numel: u64 = records
        .iter()
        .map(|r| r["numel"].as_u64().unwrap_or(0))
        .sum();
    let overall = zeros as f64 / numel.max(1) as f64;
    ctx.write_json(
        "sparsity.json",
        &json!({ "overall": overall, "matrices": records }),
    )?;
    ctx.note(&format!(
        "{} matrices, overall sparsity {overall:.4}",
        records.len()
    ));
    Ok(StageOutput {
        content: Some(written.meta.content()),
        meta: json!({
            "method": spec.method.name(),
            "pattern": spec.pattern.to_string(),
            "requested_sparsity": spec.sparsity.get(),
            "actual_sparsity": overall,
            "size": written.size,
            "weights": written.meta,
        }),
    })
}

/// Wanda or SparseGPT on one layer, from its input statistics.
fn prune_calibrated(
    backend: &Backend,
    method: &PruneMethod,
    pattern: Pattern,
    s: f64,
    id: LinearId,
    w: &Matrix,
    stats: &Stats,
) -> Result<(Replacement, Matrix), StageError> {
    let missing = |what: &'static str| Invariant::NoStatistic {
        what,
        layer: id.to_string(),
    };
    let kernel = |e: compress::CompressError| kernel(&id.to_string(), e);
    match method {
        PruneMethod::Wanda { .. } => {
            let scaler = stats.scaler(id).ok_or_else(|| missing("input norms"))?;
            let mask: Mask = match pattern {
                Pattern::Unstructured => backend.wanda(w, &scaler, s),
                Pattern::NM { n, m } => backend.wanda_nm(w, &scaler, n, m),
                Pattern::Rows => return Err(Invariant::NoRows("wanda").into()),
            }
            .map_err(kernel)?;
            let mut pruned = w.clone();
            mask.apply(&mut pruned).map_err(kernel)?;
            Ok((Replacement::Masked(mask), pruned))
        }
        PruneMethod::SparseGpt {
            percdamp,
            blocksize,
            ..
        } => {
            let h = stats.hessian(id).ok_or_else(|| missing("Hessian"))??;
            let h = Matrix::from_tensor(&h).map_err(kernel)?;
            let pattern = pattern
                .for_sparsegpt(s)
                .ok_or(Invariant::NoRows("sparsegpt"))?;
            let opts = HessianOpts {
                blocksize: *blocksize,
                percdamp: *percdamp,
            };
            let out = backend.sparsegpt(w, &h, pattern, &opts).map_err(kernel)?;
            Ok((Replacement::Sparse { mask: out.mask }, out.weight))
        }
        _ => unreachable!("only calibrated methods come here"),
    }
}
