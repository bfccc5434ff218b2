//! Compression kernels: pure functions of weight matrices (and calibration statistics).
//!
//! Nothing here does I/O or knows about models: a [`Matrix`] (PyTorch `Linear.weight` layout,
//! rows = output features, cols = input features) goes in, a [`Mask`] (1 = pruned) or a
//! [`QuantizedMatrix`] comes out. Each module reproduces one algorithm of the reference code, with
//! its tie-breaking and rounding (see `REFERENCE.md`):
//!
//! - [`magnitude`]: layer-wise and global magnitude pruning, magnitude N:M;
//! - [`wanda`]: the Wanda score and its per-output-row pruning;
//! - [`nm`]: N:M semi-structured masks on any score matrix;
//! - [`rtn`]: round-to-nearest quantization (the GPTQ reference quantizer);
//! - [`sparsegpt`], [`gptq`]: Hessian-based pruning and quantization with error propagation;
//! - [`dynint8`]: PyTorch `quantize_dynamic` (int8, x86 backend) emulation.
//!
//! Sparsities are `f64` fractions because the reference computes `int(numel * s)` in Python
//! floats: `floor(100 · 0.29)` is 28, and only the same arithmetic gives the same count.

mod error;
mod mask;
mod matrix;

pub mod dynint8;
pub mod gptq;
mod hessian;
pub mod magnitude;
pub mod nm;
pub mod random;
pub mod rows;
pub mod rtn;
pub mod sparsegpt;
pub mod tensor;
pub mod wanda;

pub use error::CompressError;
pub use hessian::HessianOpts;
pub(crate) use hessian::FACTORIZATION;
pub use mask::Mask;
pub use matrix::Matrix;
pub use rtn::{Grouping, QuantConfig, QuantParams, QuantizedMatrix};

/// Result type of the compression kernels.
pub type Result<T> = std::result::Result<T, CompressError>;

/// The count `torch.nn.utils.prune` takes (`_compute_nparams_toprune`): `round(n·s)`, Python's
/// round, half to even; a count of `n` prunes everything. The knowledge study's code prunes with
/// it: global magnitude, and on the LM head `random_unstructured` and `ln_structured`.
pub fn torch_prune_count(n: usize, s: f64) -> Result<usize> {
    if !(s.is_finite() && (0.0..1.0).contains(&s)) {
        return Err(CompressError::Sparsity(s));
    }
    Ok(((n as f64 * s).round_ties_even() as usize).min(n))
}

/// Checks a sparsity fraction and returns how many of `numel` weights the reference prunes:
/// `int(numel * s)`, in `f64` like Python. The reference indexes the sorted scores at that
/// position, so `s` must lie in `[0, 1)`.
pub fn prune_count(numel: usize, s: f64) -> Result<usize> {
    if !(s.is_finite() && (0.0..1.0).contains(&s)) {
        return Err(CompressError::Sparsity(s));
    }
    let k = (numel as f64 * s) as usize;
    // For s < 1 and numel < 2^53 the f64 product never rounds up to numel; the check keeps an
    // out-of-range index an error rather than a panic should that ever change.
    if numel > 0 && k >= numel {
        return Err(CompressError::Sparsity(s));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_count_truncates_like_python_int() {
        assert_eq!(prune_count(100, 0.29).unwrap(), 28); // 100*0.29 = 28.999999999999996
        assert_eq!(prune_count(10, 0.7).unwrap(), 7); // 7.000000000000001
        assert_eq!(prune_count(7, 0.5).unwrap(), 3);
        assert_eq!(prune_count(8, 0.0).unwrap(), 0);
        assert_eq!(prune_count(0, 0.5).unwrap(), 0);
        assert_eq!(
            prune_count(3 << 30, 1.0 - f64::EPSILON / 2.0).unwrap(),
            (3 << 30) - 1
        );
    }

    #[test]
    fn prune_count_rejects_fractions_outside_unit_interval() {
        for s in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(prune_count(8, s), Err(CompressError::Sparsity(_))));
        }
    }
}
