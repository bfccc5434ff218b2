//! GPTQ: column-by-column quantization with the error propagated to the columns not yet
//! quantized (`fasterquant` of the reference).
//!
//! Same Hessian handling as SparseGPT (dead inputs, damping, upper Cholesky factor `U` of `H⁻¹`,
//! blocks of 128 with lazy updates). Each column is rounded with the [`rtn`](super::rtn)
//! quantizer, `err = (w − q)/U_ii` and `W[:, i:] −= err ⊗ U[i, i:]`. Faithful details:
//! - per-channel parameters come from the original weight, before dead columns are zeroed;
//! - with groups, parameters are found when column `c % g == 0` is reached, from `W[:, c:c+g]`
//!   as it stood at the start of the current block (the reference reads `W`, not the block copy);
//! - act-order sorts columns by descending `diag H` (after the dead fix); ties keep the lower
//!   column first (the reference's `argsort` leaves that order unspecified); groups are formed in
//!   that order, so [`QuantizedMatrix::group_index`] records each column's group.
//!
//! Rows never interact, so every row runs through all blocks in parallel.

use rayon::prelude::*;

use super::hessian::{prepare, HessianOpts, Prepared};
use super::rtn::{Grouping, QuantConfig, QuantParams, QuantizedMatrix};
use super::sparsegpt::lazy_update;
use super::{Matrix, Result};

/// GPTQ options: the quantizer, act-order, and the Hessian handling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    pub quant: QuantConfig,
    pub act_order: bool,
    pub hessian: HessianOpts,
}

/// The quantized weight and the reference's loss (`Σ (w − q)² / U_ii² / 2`).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqOutput {
    pub quantized: QuantizedMatrix,
    pub loss: f64,
}

/// GPTQ on one linear layer: `w` is `rows × cols`, `h` the `cols × cols` Hessian.
pub fn gptq(w: &Matrix, h: &Matrix, cfg: &GptqConfig) -> Result<GptqOutput> {
    let q = &cfg.quant;
    q.validate()?;
    w.check_finite()?;
    let (rows, cols) = w.shape();
    h.expect_shape("hessian", cols, cols)?;
    let maxq = q.maxq();
    let per_row: Option<Vec<QuantParams>> = (q.grouping == Grouping::PerChannel).then(|| {
        (0..rows)
            .map(|r| QuantParams::find(w.row(r).iter().copied(), maxq, q.sym))
            .collect()
    });
    let perm = cfg.act_order.then(|| act_order(h));
    let hinv = prepare(h, cols, &cfg.hessian, perm.as_deref())?;
    // Working copy in processing order, dead columns zeroed.
    let mut work = Matrix::zeros(rows, cols);
    for r in 0..rows {
        for p in 0..cols {
            let c = perm.as_ref().map_or(p, |pm| pm[p]);
            work.data[r * cols + p] = if hinv.dead.contains(&c) {
                0.0
            } else {
                w.get(r, c)
            };
        }
    }
    let g = q.group_size(cols);
    let results: Vec<RowResult> = work
        .data
        .par_chunks_mut(cols.max(1))
        .enumerate()
        .map(|(r, row)| {
            let fixed = per_row.as_ref().map(|p| p[r]);
            quantize_row(row, &hinv, cfg, fixed, g)
        })
        .collect();
    let n_groups = if per_row.is_some() {
        1
    } else {
        cols.div_ceil(g)
    };
    let mut out = QuantizedMatrix {
        rows,
        cols,
        bits: q.bits,
        sym: q.sym,
        group_size: g,
        codes: vec![0; rows * cols],
        scales: Vec::with_capacity(rows * n_groups),
        zeros: Vec::with_capacity(rows * n_groups),
        group_index: group_index(perm.as_deref(), per_row.is_some(), g),
    };
    let mut loss = 0.0;
    for (r, res) in results.into_iter().enumerate() {
        loss += res.loss;
        for (p, code) in res.codes.into_iter().enumerate() {
            let c = perm.as_ref().map_or(p, |pm| pm[p]);
            out.codes[r * cols + c] = code;
        }
        for prm in res.params {
            out.scales.push(prm.scale);
            out.zeros.push(prm.zero as u8);
        }
    }
    Ok(GptqOutput {
        quantized: out,
        loss: loss / 2.0,
    })
}

/// Act-order: columns by descending `diag H`, dead inputs counting as 1 (as after the
/// reference's fix); ties keep the lower column first. `perm[p]` is the column at position p.
pub(crate) fn act_order(h: &Matrix) -> Vec<usize> {
    let diag = |i: usize| match h.get(i, i) {
        0.0 => 1.0,
        v => v,
    };
    let mut p: Vec<usize> = (0..h.cols).collect();
    p.sort_by(|&a, &b| diag(b).total_cmp(&diag(a)));
    p
}

/// Each column's group when groups are formed in act-order (`None` otherwise).
pub(crate) fn group_index(perm: Option<&[usize]>, per_channel: bool, g: usize) -> Option<Vec<u32>> {
    let p = perm.filter(|_| !per_channel)?;
    let mut gi = vec![0u32; p.len()];
    for (pos, &c) in p.iter().enumerate() {
        gi[c] = (pos / g) as u32;
    }
    Some(gi)
}

struct RowResult {
    codes: Vec<u8>,
    params: Vec<QuantParams>,
    loss: f64,
}

/// One row through every block, in processing order.
fn quantize_row(
    row: &mut [f32],
    hinv: &Prepared,
    cfg: &GptqConfig,
    fixed: Option<QuantParams>,
    g: usize,
) -> RowResult {
    let cols = row.len();
    let maxq = cfg.quant.maxq();
    let mut codes = vec![0u8; cols];
    let mut params: Vec<QuantParams> = fixed.into_iter().collect();
    let mut current = fixed;
    let mut loss = 0f64;
    let bs = cfg.hessian.blocksize;
    for i1 in (0..cols).step_by(bs) {
        let i2 = (i1 + bs).min(cols);
        let count = i2 - i1;
        let mut w1 = row[i1..i2].to_vec();
        let mut errs = vec![0f32; count];
        for i in 0..count {
            let c = i1 + i;
            if fixed.is_none() && c % g == 0 {
                // `row` still holds the block-start values for this block's columns.
                let p = QuantParams::find(
                    row[c..(c + g).min(cols)].iter().copied(),
                    maxq,
                    cfg.quant.sym,
                );
                params.push(p);
                current = Some(p);
            }
            let p = current.expect("a group starts at column 0");
            let w = w1[i];
            let d = hinv.at(c, c);
            let code = p.code(w, maxq);
            let q = p.value(code);
            codes[c] = code;
            loss += f64::from((w - q) * (w - q) / (d * d));
            let err = (w - q) / d;
            if err != 0.0 {
                let h = hinv.row(c, i1, i2);
                for j in i + 1..count {
                    w1[j] -= err * h[j];
                }
            }
            errs[i] = err;
        }
        lazy_update(row, hinv, i1, i2, &errs);
    }
    RowResult {
        codes,
        params,
        loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::rtn::rtn;

    fn cfg(bits: u32, grouping: Grouping, act_order: bool, percdamp: f64) -> GptqConfig {
        GptqConfig {
            quant: QuantConfig {
                bits,
                grouping,
                sym: false,
            },
            act_order,
            hessian: HessianOpts {
                blocksize: 128,
                percdamp,
            },
        }
    }

    /// Two coupled pairs: blockdiag([[4,2],[2,2]], [[4,2],[2,2]]).
    fn pairs() -> Matrix {
        let a = [4.0, 2.0, 2.0, 2.0];
        Matrix::from_fn_for_tests(4, |i, j| {
            if i / 2 == j / 2 {
                a[(i % 2) * 2 + j % 2]
            } else {
                0.0
            }
        })
    }

    #[test]
    fn error_feedback_by_hand() {
        // 2 bits per channel on [.4, 2.3, 3, 1]: xmin 0, xmax 3, scale 1, zero 0.
        // Col 0: .4 -> 0, err .4·√2, col 1 += .4 -> 2.7 -> 3 (RTN would give 2).
        // Cols 2, 3 are exact. Loss = (.16/.5 + .09/.5)/2 = .25 = ½·ΔHΔᵀ.
        let w = Matrix::new(1, 4, vec![0.4, 2.3, 3.0, 1.0]).unwrap();
        let out = gptq(&w, &pairs(), &cfg(2, Grouping::PerChannel, false, 0.0)).unwrap();
        assert_eq!(out.quantized.codes, vec![0, 3, 3, 1]);
        let r = rtn(&w, &cfg(2, Grouping::PerChannel, false, 0.0).quant).unwrap();
        assert_eq!(r.codes, vec![0, 2, 3, 1]);
        assert_eq!(
            (out.quantized.scales.clone(), out.quantized.zeros.clone()),
            (r.scales, r.zeros)
        );
        assert!((out.loss - 0.25).abs() < 1e-5, "{}", out.loss);
    }

    #[test]
    fn act_order_groups_follow_the_permutation() {
        // Diagonal H (no propagation): diag 1 3 2 3 -> order 1, 3, 2, 0 (ties: lower first).
        // Groups of 2: {1, 3} and {2, 0}.
        let h =
            Matrix::from_fn_for_tests(4, |i, j| if i == j { [1.0, 3.0, 2.0, 3.0][i] } else { 0.0 });
        let w = Matrix::new(1, 4, vec![-1.0, 3.0, 0.5, 1.5]).unwrap();
        let out = gptq(&w, &h, &cfg(2, Grouping::Group(2), true, 0.0)).unwrap();
        let q = &out.quantized;
        assert_eq!(q.group_index, Some(vec![1, 0, 1, 0]));
        // Group {3, 1.5}: [0, 3] scale 1 zero 0. Group {.5, -1}: [-1, .5] scale .5, zero 2.
        assert_eq!(q.scales, vec![1.0, 0.5]);
        assert_eq!(q.zeros, vec![0, 2]);
        // -1 -> 0; 3 -> 3; .5 -> 1 + 2 = 3; 1.5 -> round(1.5) = 2.
        assert_eq!(q.codes, vec![0, 3, 3, 2]);
        assert_eq!(q.dequantize().data, vec![-1.0, 3.0, 0.5, 2.0]);
    }
}
