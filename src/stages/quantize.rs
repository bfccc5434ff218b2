//! `quantize`: round-to-nearest quantization of the blocks' linear layers.
//!
//! The overlay holds the codes, scales and zeros; evaluation computes with the dequantized weights.

use serde_json::json;

use super::weights::{materialize, overlay_writer, write_overlay};
use super::{StageCtx, StageError, StageOutput};
use crate::compress::{self, Grouping, Matrix, QuantConfig};
use crate::pipeline::spec::{QuantMethod, QuantizeSpec};

pub fn run(ctx: &StageCtx, spec: &QuantizeSpec) -> Result<StageOutput, StageError> {
    let model_node = ctx.input_node("model")?;
    let weights = materialize(ctx, model_node, ctx.device)?;
    let QuantMethod::Rtn {
        bits,
        group_size,
        symmetric,
    } = &spec.method
    else {
        unimplemented!()
    };
    let cfg = QuantConfig {
        bits: *bits,
        grouping: group_size.map_or(Grouping::PerChannel, Grouping::Group),
        sym: *symmetric,
    };
    let model = weights.model()?;
    let linears = model.linear_ids();
    ctx.progress.start(linears.len() as u64, "quantizing");
    let mut overlay = overlay_writer(ctx, &weights)?;
    let mut sq_err = 0.0f64;
    let mut numel = 0usize;
    for id in linears {
        ctx.check_cancel()?;
        let name = id.weight_name();
        let tensor = &weights.tensors[&name];
        let w = Matrix::from_tensor(tensor).map_err(|e| StageError::Invalid(e.to_string()))?;
        let q =
            compress::rtn::rtn(&w, &cfg).map_err(|e| StageError::Invalid(format!("{id}: {e}")))?;
        let dq = q.dequantize();
        sq_err += w
            .data
            .iter()
            .zip(&dq.data)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>();
        numel += w.numel();
        overlay.put_quantized(&name, &q)?;
        ctx.progress.inc(1);
    }
    let (meta, size) = write_overlay(&weights, overlay)?;
    Ok(StageOutput {
        content: Some(meta.content()),
        meta: json!({
            "method": "rtn",
            "bits": bits,
            "group_size": group_size,
            "symmetric": symmetric,
            "weight_rmse": (sq_err / numel.max(1) as f64).sqrt(),
            "size": size,
            "weights": meta,
        }),
    })
}
