//! N:M semi-structured masks: in every group of `m` consecutive input columns of each row, the
//! `n` lowest scores are pruned.
//!
//! Ties: the reference uses `torch.topk(largest=False)`, whose order among equal scores is
//! unspecified. Here equal scores are broken by the lower column index first (a stable sort of the
//! group), so the mask is deterministic.

use rayon::prelude::*;

use super::{CompressError, Mask, Matrix, Result};

/// Checks an N:M pattern against the input width: `0 < n < m` and `cols % m == 0`.
pub fn check_pattern(n: usize, m: usize, cols: usize) -> Result<()> {
    if n == 0 || n >= m {
        return Err(CompressError::NmPattern { n, m });
    }
    if !cols.is_multiple_of(m) {
        return Err(CompressError::NmWidth { n, m, cols });
    }
    Ok(())
}

/// The N:M mask of a score matrix (|W| for magnitude, the Wanda score for Wanda).
pub fn nm_mask(scores: &Matrix, n: usize, m: usize) -> Result<Mask> {
    check_pattern(n, m, scores.cols)?;
    let cols = scores.cols;
    let mut flags = vec![0u8; scores.rows * cols];
    flags
        .par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, pruned)| {
            let row = scores.row(r);
            for (group, out) in row.chunks_exact(m).zip(pruned.chunks_exact_mut(m)) {
                // The n lowest scores, ties to the lower column: an entry's rank is the number
                // of entries ordered before it (where a stable sort would place it).
                for (j, a) in group.iter().enumerate() {
                    let before = group
                        .iter()
                        .enumerate()
                        .filter(|&(k, b)| b.total_cmp(a).then(k.cmp(&j)).is_lt())
                        .count();
                    out[j] = u8::from(before < n);
                }
            }
        });
    Ok(Mask::from_flags(scores.rows, cols, &flags))
}

/// Whether every group of `m` columns of every row has exactly `n` pruned entries.
pub fn follows_pattern(mask: &Mask, n: usize, m: usize) -> bool {
    mask.cols().is_multiple_of(m)
        && (0..mask.rows()).all(|r| {
            (0..mask.cols())
                .step_by(m)
                .all(|g| (g..g + m).filter(|&c| mask.is_pruned(r, c)).count() == n)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_four_with_ties_takes_lower_index() {
        let s = Matrix::new(
            2,
            8,
            vec![
                4.0, 1.0, 3.0, 2.0, /* */ 5.0, 5.0, 5.0, 1.0, //
                0.5, 0.5, 0.5, 0.5, /* */ 9.0, 0.1, 8.0, 0.2,
            ],
        )
        .unwrap();
        let mask = nm_mask(&s, 2, 4).unwrap();
        let expect = [
            [false, true, false, true, true, false, false, true],
            [true, true, false, false, false, true, false, true],
        ];
        for (r, row) in expect.iter().enumerate() {
            for (c, &p) in row.iter().enumerate() {
                assert_eq!(mask.is_pruned(r, c), p, "({r}, {c})");
            }
        }
        assert!(follows_pattern(&mask, 2, 4));
    }

    #[test]
    fn rejects_bad_patterns() {
        let s = Matrix::zeros(2, 6);
        assert!(matches!(
            nm_mask(&s, 2, 4),
            Err(CompressError::NmWidth { cols: 6, .. })
        ));
        assert!(matches!(
            nm_mask(&s, 0, 2),
            Err(CompressError::NmPattern { .. })
        ));
        assert!(matches!(
            nm_mask(&s, 3, 3),
            Err(CompressError::NmPattern { .. })
        ));
    }
}
