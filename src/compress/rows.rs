//! Structured row pruning: whole output rows (neurons), those with the smallest L1 norm.

use super::{torch_prune_count, Mask, Matrix, Result};

/// Zeros the `round(rows·s)` rows of smallest L1 norm (half to even, as torch's `ln_structured`
/// counts; ties: the lower row index first).
pub fn rows_l1(w: &Matrix, s: f64) -> Result<Mask> {
    let k = torch_prune_count(w.rows, s)?;
    let norms: Vec<f64> = (0..w.rows)
        .map(|r| w.row(r).iter().map(|x| x.abs() as f64).sum())
        .collect();
    let mut order: Vec<usize> = (0..w.rows).collect();
    // A stable sort keeps equal norms in row order.
    order.sort_by(|&a, &b| norms[a].total_cmp(&norms[b]));
    let mut mask = Mask::new(w.rows, w.cols);
    for &r in &order[..k] {
        for c in 0..w.cols {
            mask.set(r, c, true);
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_l1_rows_by_hand() {
        // L1 norms: 3, 1.5, 6, 1.5 → at s = 0.5 rows 1 and 3 go (a tie, both taken).
        let w = Matrix::new(4, 2, vec![1.0, -2.0, 0.5, 1.0, 3.0, 3.0, -1.5, 0.0]).unwrap();
        let m = rows_l1(&w, 0.5).unwrap();
        let pruned: Vec<usize> = (0..4).filter(|&r| m.row_count(r) == 2).collect();
        assert_eq!(pruned, vec![1, 3]);
        assert_eq!(m.count(), 4);
        // At s = 0.3, floor(4 · 0.3) = 1 row: the tie goes to the lower index.
        let m = rows_l1(&w, 0.3).unwrap();
        assert_eq!(m.row_count(1), 2);
        assert_eq!(m.count(), 2);
    }

    #[test]
    fn rows_count_as_torch_ln_structured() {
        // 5 rows at s = 0.3: 1.5 rounds (half to even) to 2, as torch counts; floor gave 1.
        let w = Matrix::new(5, 1, vec![5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        let m = rows_l1(&w, 0.3).unwrap();
        let pruned: Vec<usize> = (0..5).filter(|&r| m.row_count(r) == 1).collect();
        assert_eq!(pruned, vec![1, 3]);
        // 0.5 rounds to 0.
        assert_eq!(rows_l1(&w, 0.1).unwrap().count(), 0);
    }
}
