//! The flow shared by every calibrated method (Wanda, SparseGPT, GPTQ): statistics from the
//! calibrate entry (dense) or block by block from the compressed model (sequential), and one
//! call per selected matrix.

use super::CalibrationMode;
use crate::capture::{forward_chunk, sequential, Stats, Wanted, Windows};
use crate::compress::Matrix;
use crate::model::{LinearId, TensorMap};
use crate::pipeline::spec::InstanceRef;
use crate::stages::calibrate::{read_stats, read_windows, CALIBRATION_BATCH};
use crate::stages::compress::kernel;
use crate::stages::compress::replace::Replacement;
use crate::stages::weights::{Materialized, ReplacementWriter, Tensors};
use crate::stages::Invariant;
use crate::stages::StageSpec;
use crate::stages::{StageCtx, StageError};

/// One matrix's replacement from its layer's input statistics, and the weights the model
/// computes with from then on.
pub type PerMatrix<'a> =
    dyn FnMut(LinearId, &Matrix, &Stats) -> Result<(Replacement, Matrix), StageError> + 'a;

/// A calibrated method's source of statistics.
pub struct Calibrated {
    pub method: &'static str,
    pub calibration: InstanceRef,
    pub mode: CalibrationMode,
    /// What to accumulate; how is the calibrate stage's `accumulation`.
    pub wanted: Wanted,
}

/// Runs `per_matrix` over the selected block matrices `names`, layer by layer, updating
/// `weights.tensors` as it goes and storing each replacement in `out` as soon as it is made.
pub fn compress_calibrated(
    ctx: &StageCtx,
    calibrated: &Calibrated,
    weights: &mut Materialized,
    names: &[String],
    out: &mut ReplacementWriter,
    per_matrix: &mut PerMatrix,
) -> Result<(), StageError> {
    let method = calibrated.method;
    let cfg = &weights.config;
    let arch = cfg.architecture();
    // Every block that runs each weight, in run order: one, unless layers are shared.
    let mut runs: std::collections::HashMap<String, Vec<LinearId>> = Default::default();
    for id in (0..cfg.num_layers).flat_map(|l| arch.block_linears(cfg, l)) {
        runs.entry(arch.weight_name(cfg, id)).or_default().push(id);
    }
    let runs: Vec<(String, Vec<LinearId>)> = names
        .iter()
        .map(|n| {
            runs.remove(n)
                .map(|ids| (n.clone(), ids))
                .ok_or_else(|| StageError::NotInBlocks {
                    method,
                    weight: n.clone(),
                })
        })
        .collect::<Result<_, _>>()?;
    let ids: Vec<(String, LinearId)> = runs.iter().map(|(n, ids)| (n.clone(), ids[0])).collect();
    let shared: Vec<Vec<LinearId>> = runs
        .into_iter()
        .map(|(_, ids)| ids)
        .filter(|ids| ids.len() > 1)
        .collect();
    let node = ctx
        .dag
        .node_of(calibrated.calibration)
        .ok_or(Invariant::CalibrationNotInDag)?;
    let entry = ctx.entry(node)?;
    let wanted = match ctx.dag.spec(node) {
        StageSpec::Calibrate(c) => Wanted {
            accumulation: c.accumulation,
            ..calibrated.wanted
        },
        _ => return Err(Invariant::NotCalibrate.into()),
    };
    let mut layer_fn =
        |layer: usize, stats: &Stats, tensors: &Tensors| -> Result<TensorMap, StageError> {
            let mut replaced = TensorMap::new();
            for (name, id) in ids.iter().filter(|(_, id)| id.layer == layer) {
                // Kernels work in nn.Linear's layout; the model keeps the checkpoint's.
                let t = tensors.linear_weight(name)?;
                let w = Matrix::from_tensor(&t).map_err(|e| kernel(name, e))?;
                let (rep, dense) = per_matrix(*id, &w, stats)?;
                drop(w);
                let tensor = super::replace::tensor_like(&dense, &t)?;
                out.put(name, &rep, &t, Some(&tensor))?;
                replaced.insert(name.clone(), crate::model::as_stored(name, &tensor)?);
            }
            Ok(replaced)
        };
    let layers = weights.config.num_layers;
    match calibrated.mode {
        CalibrationMode::Dense => {
            let mut stats = read_stats(&entry, ctx.device, wanted.accumulation)?;
            stats.merge_shared(&shared)?;
            ctx.progress.start(layers as u64, method);
            (0..layers).try_for_each(|layer| {
                ctx.check_cancel()?;
                let replaced = layer_fn(layer, &stats, &weights.tensors)?;
                // Nothing later in a dense pass reads them: a streamed model lets them go.
                weights.tensors.replace(replaced);
                weights.tensors.forget_replaced();
                ctx.progress.inc(1);
                Ok(())
            })
        }
        CalibrationMode::Sequential => {
            if let Some(ids) = shared.first() {
                return Err(StageError::SharedSequential {
                    method,
                    weight: arch.weight_name(cfg, ids[0]),
                    blocks: ids.len(),
                });
            }
            let windows = read_windows(&entry)?;
            ctx.progress
                .start(layers as u64, &format!("{method}, block by block"));
            let run = Windows {
                windows: &windows,
                batch_size: CALIBRATION_BATCH,
                chunk: forward_chunk(windows.first().map_or(1, Vec::len), ctx.device),
                device: ctx.device,
            };
            let model = weights.model()?.into_blocks();
            sequential::<StageError>(
                model,
                layers,
                &run,
                wanted,
                &mut |layer, stats| {
                    // The block just compressed is what the next one's inputs run through; a
                    // streamed model keeps only its replacements, until the next block's.
                    weights.tensors.forget_replaced();
                    let replaced = layer_fn(layer, stats, &weights.tensors)?;
                    weights.tensors.replace(replaced);
                    Ok(weights.model()?.into_blocks())
                },
                &mut |n| ctx.tick(n),
            )?;
            weights.tensors.forget_replaced();
            Ok(())
        }
    }
}
