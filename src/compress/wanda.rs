//! Wanda: score = |W| · sqrt(scaler) broadcast along rows, pruned per output row.
//!
//! `scaler[j]` is the calibration statistic of input feature j: the mean over calibration
//! sequences of ‖X[:, j]‖² (collected elsewhere). Each output row is its own comparison group:
//! the reference stable-sorts the row's scores (`torch.sort(stable=True)`: ties keep the lower
//! column first) and prunes the first `int(cols · s)`, so every row loses exactly that many.
//! No weight update.

use std::cmp::Ordering;

use rayon::prelude::*;

use super::{nm, prune_count, CompressError, Mask, Matrix, Result};

/// The Wanda score matrix `|W[r, j]| · sqrt(scaler[j])`, in `f32` like the reference.
pub fn wanda_score(w: &Matrix, scaler: &[f32]) -> Result<Matrix> {
    check_scaler(scaler, w.cols)?;
    let root: Vec<f32> = scaler.iter().map(|s| s.sqrt()).collect();
    let mut out = w.abs();
    out.data
        .par_chunks_mut(w.cols.max(1))
        .for_each(|row| row.iter_mut().zip(&root).for_each(|(v, r)| *v *= r));
    Ok(out)
}

/// Unstructured Wanda: in each row, prune the `int(cols · s)` lowest scores.
pub fn wanda(w: &Matrix, scaler: &[f32], s: f64) -> Result<Mask> {
    let score = wanda_score(w, scaler)?;
    row_lowest(&score, prune_count(w.cols, s)?)
}

/// Wanda N:M: the N:M mask of the Wanda score (see [`nm::nm_mask`] for ties).
pub fn wanda_nm(w: &Matrix, scaler: &[f32], n: usize, m: usize) -> Result<Mask> {
    nm::check_pattern(n, m, w.cols)?;
    nm::nm_mask(&wanda_score(w, scaler)?, n, m)
}

/// Prunes the `k` lowest scores of each row, ties to the lower column: the same set as the first
/// `k` of a stable sort, found by O(cols) selection on (score, column).
pub fn row_lowest(scores: &Matrix, k: usize) -> Result<Mask> {
    let cols = scores.cols;
    let mut mask = Mask::new(scores.rows, cols);
    if k == 0 {
        return Ok(mask);
    }
    let rows: Vec<Vec<u32>> = (0..scores.rows)
        .into_par_iter()
        .map(|r| {
            let row = scores.row(r);
            let mut idx: Vec<u32> = (0..cols as u32).collect();
            let by_score = |a: &u32, b: &u32| -> Ordering {
                row[*a as usize].total_cmp(&row[*b as usize]).then(a.cmp(b))
            };
            if k < cols {
                idx.select_nth_unstable_by(k, by_score);
            }
            idx.truncate(k);
            idx
        })
        .collect();
    for (r, cs) in rows.iter().enumerate() {
        for &c in cs {
            mask.set(r, c as usize, true);
        }
    }
    Ok(mask)
}

pub(crate) fn check_scaler(scaler: &[f32], cols: usize) -> Result<()> {
    if scaler.len() != cols {
        return Err(CompressError::StatLength {
            what: "wanda scaler",
            expected: cols,
            got: scaler.len(),
        });
    }
    match scaler.iter().position(|s| !(s.is_finite() && *s >= 0.0)) {
        None => Ok(()),
        Some(index) => Err(CompressError::BadStat {
            what: "wanda scaler",
            index,
            value: f64::from(scaler[index]),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_reorders_a_row() {
        // Row 0 |W| = 1 2 3 4, sqrt(scaler) = 4 1 1 0.5 -> scores 4 2 3 2.
        // s = 0.5 prunes 2 per row: the two 2s (columns 1 and 3).
        // Row 1 |W| = 1 1 1 1 -> scores 4 1 1 0.5: columns 3 and then 1 (tie with 2, lower wins).
        let w = Matrix::new(2, 4, vec![1.0, -2.0, 3.0, 4.0, 1.0, 1.0, -1.0, 1.0]).unwrap();
        let scaler = [16.0, 1.0, 1.0, 0.25];
        let score = wanda_score(&w, &scaler).unwrap();
        assert_eq!(score.data, vec![4.0, 2.0, 3.0, 2.0, 4.0, 1.0, 1.0, 0.5]);
        let mask = wanda(&w, &scaler, 0.5).unwrap();
        let got: Vec<Vec<bool>> = (0..2)
            .map(|r| (0..4).map(|c| mask.is_pruned(r, c)).collect())
            .collect();
        assert_eq!(
            got,
            vec![
                vec![false, true, false, true],
                vec![false, true, false, true]
            ]
        );
    }

    #[test]
    fn count_per_row_truncates() {
        let w = Matrix::new(3, 7, (0..21).map(|v| v as f32).collect()).unwrap();
        let mask = wanda(&w, &[1.0; 7], 0.5).unwrap();
        assert!((0..3).all(|r| mask.row_count(r) == 3));
        // Increasing rows: the three lowest are the first three columns.
        assert!((0..3).all(|r| (0..3).all(|c| mask.is_pruned(r, c))));
    }

    #[test]
    fn rejects_bad_scaler() {
        let w = Matrix::zeros(2, 3);
        assert!(matches!(
            wanda(&w, &[1.0, 1.0], 0.5),
            Err(CompressError::StatLength { got: 2, .. })
        ));
        assert!(matches!(
            wanda(&w, &[1.0, -1.0, 1.0], 0.5),
            Err(CompressError::BadStat { index: 1, .. })
        ));
    }
}
