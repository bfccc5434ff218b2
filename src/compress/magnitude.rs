//! Magnitude pruning: layer-wise (one threshold per matrix), global (one cut over several
//! matrices) and N:M on |W|. The two scopes follow different reference code:
//!
//! - layer-wise is `prune_magnitude` in Wanda's code: `thresh = sort(|W|)[int(numel * s)]`, prune
//!   `|W| <= thresh`, so every weight tied with the threshold goes too: at least
//!   `floor(numel·s) + 1` weights, more with ties. At `s == 0` it does not prune at all.
//! - global is `torch.nn.utils.prune.global_unstructured` with `L1Unstructured` (the knowledge
//!   study's code): exactly `round(N·s)` weights, the smallest `|W|` over every selected matrix.

use rayon::prelude::*;

use super::{nm, prune_count, torch_prune_count, CompressError, Mask, Matrix, Result};

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

/// Where the global cut falls: every `|w|` below `threshold` is pruned, and of the weights tied
/// at it the first `ties` in selection order (matrix by matrix, row-major within one).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GlobalCut {
    pub threshold: f32,
    pub ties: usize,
}

/// The global cut over the union of all matrices: the `k = round(N·s)` smallest `|W|`, as
/// `torch.topk(|W|, k, largest=False)` over the concatenated weights (N = total numel). `None`
/// when nothing is pruned.
///
/// Exact radix selection of the value at rank `k − 1` on the bit pattern of `|w|` (monotone in
/// the value for non-negative floats; NaN ranks above infinity, as in torch's comparator): one
/// pass counts the high 16 bits, a second the low 16 bits inside the bucket holding that rank.
/// Memory is two histograms; the weights are never copied.
pub fn global_cut(ws: &[&Matrix], s: f64) -> Result<Option<GlobalCut>> {
    if ws.is_empty() {
        return Err(CompressError::NoMatrices);
    }
    let total: usize = ws.iter().map(|w| w.numel()).sum();
    let k = torch_prune_count(total, s)?;
    if k == 0 {
        return Ok(None);
    }
    let rank = k as u64 - 1;
    let high = histogram(ws, 1 << 15, |v| Some((key(v) >> 16) as usize));
    let (bucket, below_high) = rank_bucket(&high, rank);
    let low = histogram(ws, 1 << 16, |v| {
        let kv = key(v);
        (kv >> 16 == bucket as u32).then_some((kv & 0xFFFF) as usize)
    });
    let (lo, below_low) = rank_bucket(&low, rank - below_high);
    let less = below_high + below_low;
    Ok(Some(GlobalCut {
        threshold: f32::from_bits(((bucket as u32) << 16) | lo as u32),
        ties: (k as u64 - less) as usize,
    }))
}

/// Global magnitude masks, one per input matrix: exactly `round(N·s)` weights pruned in all, the
/// smallest `|w|`; ties at the cut go in selection order (see [`global_cut`]).
pub fn magnitude_global(ws: &[&Matrix], s: f64) -> Result<Vec<Mask>> {
    let Some(cut) = global_cut(ws, s)? else {
        return Ok(ws.iter().map(|w| Mask::new(w.rows, w.cols)).collect());
    };
    let t = key(cut.threshold);
    let mut ties = cut.ties;
    Ok(ws
        .iter()
        .map(|w| {
            let mut mask = Mask::from_values(w.rows, w.cols, &w.data, |v| key(v) < t);
            if ties > 0 {
                for (i, &v) in w.data.iter().enumerate() {
                    if ties == 0 {
                        break;
                    }
                    if key(v) == t {
                        mask.set_bit(i, true);
                        ties -= 1;
                    }
                }
            }
            mask
        })
        .collect())
}

/// The sort key of `|v|`: its bit pattern with the sign cleared (< 2^31).
fn key(v: f32) -> u32 {
    v.abs().to_bits()
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
    fn global_magnitude_prunes_round_amount_n() {
        let a = m(1, 4, &[0.1, 0.2, 0.3, 0.4]);
        let b = m(2, 2, &[5.0, -0.05, 6.0, 7.0]);
        // Union sorted: .05 .1 .2 .3 | .4 5 6 7; round(8·0.5) = 4 pruned. The layer-wise rule
        // (`<= sorted[4]`) would take the .4 too.
        assert_eq!(
            global_cut(&[&a, &b], 0.5).unwrap(),
            Some(GlobalCut {
                threshold: 0.3,
                ties: 1
            })
        );
        let masks = magnitude_global(&[&a, &b], 0.5).unwrap();
        assert_eq!(pruned(&masks[0]), vec![0, 1, 2]);
        assert_eq!(pruned(&masks[1]), vec![1]);
        assert!(matches!(
            magnitude_global(&[], 0.5),
            Err(CompressError::NoMatrices)
        ));
    }

    #[test]
    fn global_count_rounds_half_to_even() {
        assert_eq!(torch_prune_count(5, 0.5).unwrap(), 2); // 2.5
        assert_eq!(torch_prune_count(7, 0.5).unwrap(), 4); // 3.5
        assert_eq!(torch_prune_count(10, 0.26).unwrap(), 3); // 2.6
        assert_eq!(torch_prune_count(3, 0.9).unwrap(), 3); // 2.7: everything
        assert_eq!(torch_prune_count(8, 0.01).unwrap(), 0);
        assert!(torch_prune_count(8, 1.0).is_err());
        let w = m(1, 3, &[0.3, 0.1, 0.2]);
        assert_eq!(
            pruned(&magnitude_global(&[&w], 0.9).unwrap()[0]),
            vec![0, 1, 2]
        );
        assert_eq!(magnitude_global(&[&w], 0.1).unwrap()[0].count(), 0);
    }

    #[test]
    fn global_ties_at_the_cut_go_in_selection_order() {
        // |W|: a = 1 2 2 3, b = 2 .5; round(6·0.7) = 4: the .5, the 1, then two of the three 2s,
        // the first two met matrix by matrix (a[1], a[2]); b's 2 stays.
        let a = m(2, 2, &[1.0, -2.0, 2.0, 3.0]);
        let b = m(1, 2, &[2.0, -0.5]);
        let masks = magnitude_global(&[&a, &b], 0.7).unwrap();
        assert_eq!(pruned(&masks[0]), vec![0, 1, 2]);
        assert_eq!(pruned(&masks[1]), vec![1]);
        // The other order: b's 2 comes first, then a[1].
        let masks = magnitude_global(&[&b, &a], 0.7).unwrap();
        assert_eq!(pruned(&masks[0]), vec![0, 1]);
        assert_eq!(pruned(&masks[1]), vec![0, 1]);
        // Signed zeros are one value.
        let z = m(1, 4, &[-0.0, 0.0, 1.0, -0.0]);
        assert_eq!(
            pruned(&magnitude_global(&[&z], 0.5).unwrap()[0]),
            vec![0, 1]
        );
    }

    #[test]
    fn global_cut_resolves_low_bits() {
        // Values sharing the high 16 bits of their pattern: the second pass must separate them.
        let base = 1.0f32.to_bits();
        let vals: Vec<f32> = (0..10u32).rev().map(|i| f32::from_bits(base + i)).collect();
        let w = m(2, 5, &vals);
        let cut = global_cut(&[&w], 0.3).unwrap().unwrap();
        assert_eq!((cut.threshold.to_bits(), cut.ties), (base + 2, 1));
        assert_eq!(
            pruned(&magnitude_global(&[&w], 0.3).unwrap()[0]),
            vec![7, 8, 9]
        );
    }
}
