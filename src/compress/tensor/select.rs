//! Exact thresholds without sorting: bisection over `f32` bit patterns, counted on the device.

use candle_core::{DType, Device, Tensor};

use crate::compress::wanda::check_scaler;
use crate::compress::{prune_count, Mask, Matrix, Result};

/// The bit pattern of `+inf`: every finite non-negative score lies at or below it, and every bit
/// pattern from 0 to it is a non-negative float in increasing order.
const INF_BITS: u32 = 0x7f80_0000;

/// Per group, the smallest `t` with more than `ranks[g]` scores `<= t`: the value at that rank of
/// the group's sorted scores. `count(ts)` says how many of each group's scores lie at or below
/// its candidate. Scores must be finite or `+inf`, and non-negative.
fn bisect(ranks: &[u64], mut count: impl FnMut(&[f32]) -> Result<Vec<u64>>) -> Result<Vec<f32>> {
    let mut lo = vec![0u32; ranks.len()];
    let mut hi = vec![INF_BITS; ranks.len()];
    while lo.iter().zip(&hi).any(|(l, h)| l < h) {
        let mid: Vec<u32> = lo.iter().zip(&hi).map(|(&l, &h)| l + (h - l) / 2).collect();
        let ts: Vec<f32> = mid.iter().map(|&b| f32::from_bits(b)).collect();
        let counts = count(&ts)?;
        for (g, &c) in counts.iter().enumerate() {
            if lo[g] < hi[g] {
                if c > ranks[g] {
                    hi[g] = mid[g];
                } else {
                    lo[g] = mid[g] + 1;
                }
            }
        }
    }
    Ok(lo.into_iter().map(f32::from_bits).collect())
}

/// How many entries of each row of `scores` are `<=` that row's entry of `ts` (one value for
/// every row when `ts` has one).
fn row_counts_le(scores: &Tensor, ts: &[f32]) -> Result<Vec<u64>> {
    let t = Tensor::from_slice(ts, (ts.len(), 1), scores.device())?;
    let counts = scores
        .broadcast_le(&t)?
        .to_dtype(DType::U32)?
        .sum(1)?
        .to_vec1::<u32>()?;
    Ok(counts.into_iter().map(u64::from).collect())
}

/// The value at rank `rank` of all of `scores` (rows × cols).
pub(super) fn rank_value(scores: &Tensor, rank: usize) -> Result<f32> {
    let t = bisect(&[rank as u64], |ts| {
        Ok(vec![row_counts_le(scores, ts)?.iter().sum()])
    })?;
    Ok(t[0])
}

/// `scores <= t` as `u8` flags.
pub(super) fn at_or_below(scores: &Tensor, t: f32) -> Result<Tensor> {
    Ok(scores.le(f64::from(t))?)
}

/// A mask from `u8` flags (rows × cols, 1 = pruned).
pub(super) fn mask_of(flags: &Tensor) -> Result<Mask> {
    let (rows, cols) = flags.dims2()?;
    let bytes = flags.flatten_all()?.to_vec1::<u8>()?;
    Ok(Mask::from_flags(rows, cols, &bytes))
}

/// Layer-wise magnitude: prune `|w| <= sorted(|W|)[int(numel·s)]`, ties included.
pub(super) fn magnitude(w: &Matrix, s: f64, device: &Device) -> Result<Mask> {
    let k = prune_count(w.numel(), s)?;
    if s == 0.0 || w.numel() == 0 {
        return Ok(Mask::new(w.rows, w.cols));
    }
    w.check_finite()?;
    let a = w.to_tensor(device)?.abs()?;
    mask_of(&at_or_below(&a, rank_value(&a, k)?)?)
}

/// The Wanda score `|W| · sqrt(scaler)` on the device, the same `f32` operations as the host's.
pub(super) fn wanda_score(w: &Matrix, scaler: &[f32], device: &Device) -> Result<Tensor> {
    check_scaler(scaler, w.cols)?;
    w.check_finite()?;
    let root = Tensor::from_slice(scaler, (1, w.cols), device)?.sqrt()?;
    Ok(w.to_tensor(device)?.abs()?.broadcast_mul(&root)?)
}

/// Unstructured Wanda: the `int(cols·s)` lowest scores of each row.
pub(super) fn wanda(w: &Matrix, scaler: &[f32], s: f64, device: &Device) -> Result<Mask> {
    let score = wanda_score(w, scaler, device)?;
    row_lowest(&score, prune_count(w.cols, s)?)
}

/// The `k` lowest scores of each row, ties to the lower column (the first `k` of a stable sort).
pub(super) fn row_lowest(scores: &Tensor, k: usize) -> Result<Mask> {
    let (rows, cols) = scores.dims2()?;
    if k == 0 || rows == 0 {
        return Ok(Mask::new(rows, cols));
    }
    let ts = bisect(&vec![k as u64 - 1; rows], |ts| row_counts_le(scores, ts))?;
    let t = Tensor::from_slice(&ts, (rows, 1), scores.device())?;
    let mut flags = scores.broadcast_le(&t)?.flatten_all()?.to_vec1::<u8>()?;
    // A row with more than k scores at or below its cut has a run of ties there: keep the
    // lower columns of the run. Rare with real-valued scores, so settled one row at a time.
    for r in 0..rows {
        let row = &mut flags[r * cols..(r + 1) * cols];
        if row.iter().map(|&f| usize::from(f)).sum::<usize>() <= k {
            continue;
        }
        let values = scores.get(r)?.to_vec1::<f32>()?;
        let mut ties = k - values.iter().filter(|&&v| v < ts[r]).count();
        for (f, &v) in row.iter_mut().zip(&values) {
            let take = v < ts[r] || (v == ts[r] && ties > 0);
            if v == ts[r] && take {
                ties -= 1;
            }
            *f = u8::from(take);
        }
    }
    Ok(Mask::from_flags(rows, cols, &flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisection_finds_exact_ranks_including_subnormals_and_zero() {
        let values = [3.5f32, 0.0, 1e-40, 2.0, 2.0, f32::MAX, 7.25];
        let t = Tensor::from_slice(&values, (1, values.len()), &Device::Cpu).unwrap();
        let mut sorted = values.to_vec();
        sorted.sort_by(f32::total_cmp);
        for (rank, want) in sorted.iter().enumerate() {
            assert_eq!(rank_value(&t, rank).unwrap(), *want, "rank {rank}");
        }
    }

    #[test]
    fn row_lowest_breaks_ties_to_the_lower_column() {
        // Row 0: 1 2 2 2 0, k = 3 -> 0 and 1, then the first 2 (column 1).
        let s = Tensor::from_slice(
            &[1.0f32, 2.0, 2.0, 2.0, 0.0, 5.0, 4.0, 3.0, 2.0, 1.0],
            (2, 5),
            &Device::Cpu,
        )
        .unwrap();
        let m = row_lowest(&s, 3).unwrap();
        let got: Vec<Vec<bool>> = (0..2)
            .map(|r| (0..5).map(|c| m.is_pruned(r, c)).collect())
            .collect();
        assert_eq!(
            got,
            vec![
                vec![true, true, false, false, true],
                vec![false, false, true, true, true]
            ]
        );
    }
}
