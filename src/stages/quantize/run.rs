//! `quantize`: RTN, GPTQ (the Hessian-weighted error feedback), or PyTorch's dynamic int8, on the
//! selected linear layers.

use serde_json::json;

use super::{QuantMethod, QuantizeSpec};
use crate::capture::Wanted;
use crate::compress::tensor::Backend;
use crate::compress::{self, Grouping, HessianOpts, Matrix, QuantConfig};
use crate::stages::compress::calibrated::{compress_calibrated, Calibrated};
use crate::stages::compress::kernel;
use crate::stages::compress::replace::Replacement;
use crate::stages::compress::select::{selected, weight};
use crate::stages::weights::{materialize, ReplacementWriter, WeightsMeta};
use crate::stages::Invariant;
use crate::stages::{StageCtx, StageError, StageOutput};

pub(super) fn run(ctx: &StageCtx, spec: &QuantizeSpec) -> Result<StageOutput, StageError> {
    let model_node = ctx.input_node("model")?;
    let mut weights = materialize(ctx, model_node, ctx.device)?;
    let names = selected(&weights.config, &spec.selection)?;
    let backend = Backend::for_device(ctx.device);
    let grid = |bits: u32, group_size: Option<usize>, symmetric: bool| QuantConfig {
        bits,
        grouping: group_size.map_or(Grouping::PerChannel, Grouping::Group),
        sym: symmetric,
    };

    let mut out = ReplacementWriter::new(ctx, weights.dtype)?;
    match &spec.method {
        QuantMethod::Rtn {
            bits,
            group_size,
            symmetric,
        } => each_matrix(ctx, &weights.tensors, &names, &mut out, |name, w| {
            let q = backend
                .rtn(w, &grid(*bits, *group_size, *symmetric))
                .map_err(|e| kernel(name, e))?;
            Ok(Replacement::Quantized(q))
        })?,
        QuantMethod::DynamicInt8 => {
            each_matrix(ctx, &weights.tensors, &names, &mut out, |name, w| {
                let q = compress::dynint8::quantize_weight(w).map_err(|e| kernel(name, e))?;
                Ok(Replacement::Int8(q))
            })?
        }
        QuantMethod::Gptq {
            bits,
            group_size,
            symmetric,
            act_order,
            percdamp,
            blocksize,
            calibration,
            mode,
        } => {
            let cfg = compress::gptq::GptqConfig {
                quant: grid(*bits, *group_size, *symmetric),
                act_order: *act_order,
                hessian: HessianOpts {
                    blocksize: *blocksize,
                    percdamp: *percdamp,
                },
            };
            let wanted = Wanted {
                norms: false,
                hessian: true,
                ..Wanted::default()
            };
            let calibrated = Calibrated {
                method: "gptq",
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
                    let h = stats.hessian(id).ok_or_else(|| Invariant::NoStatistic {
                        what: "Hessian",
                        layer: id.to_string(),
                    })??;
                    let h = Matrix::from_tensor(&h).map_err(|e| kernel(&id.to_string(), e))?;
                    let g = backend
                        .gptq(w, &h, &cfg)
                        .map_err(|e| kernel(&id.to_string(), e))?;
                    let dense = g.quantized.dequantize();
                    Ok((Replacement::Quantized(g.quantized), dense))
                },
            )?
        }
    }

    let parent = WeightsMeta::from_entry(&ctx.entry(model_node)?)?;
    let written = out.finish(ctx, &parent, &weights.tensors)?;
    let sq_err: f64 = written.matrices.iter().map(|m| m.sq_err).sum();
    let numel: usize = written.matrices.iter().map(|m| m.numel()).sum();
    let rmse = (sq_err / numel.max(1) as f64).sqrt();
    ctx.note(&format!(
        "{} matrices, weight RMSE {rmse:.3e}",
        written.matrices.len()
    ));
    let mut meta = json!({
        "method": spec.method.name(),
        "matrices": written.matrices.len(),
        "weight_rmse": rmse,
        "size": written.size,
        "weights": written.meta,
    });
    if let QuantMethod::Rtn {
        bits,
        group_size,
        symmetric,
    }
    | QuantMethod::Gptq {
        bits,
        group_size,
        symmetric,
        ..
    } = &spec.method
    {
        meta["bits"] = json!(bits);
        meta["group_size"] = json!(group_size);
        meta["symmetric"] = json!(symmetric);
    }
    Ok(StageOutput {
        content: Some(written.meta.content()),
        meta,
    })
}

/// Applies `f` to every selected matrix and stores the result in `out`, with progress and
/// cancellation.
fn each_matrix(
    ctx: &StageCtx,
    tensors: &crate::stages::weights::Tensors,
    names: &[String],
    out: &mut ReplacementWriter,
    mut f: impl FnMut(&str, &Matrix) -> Result<Replacement, StageError>,
) -> Result<(), StageError> {
    ctx.progress.start(names.len() as u64, "quantizing");
    for name in names {
        ctx.check_cancel()?;
        let t = weight(tensors, name)?;
        let w = Matrix::from_tensor(&t).map_err(|e| kernel(name, e))?;
        let rep = f(name, &w)?;
        drop(w);
        out.put(name, &rep, &t, None)?;
        ctx.progress.inc(1);
    }
    Ok(())
}
