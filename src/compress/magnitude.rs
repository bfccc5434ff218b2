//! Magnitude pruning: layer-wise (one threshold per matrix), global (one threshold over several
//! matrices) and N:M on |W|.
//!
//! The reference (`prune_magnitude` in Wanda's code) takes `thresh = sort(|W|)[int(numel * s)]`
//! and prunes `|W| <= thresh`, so every weight tied with the threshold goes too: at least
//! `floor(numel·s) + 1` weights are pruned, more with ties. At `s == 0` it does not prune at all.

use rayon::prelude::*;

use super::{nm, prune_count, CompressError, Mask, Matrix, Result};

/// The layer-wise threshold: the value at index `floor(numel·s)` of the sorted `|W|`, found by
/// O(n) selection. `None` when nothing is pruned (`s == 0` or an empty matrix).
pub fn magnitude_threshold(w: &Matrix, s: f64) -> Result<Option<f32>> {
    let k = prune_count(w.numel(), s)?;
    if s == 0.0 || w.numel() == 0 {
        return Ok(None);
    }
    let mut mags: Vec<f32> = w.data.iter().map(|v| v.abs()).collect();
    // total_cmp sorts NaN last, as torch.sort does; no panic on bad weights.
    let (_, t, _) = mags.select_nth_unstable_by(k, f32::total_cmp);
    Ok(Some(*t))
}

/// Layer-wise magnitude mask: prune every `|w| <= threshold` (see [`magnitude_threshold`]).
pub fn magnitude(w: &Matrix, s: f64) -> Result<Mask> {
    Ok(match magnitude_threshold(w, s)? {
        None => Mask::new(w.rows, w.cols),
        Some(t) => mask_at_or_below(w, t),
    })
}

/// Magnitude N:M: in every group of `m` consecutive input columns of each row, prune the `n`
/// smallest `|w|` (ties: lower column first, see [`nm::nm_mask`]).
pub fn magnitude_nm(w: &Matrix, n: usize, m: usize) -> Result<Mask> {
    nm::nm_mask(&w.abs(), n, m)
}

/// The global threshold: the value at index `floor(N·s)` of the sorted `|W|` over the union of
/// all matrices (N = total numel). `None` when nothing is pruned.
///
/// Exact radix selection on the bit pattern of `|w|` (monotone in the value for non-negative
/// floats): one pass counts the high 16 bits, a second counts the low 16 bits inside the bucket
/// holding rank `k`. Memory is two histograms; the weights are never copied.
pub fn global_threshold(ws: &[&Matrix], s: f64) -> Result<Option<f32>> {
    if ws.is_empty() {
        return Err(CompressError::NoMatrices);
    }
    let total: usize = ws.iter().map(|w| w.numel()).sum();
    let k = prune_count(total, s)?;
    if s == 0.0 || total == 0 {
        return Ok(None);
    }
    let key = |v: f32| v.abs().to_bits(); // sign bit cleared: < 2^31
    let high = histogram(ws, 1 << 15, |v| Some((key(v) >> 16) as usize));
    let (bucket, below) = rank_bucket(&high, k as u64);
    let low = histogram(ws, 1 << 16, |v| {
        let kv = key(v);
        (kv >> 16 == bucket as u32).then_some((kv & 0xFFFF) as usize)
    });
    let (lo, _) = rank_bucket(&low, k as u64 - below);
    Ok(Some(f32::from_bits(((bucket as u32) << 16) | lo as u32)))
}

/// Global magnitude masks, one per input matrix, all cut at [`global_threshold`].
pub fn magnitude_global(ws: &[&Matrix], s: f64) -> Result<Vec<Mask>> {
    Ok(match global_threshold(ws, s)? {
        None => ws.iter().map(|w| Mask::new(w.rows, w.cols)).collect(),
        Some(t) => ws.iter().map(|w| mask_at_or_below(w, t)).collect(),
    })
}

/// `|w| <= t` with IEEE comparison, like torch's `W_metric <= thresh` (NaN is never pruned).
fn mask_at_or_below(w: &Matrix, t: f32) -> Mask {
    Mask::from_values(w.rows, w.cols, &w.data, |v| v.abs() <= t)
}

/// Counts `bucket_of(v)` over every value of every matrix, in parallel chunks.
fn histogram(
    ws: &[&Matrix],
    buckets: usize,
    bucket_of: impl Fn(f32) -> Option<usize> + Sync,
) -> Vec<u64> {
    let add = |mut a: Vec<u64>, b: Vec<u64>| {
        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        a
    };
    ws.iter()
        .map(|w| {
            w.data
                .par_chunks(1 << 18)
                .fold(
                    || vec![0u64; buckets],
                    |mut h, chunk| {
                        for &v in chunk {
                            if let Some(b) = bucket_of(v) {
                                h[b] += 1;
                            }
                        }
                        h
                    },
                )
                .reduce(|| vec![0u64; buckets], add)
        })
        .fold(vec![0u64; buckets], add)
}

/// The bucket holding the element of rank `k` (0-based) and the count of all earlier buckets.
fn rank_bucket(hist: &[u64], k: u64) -> (usize, u64) {
    let mut below = 0;
    for (b, &c) in hist.iter().enumerate() {
        if below + c > k {
            return (b, below);
        }
        below += c;
    }
    unreachable!("rank {k} is below the histogram total {below}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, cols: usize, data: &[f32]) -> Matrix {
        Matrix::new(rows, cols, data.to_vec()).unwrap()
    }

    fn pruned(mask: &Mask) -> Vec<usize> {
        (0..mask.rows() * mask.cols())
            .filter(|&i| mask.is_pruned(i / mask.cols(), i % mask.cols()))
            .collect()
    }

    #[test]
    fn layerwise_prunes_ties_at_threshold() {
        // |W| sorted: 0.1 0.2 0.2 0.2 0.3 0.4 0.5 0.9. s=0.25: index 2 -> 0.2, and all three
        // 0.2s go with 0.1: 4 pruned, not 2.
        let w = m(2, 4, &[0.5, -0.2, 0.1, 0.9, 0.2, -0.4, -0.2, 0.3]);
        assert_eq!(magnitude_threshold(&w, 0.25).unwrap(), Some(0.2));
        assert_eq!(pruned(&magnitude(&w, 0.25).unwrap()), vec![1, 2, 4, 6]);
        // s=0.5: index 4 -> 0.3; prune 0.1, 0.2 x3, 0.3.
        assert_eq!(pruned(&magnitude(&w, 0.5).unwrap()), vec![1, 2, 4, 6, 7]);
    }

    #[test]
    fn zero_sparsity_prunes_nothing_even_with_zeros() {
        let w = m(1, 4, &[0.0, 0.0, 1.0, 2.0]);
        assert_eq!(magnitude(&w, 0.0).unwrap().count(), 0);
        // Tiny s: index 0 is 0.0 and both zeros are pruned (the reference's <=).
        assert_eq!(pruned(&magnitude(&w, 0.01).unwrap()), vec![0, 1]);
    }

    #[test]
    fn global_threshold_spans_matrices() {
        let a = m(1, 4, &[0.1, 0.2, 0.3, 0.4]);
        let b = m(2, 2, &[5.0, -0.05, 6.0, 7.0]);
        // Union sorted: .05 .1 .2 .3 .4 5 6 7; index floor(8*0.5)=4 -> 0.4.
        assert_eq!(global_threshold(&[&a, &b], 0.5).unwrap(), Some(0.4));
        let masks = magnitude_global(&[&a, &b], 0.5).unwrap();
        assert_eq!(pruned(&masks[0]), vec![0, 1, 2, 3]);
        assert_eq!(pruned(&masks[1]), vec![1]);
        assert!(matches!(
            magnitude_global(&[], 0.5),
            Err(CompressError::NoMatrices)
        ));
    }

    #[test]
    fn global_threshold_resolves_low_bits() {
        // Values sharing the high 16 bits of their pattern: the second pass must separate them.
        let base = 1.0f32.to_bits();
        let vals: Vec<f32> = (0..10u32).rev().map(|i| f32::from_bits(base + i)).collect();
        let w = m(2, 5, &vals);
        let t = global_threshold(&[&w], 0.3).unwrap().unwrap();
        assert_eq!(t.to_bits(), base + 3);
        assert_eq!(magnitude_threshold(&w, 0.3).unwrap(), Some(t));
    }
}
