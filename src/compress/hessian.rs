//! The Hessian preparation shared by SparseGPT and GPTQ: dead inputs, damping, and the upper
//! Cholesky factor of the inverse.
//!
//! The reference runs `cholesky → cholesky_inverse → cholesky(upper)` in `f32`. Here the same
//! factor is computed in `f64` with one factorisation and one triangular inverse: with J the
//! reversal permutation and `J H J = L Lᵀ`, `U = J L⁻¹ J` is upper triangular with a positive
//! diagonal and `Uᵀ U = H⁻¹`, so it is the factor the reference computes (tested against the
//! three-step route).

use rayon::prelude::*;

use super::{CompressError, Matrix, Result};

/// Options shared by the Hessian-based kernels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HessianOpts {
    /// Columns per lazy-update block (the reference: 128).
    pub blocksize: usize,
    /// Damping as a fraction of the mean diagonal (the reference: 0.01).
    pub percdamp: f64,
}

impl Default for HessianOpts {
    fn default() -> Self {
        Self {
            blocksize: 128,
            percdamp: 0.01,
        }
    }
}

/// A prepared inverse: `u` is the row-major `n × n` upper factor (in `f32`, as the column loop
/// runs in `f32`), `dead` the inputs that never fired.
pub(crate) struct Prepared {
    pub n: usize,
    pub u: Vec<f32>,
    pub dead: Vec<usize>,
}

impl Prepared {
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.u[i * self.n + j]
    }

    /// Row `i` of the factor from column `from` to `to`.
    pub fn row(&self, i: usize, from: usize, to: usize) -> &[f32] {
        &self.u[i * self.n + from..i * self.n + to]
    }
}

/// Checks `h` against `w`, fixes dead inputs, optionally permutes, damps and factors.
///
/// Order as in the reference: dead inputs (`H_ii == 0` → `H_ii = 1`) first, then the permutation
/// (GPTQ act-order; `perm[p]` is the original column at position p), then
/// `H += percdamp · mean(diag H) · I`.
pub(crate) fn prepare(
    h: &Matrix,
    cols: usize,
    opts: &HessianOpts,
    perm: Option<&[usize]>,
) -> Result<Prepared> {
    h.expect_shape("hessian", cols, cols)?;
    if let Some(i) = h.data.iter().position(|v| !v.is_finite()) {
        return Err(CompressError::BadStat {
            what: "hessian",
            index: i,
            value: f64::from(h.data[i]),
        });
    }
    if !(opts.percdamp.is_finite() && opts.percdamp >= 0.0) {
        return Err(CompressError::Damping(opts.percdamp));
    }
    if opts.blocksize == 0 {
        return Err(CompressError::BlockSize(0));
    }
    let n = cols;
    let dead: Vec<usize> = (0..n).filter(|&i| h.get(i, i) == 0.0).collect();
    let at = |a: usize, b: usize| -> f64 {
        let (a, b) = perm.map_or((a, b), |p| (p[a], p[b]));
        if a == b && h.get(a, a) == 0.0 {
            1.0
        } else {
            f64::from(h.get(a, b))
        }
    };
    let mean_diag = (0..n).map(|i| at(i, i)).sum::<f64>() / n.max(1) as f64;
    let damp = opts.percdamp * mean_diag;
    // J H J, damped: reversed indices so that the lower factor of it gives the upper factor U.
    let mut a: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (n - 1 - k / n, n - 1 - k % n);
            at(i, j) + if i == j { damp } else { 0.0 }
        })
        .collect();
    cholesky_lower(&mut a, n)?;
    let x = invert_lower_columns(&a, n);
    // U[i][j] = L⁻¹[n-1-i][n-1-j]; column q of L⁻¹ is stored from its diagonal down.
    let mut u = vec![0f32; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = x[n - 1 - j][j - i] as f32;
        }
    }
    Ok(Prepared { n, u, dead })
}

/// In-place lower Cholesky factor (row by row, contiguous dot products); the upper part is
/// zeroed. Errors on a non-positive pivot.
pub(crate) fn cholesky_lower(a: &mut [f64], n: usize) -> Result<()> {
    for i in 0..n {
        for j in 0..=i {
            let s = a[i * n + j] - dot(&a[i * n..i * n + j], &a[j * n..j * n + j]);
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(CompressError::NotPositiveDefinite { index: i, value: s });
                }
                a[i * n + i] = s.sqrt();
            } else {
                a[i * n + j] = s / a[j * n + j];
            }
        }
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(())
}

/// The columns of `L⁻¹` for a lower-triangular `L`: column j holds rows j..n. Columns are
/// independent, so they are solved in parallel.
fn invert_lower_columns(l: &[f64], n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .into_par_iter()
        .map(|j| {
            let mut x = vec![0f64; n - j];
            x[0] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                x[i - j] = -dot(&l[i * n + j..i * n + i], &x[..i - j]) / l[i * n + i];
            }
            x
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's route: inverse (Gauss-Jordan), then the upper factor as Lᵀ.
    fn three_step(h: &[f64], n: usize) -> Vec<f64> {
        let mut a = h.to_vec();
        let mut inv: Vec<f64> = (0..n * n)
            .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
            .collect();
        for c in 0..n {
            let p = a[c * n + c];
            for j in 0..n {
                a[c * n + j] /= p;
                inv[c * n + j] /= p;
            }
            for r in 0..n {
                if r != c {
                    let f = a[r * n + c];
                    for j in 0..n {
                        a[r * n + j] -= f * a[c * n + j];
                        inv[r * n + j] -= f * inv[c * n + j];
                    }
                }
            }
        }
        cholesky_lower(&mut inv, n).unwrap();
        (0..n * n).map(|k| inv[(k % n) * n + k / n]).collect()
    }

    #[test]
    fn upper_factor_of_inverse_matches_three_step_route() {
        let n = 7;
        // A = B Bᵀ + I with a fixed pseudo-random B.
        let b: Vec<f64> = (0..n * n)
            .map(|k| ((k * 37 + 11) % 17) as f64 / 8.0 - 1.0)
            .collect();
        let h: Vec<f32> = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                let s: f64 = (0..n).map(|t| b[i * n + t] * b[j * n + t]).sum();
                (s + if i == j { 1.0 } else { 0.0 }) as f32
            })
            .collect();
        let hm = Matrix::new(n, n, h.clone()).unwrap();
        let opts = HessianOpts {
            blocksize: 128,
            percdamp: 0.0,
        };
        let p = prepare(&hm, n, &opts, None).unwrap();
        let want = three_step(&h.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), n);
        for (k, (got, want)) in p.u.iter().zip(&want).enumerate() {
            assert!((f64::from(*got) - want).abs() < 1e-5, "{k}");
        }
    }

    #[test]
    fn two_by_two_by_hand_with_dead_input_and_damping() {
        // H = [[4, 2], [2, 2]]: H⁻¹ = [[.5, -.5], [-.5, 1]], U = [[1, -1], [0, 1]] / √2.
        let h = Matrix::new(2, 2, vec![4.0, 2.0, 2.0, 2.0]).unwrap();
        let opts = HessianOpts {
            blocksize: 128,
            percdamp: 0.0,
        };
        let p = prepare(&h, 2, &opts, None).unwrap();
        let r = std::f32::consts::FRAC_1_SQRT_2;
        for (got, want) in p.u.iter().zip([r, -r, 0.0, r]) {
            assert!((got - want).abs() < 1e-6);
        }
        // Dead input 1: H_11 = 1, then damp 0.01·mean(4, 1) = 0.025 -> diag 4.025, 1.025.
        let h = Matrix::new(2, 2, vec![4.0, 0.0, 0.0, 0.0]).unwrap();
        let p = prepare(&h, 2, &HessianOpts::default(), None).unwrap();
        assert_eq!(p.dead, vec![1]);
        assert!((p.at(0, 0) - 1.0 / 4.025f32.sqrt()).abs() < 1e-6);
        assert!((p.at(1, 1) - 1.0 / 1.025f32.sqrt()).abs() < 1e-6);
        assert_eq!(p.at(0, 1), 0.0);
    }

    #[test]
    fn indefinite_hessian_is_an_error() {
        let h = Matrix::new(2, 2, vec![1.0, 3.0, 3.0, 1.0]).unwrap();
        let opts = HessianOpts {
            blocksize: 128,
            percdamp: 0.0,
        };
        assert!(matches!(
            prepare(&h, 2, &opts, None),
            Err(CompressError::NotPositiveDefinite { .. })
        ));
    }
}
