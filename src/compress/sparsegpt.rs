//! SparseGPT: pruning with second-order error compensation (`fasterprune` of the reference).
//!
//! Given `H = 2/n · Σ XᵀX` over the calibration tokens: dead inputs get `H_ii = 1` and their
//! weight column zeroed; `H` is damped and `U` = upper Cholesky factor of `H⁻¹` is formed (see
//! the `hessian` module). Columns are processed in blocks (128): the unstructured mask of a
//! block scores `w² / U_ii²` over the whole `rows × block` slice at the block's start and prunes
//! `score <= sorted[int(numel_block · s)]` (ties included, like magnitude); N:M masks are chosen
//! every M columns per row from the current, already updated weights. For each column:
//! `q` = w with pruned entries zeroed, `err = (w − q)/U_ii`, the rest of the block is updated by
//! `W[:, i:] −= err ⊗ U[i, i:]`, and after the block `W[:, end:] −= Err · U[block, end:]`.
//!
//! Once a block's mask is fixed, rows never interact, so each block runs row-parallel.

use rayon::prelude::*;

use super::hessian::{prepare, HessianOpts, Prepared};
use super::{nm, prune_count, CompressError, Mask, Matrix, Result};

/// Which weights a pruning kernel removes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// This fraction of each block (SparseGPT) or layer.
    Unstructured(f64),
    /// `n` of every `m` consecutive input columns per row.
    NM { n: usize, m: usize },
}

/// The pruned and updated weight, its mask, and the reference's loss
/// (`Σ (w − q)² / U_ii² / 2`).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseGptOutput {
    pub weight: Matrix,
    pub mask: Mask,
    pub loss: f64,
}

/// SparseGPT on one linear layer: `w` is `rows × cols`, `h` the `cols × cols` Hessian.
///
/// Unstructured sparsity 0 returns `w` untouched, as the reference skips pruning at 0.
pub fn sparsegpt(
    w: &Matrix,
    h: &Matrix,
    pattern: Pattern,
    opts: &HessianOpts,
) -> Result<SparseGptOutput> {
    if let Some(done) = untouched(w, pattern, opts)? {
        return Ok(done);
    }
    let hinv = prepare(h, w.cols, opts, None)?;
    let mut weight = w.clone();
    for &c in &hinv.dead {
        for r in 0..weight.rows {
            weight.data[r * weight.cols + c] = 0.0;
        }
    }
    let mut mask = Mask::new(w.rows, w.cols);
    let mut loss = 0.0;
    let cols = w.cols;
    for i1 in (0..cols).step_by(opts.blocksize) {
        let i2 = (i1 + opts.blocksize).min(cols);
        let block_mask = match pattern {
            Pattern::Unstructured(s) => Some(unstructured_block_mask(&weight, &hinv, i1, i2, s)?),
            Pattern::NM { .. } => None,
        };
        let count = i2 - i1;
        let rows: Vec<(f64, Vec<bool>)> = weight
            .data
            .par_chunks_mut(cols)
            .enumerate()
            .map(|(r, row)| {
                let start = block_mask
                    .as_ref()
                    .map(|m| m[r * count..(r + 1) * count].to_vec());
                prune_row_block(row, &hinv, i1, i2, start, pattern)
            })
            .collect();
        for (r, (l, pruned)) in rows.into_iter().enumerate() {
            loss += l;
            for (j, p) in pruned.into_iter().enumerate() {
                if p {
                    mask.set(r, i1 + j, true);
                }
            }
        }
    }
    Ok(SparseGptOutput {
        weight,
        mask,
        loss: loss / 2.0,
    })
}

/// Checks the inputs; at unstructured sparsity 0 the result, `w` untouched (the reference skips
/// pruning there).
pub(crate) fn untouched(
    w: &Matrix,
    pattern: Pattern,
    opts: &HessianOpts,
) -> Result<Option<SparseGptOutput>> {
    w.check_finite()?;
    match pattern {
        Pattern::Unstructured(s) => {
            prune_count(w.numel(), s)?;
            if s == 0.0 {
                return Ok(Some(SparseGptOutput {
                    weight: w.clone(),
                    mask: Mask::new(w.rows, w.cols),
                    loss: 0.0,
                }));
            }
        }
        Pattern::NM { n, m } => {
            nm::check_pattern(n, m, w.cols)?;
            // The reference starts N:M groups at in-block offsets i % m == 0.
            if !opts.blocksize.is_multiple_of(m) {
                return Err(CompressError::BlockNm {
                    blocksize: opts.blocksize,
                    m,
                });
            }
        }
    }
    Ok(None)
}

/// The block's unstructured mask (row-major `rows × count`): `w²/U_ii² <= sorted[int(numel·s)]`.
fn unstructured_block_mask(
    w: &Matrix,
    hinv: &Prepared,
    i1: usize,
    i2: usize,
    s: f64,
) -> Result<Vec<bool>> {
    let scores: Vec<f32> = (0..w.rows)
        .flat_map(|r| (i1..i2).map(move |c| (r, c)))
        .map(|(r, c)| {
            let (v, d) = (w.get(r, c), hinv.at(c, c));
            v * v / (d * d)
        })
        .collect();
    let k = prune_count(scores.len(), s)?;
    let mut sorted = scores.clone();
    let (_, t, _) = sorted.select_nth_unstable_by(k, f32::total_cmp);
    let t = *t;
    Ok(scores.iter().map(|&v| v <= t).collect())
}

/// Runs one row through one block: returns its loss and which block columns were pruned.
fn prune_row_block(
    row: &mut [f32],
    hinv: &Prepared,
    i1: usize,
    i2: usize,
    start_mask: Option<Vec<bool>>,
    pattern: Pattern,
) -> (f64, Vec<bool>) {
    let count = i2 - i1;
    let mut w1 = row[i1..i2].to_vec();
    let mut pruned = start_mask.unwrap_or_else(|| vec![false; count]);
    let mut errs = vec![0f32; count];
    let mut loss = 0f64;
    for i in 0..count {
        if let Pattern::NM { n, m } = pattern {
            if i % m == 0 {
                let score = |t: usize| {
                    let d = hinv.at(i1 + t, i1 + t);
                    w1[t] * w1[t] / (d * d)
                };
                let mut idx: Vec<usize> = (i..i + m).collect();
                idx.sort_by(|&a, &b| score(a).total_cmp(&score(b))); // ties: lower column
                for &t in &idx[..n] {
                    pruned[t] = true;
                }
            }
        }
        let w = w1[i];
        let d = hinv.at(i1 + i, i1 + i);
        let q = if pruned[i] { 0.0 } else { w };
        loss += f64::from((w - q) * (w - q) / (d * d));
        let err = (w - q) / d;
        if err != 0.0 {
            let h = hinv.row(i1 + i, i1 + i + 1, i2);
            for (v, hv) in w1[i + 1..].iter_mut().zip(h) {
                *v -= err * hv;
            }
        }
        row[i1 + i] = q;
        errs[i] = err;
    }
    lazy_update(row, hinv, i1, i2, &errs);
    (loss, pruned)
}

/// `W[r, end:] −= Σ_k err[k] · U[i1 + k, end:]` for one row.
pub(crate) fn lazy_update(row: &mut [f32], hinv: &Prepared, i1: usize, i2: usize, errs: &[f32]) {
    let n = hinv.n;
    for (k, &e) in errs.iter().enumerate() {
        if e != 0.0 {
            let h = hinv.row(i1 + k, i2, n);
            for (v, hv) in row[i2..].iter_mut().zip(h) {
                *v -= e * hv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_DAMP: HessianOpts = HessianOpts {
        blocksize: 128,
        percdamp: 0.0,
    };

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn two_by_two_by_hand() {
        // H = [[4,2],[2,2]]: U = [[1,-1],[0,1]]/√2, U_ii² = 1/2.
        // Scores w²/U_ii² = 2, 18, 8, 0.5; s = .25: index 1 -> 2; prune (0,0) and (1,1).
        // Row 0: err = 1/(1/√2) = √2; w[1] -= √2·(−1/√2) -> 4 (the least-squares optimum).
        // Row 1: col 0 kept with err 0; col 1 pruned.
        // Loss = (1/.5 + .25/.5)/2 = 1.25.
        let w = Matrix::new(2, 2, vec![1.0, 3.0, 2.0, 0.5]).unwrap();
        let h = Matrix::new(2, 2, vec![4.0, 2.0, 2.0, 2.0]).unwrap();
        let out = sparsegpt(&w, &h, Pattern::Unstructured(0.25), &NO_DAMP).unwrap();
        assert!(
            close(&out.weight.data, &[0.0, 4.0, 2.0, 0.0]),
            "{:?}",
            out.weight
        );
        assert_eq!(out.mask, Mask::from_fn(2, 2, |r, c| r == c));
        assert!((out.loss - 1.25).abs() < 1e-5);
    }

    /// H = I except cols 3 and 4 coupled by [[4,2],[2,2]].
    fn coupled_8() -> Matrix {
        let mut h = Matrix::zeros(8, 8);
        for i in 0..8 {
            h.data[i * 8 + i] = 1.0;
        }
        for (i, j, v) in [(3, 3, 4.0), (3, 4, 2.0), (4, 3, 2.0), (4, 4, 2.0)] {
            h.data[i * 8 + j] = v;
        }
        h
    }

    #[test]
    fn two_four_mask_follows_updated_weights() {
        // Group 0 scores 25 36 49 2 -> prune cols 3, 0. Pruning col 3 (err √2) moves col 4 by
        // +1 to 2.2, so group 1 scores become 9.68 1.21 4 81 -> prune cols 5, 6. On the original
        // weights (1.2 -> 2.88) it would have pruned cols 5, 4 instead.
        let w = Matrix::new(1, 8, vec![5.0, 6.0, 7.0, 1.0, 1.2, 1.1, 2.0, 9.0]).unwrap();
        let want = [0.0, 6.0, 7.0, 0.0, 2.2, 0.0, 0.0, 9.0];
        for blocksize in [128, 4] {
            let opts = HessianOpts {
                blocksize,
                percdamp: 0.0,
            };
            let out = sparsegpt(&w, &coupled_8(), Pattern::NM { n: 2, m: 4 }, &opts).unwrap();
            assert!(
                close(&out.weight.data, &want),
                "{blocksize}: {:?}",
                out.weight
            );
            let pruned: Vec<usize> = (0..8).filter(|&c| out.mask.is_pruned(0, c)).collect();
            assert_eq!(pruned, vec![0, 3, 5, 6]);
            assert!((out.loss - (25.0 + 2.0 + 1.21 + 4.0) / 2.0).abs() < 1e-4);
        }
    }

    #[test]
    fn dead_inputs_are_zeroed_and_zero_sparsity_is_a_no_op() {
        let w = Matrix::new(1, 4, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let mut h = Matrix::zeros(4, 4);
        for i in 0..3 {
            h.data[i * 4 + i] = 1.0;
        }
        let out = sparsegpt(&w, &h, Pattern::Unstructured(0.25), &NO_DAMP).unwrap();
        // Col 3 dead -> 0 (score 0); index int(4·.25) = 1 of 0 1 4 9 -> 1: cols 3 and 0 go.
        assert_eq!(out.weight.data, vec![0.0, 2.0, 3.0, 0.0]);
        let same = sparsegpt(&w, &h, Pattern::Unstructured(0.0), &NO_DAMP).unwrap();
        assert_eq!(same.weight, w);
        assert_eq!(same.mask.count(), 0);
    }

    #[test]
    fn rejects_block_not_multiple_of_m() {
        let w = Matrix::zeros(1, 8);
        let h = coupled_8();
        let opts = HessianOpts {
            blocksize: 6,
            percdamp: 0.01,
        };
        assert!(matches!(
            sparsegpt(&w, &h, Pattern::NM { n: 2, m: 4 }, &opts),
            Err(CompressError::BlockNm { .. })
        ));
        assert!(matches!(
            sparsegpt(
                &w,
                &Matrix::zeros(4, 4),
                Pattern::NM { n: 2, m: 4 },
                &HessianOpts::default()
            ),
            Err(CompressError::Shape { .. })
        ));
    }
}
