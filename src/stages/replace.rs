//! What a compression stage does to one weight matrix, before it is stored.

use candle_core::Tensor;
use serde_json::json;

use crate::compress::dynint8::Int8Weight;
use crate::compress::{Mask, Matrix, QuantizedMatrix};

/// A weight matrix's replacement, in the form that stores it most compactly.
#[derive(Debug, Clone)]
pub enum Replacement {
    /// The parent's values with the masked ones zeroed (magnitude, Wanda, random, rows).
    Masked(Mask),
    /// Pruned and updated (SparseGPT).
    Sparse { weight: Matrix, mask: Mask },
    /// Codes with scales and zero points (RTN, GPTQ).
    Quantized(QuantizedMatrix),
    /// PyTorch dynamic int8: runs as an emulated integer product.
    Int8(Int8Weight),
}

impl Replacement {
    /// The dense matrix the model computes with (dynamic int8: `s_w·q_w`).
    pub fn dense(&self, parent: &Matrix) -> Result<Matrix, crate::compress::CompressError> {
        Ok(match self {
            Replacement::Masked(mask) => {
                let mut w = parent.clone();
                mask.apply(&mut w)?;
                w
            }
            Replacement::Sparse { weight, .. } => weight.clone(),
            Replacement::Quantized(q) => q.dequantize(),
            Replacement::Int8(q) => q.dequantize(),
        })
    }
}

/// Zeros per matrix and their spread over rows, from the weights as written.
pub fn sparsity_record(name: &str, w: &Matrix) -> serde_json::Value {
    let (rows, cols) = w.shape();
    let per_row: Vec<usize> = (0..rows)
        .map(|r| w.row(r).iter().filter(|x| **x == 0.0).count())
        .collect();
    let zeros: usize = per_row.iter().sum();
    json!({
        "name": name,
        "rows": rows,
        "cols": cols,
        "numel": rows * cols,
        "zeros": zeros,
        "sparsity": zeros as f64 / (rows * cols).max(1) as f64,
        "row_zeros": {
            "min": per_row.iter().copied().min().unwrap_or(0),
            "max": per_row.iter().copied().max().unwrap_or(0),
        },
    })
}

/// The tensor of `w`, on the device and in the dtype of `like`.
pub fn tensor_like(w: &Matrix, like: &Tensor) -> Result<Tensor, super::StageError> {
    Ok(w.to_tensor(like.device())
        .map_err(|e| super::StageError::Invalid(e.to_string()))?
        .to_dtype(like.dtype())?)
}
