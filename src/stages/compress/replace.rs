//! What a compression stage does to one weight matrix, before it is stored.

use candle_core::Tensor;
use serde_json::json;

use crate::compress::dynint8::Int8Weight;
use crate::compress::{Mask, Matrix, QuantizedMatrix};
use crate::stages::Invariant;

/// A weight matrix's replacement, in the form that stores it most compactly.
#[derive(Debug, Clone)]
pub enum Replacement {
    /// The parent's values with the masked ones zeroed (magnitude, Wanda, random, rows).
    Masked(Mask),
    /// Pruned and updated (SparseGPT): the values are those of the stage's updated tensor.
    Sparse { mask: Mask },
    /// Codes with scales and zero points (RTN, GPTQ).
    Quantized(QuantizedMatrix),
    /// PyTorch dynamic int8: runs as an emulated integer product.
    Int8(Int8Weight),
}

impl Replacement {
    /// The dense matrix the model computes with (dynamic int8: `s_w·q_w`), given the input
    /// weights and, for `Sparse`, the updated ones.
    pub fn dense(
        &self,
        parent: &Matrix,
        updated: Option<&Matrix>,
    ) -> Result<Matrix, crate::stages::StageError> {
        Ok(match self {
            Replacement::Masked(mask) => {
                let mut w = parent.clone();
                mask.apply(&mut w).map_err(|e| super::kernel("mask", e))?;
                w
            }
            Replacement::Sparse { .. } => updated
                .cloned()
                .ok_or_else(|| Invariant::NoUpdate("a sparse replacement".into()))?,
            Replacement::Quantized(q) => q.dequantize(),
            Replacement::Int8(q) => q.dequantize(),
        })
    }
}

/// One matrix as a compression stage left it: zeros and the distance from its input.
#[derive(Debug, Clone)]
pub struct MatrixStats {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub zeros: usize,
    pub row_zeros_min: usize,
    pub row_zeros_max: usize,
    /// Σ (w − ŵ)² against the stage's input weights.
    pub sq_err: f64,
}

impl MatrixStats {
    pub fn of(name: &str, before: &Matrix, after: &Matrix) -> Self {
        let per_row: Vec<usize> = (0..after.rows)
            .map(|r| after.row(r).iter().filter(|x| **x == 0.0).count())
            .collect();
        MatrixStats {
            name: name.to_string(),
            rows: after.rows,
            cols: after.cols,
            zeros: per_row.iter().sum(),
            row_zeros_min: per_row.iter().copied().min().unwrap_or(0),
            row_zeros_max: per_row.iter().copied().max().unwrap_or(0),
            sq_err: before
                .data
                .iter()
                .zip(&after.data)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum(),
        }
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// The record `sparsity.json` holds for this matrix.
    pub fn sparsity_record(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "rows": self.rows,
            "cols": self.cols,
            "numel": self.numel(),
            "zeros": self.zeros,
            "sparsity": self.zeros as f64 / self.numel().max(1) as f64,
            "row_zeros": { "min": self.row_zeros_min, "max": self.row_zeros_max },
        })
    }
}

/// The tensor of `w`, on the device and in the dtype of `like`.
pub fn tensor_like(w: &Matrix, like: &Tensor) -> Result<Tensor, crate::stages::StageError> {
    Ok(w.to_tensor(like.device())
        .map_err(|e| super::kernel("tensor", e))?
        .to_dtype(like.dtype())?)
}
