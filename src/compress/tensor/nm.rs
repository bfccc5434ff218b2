//! N:M masks on the device: each score ranked inside its group of `m` by comparisons.

use candle_core::{DType, Device, Tensor};

use super::select::{mask_of, wanda_score};
use crate::compress::{nm::check_pattern, Mask, Matrix, Result};

/// Comparison temporaries are `m` times the scores (`u32`): rows go in chunks of about this many
/// bytes of them.
const CHUNK_BYTES: usize = 256 << 20;

/// `u8` flags (rows × cols): the `n` lowest of every `m` consecutive scores of each row, ties to
/// the lower column (the first `n` of a stable sort of the group, as on the host).
pub(super) fn nm_flags(scores: &Tensor, n: usize, m: usize) -> Result<Tensor> {
    let (rows, cols) = scores.dims2()?;
    check_pattern(n, m, cols)?;
    let device = scores.device();
    if rows == 0 {
        return Ok(Tensor::zeros((0, cols), DType::U8, device)?);
    }
    // lower[i][j] = 1 where j < i: an equal score in an earlier column ranks first.
    let lower: Vec<u32> = (0..m * m).map(|k| u32::from(k % m < k / m)).collect();
    let lower = Tensor::from_vec(lower, (m, m), device)?;
    let step = (CHUNK_BYTES / (cols * m * 4).max(1)).max(1);
    let mut parts = Vec::with_capacity(rows.div_ceil(step));
    for r0 in (0..rows).step_by(step) {
        let r = step.min(rows - r0);
        let g = scores.narrow(0, r0, r)?.reshape((r, cols / m, m))?;
        let (mine, other) = (g.unsqueeze(3)?, g.unsqueeze(2)?);
        let less = other.broadcast_lt(&mine)?.to_dtype(DType::U32)?;
        let tied = other.broadcast_eq(&mine)?.to_dtype(DType::U32)?;
        let rank = (less + tied.broadcast_mul(&lower)?)?.sum(3)?;
        parts.push(rank.lt(n as f64)?.reshape((r, cols))?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Magnitude N:M: the N:M mask of `|W|`.
pub(super) fn magnitude_nm(w: &Matrix, n: usize, m: usize, device: &Device) -> Result<Mask> {
    check_pattern(n, m, w.cols)?;
    w.check_finite()?;
    mask_of(&nm_flags(&w.to_tensor(device)?.abs()?, n, m)?)
}

/// Wanda N:M: the N:M mask of the Wanda score.
pub(super) fn wanda_nm(
    w: &Matrix,
    scaler: &[f32],
    n: usize,
    m: usize,
    device: &Device,
) -> Result<Mask> {
    check_pattern(n, m, w.cols)?;
    mask_of(&nm_flags(&wanda_score(w, scaler, device)?, n, m)?)
}
