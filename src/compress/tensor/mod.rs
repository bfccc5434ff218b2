//! The kernels as candle tensor operations, so a stage on a GPU compresses where its model is.
//!
//! [`Backend`] picks the implementation from the stage's device: on the CPU the row-parallel
//! loops of the sibling modules (faster there: no temporaries, selection instead of counting),
//! elsewhere these tensor versions. Both follow the same rules (ties, counts, rounding):
//!
//! - thresholds are found by bisection over the bit patterns of non-negative `f32` scores: the
//!   host proposes one candidate per group, the device counts the scores at or below it, and 31
//!   rounds give the exact value at the wanted rank (no sort: candle's CUDA sort is limited to
//!   1024 columns). Rows whose cut falls inside a run of equal scores are settled on the host,
//!   lower column first;
//! - N:M ranks each score inside its group by comparisons, ties to the lower column;
//! - rounding is half to even (`torch.round`);
//! - SparseGPT and GPTQ factor the Hessian on the host in `f64` (as the CPU path does) and run
//!   the column loop on the device; the lazy update between blocks is one matrix product, so
//!   their weights agree with the CPU path to rounding, not bit for bit.
//!
//! Wanda, magnitude, N:M and RTN give the CPU path's masks and codes exactly (the same `f32`
//! operations in the same order); `tests/kernels.rs` checks both agreements on the CPU device.
//! Global magnitude, random, rows and dynamic int8 are single passes over the weights and stay
//! on the host.

mod nm;
mod obs;
mod quant;
mod select;

use candle_core::Device;

use super::gptq::{GptqConfig, GptqOutput};
use super::rtn::{QuantConfig, QuantizedMatrix};
use super::sparsegpt::{Pattern, SparseGptOutput};
use super::{HessianOpts, Mask, Matrix, Result};

/// Where a stage's kernels run.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The host loops (rayon, one row per task).
    Host,
    /// Tensor operations on this device.
    Tensor(Device),
}

impl Backend {
    /// The host loops on the CPU, tensor operations on any other device.
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            Backend::Host
        } else {
            Backend::Tensor(device.clone())
        }
    }

    /// Layer-wise magnitude (see [`super::magnitude::magnitude`]).
    pub fn magnitude(&self, w: &Matrix, s: f64) -> Result<Mask> {
        match self {
            Backend::Host => super::magnitude::magnitude(w, s),
            Backend::Tensor(d) => select::magnitude(w, s, d),
        }
    }

    /// Magnitude N:M (see [`super::magnitude::magnitude_nm`]).
    pub fn magnitude_nm(&self, w: &Matrix, n: usize, m: usize) -> Result<Mask> {
        match self {
            Backend::Host => super::magnitude::magnitude_nm(w, n, m),
            Backend::Tensor(d) => nm::magnitude_nm(w, n, m, d),
        }
    }

    /// Unstructured Wanda (see [`super::wanda::wanda`]).
    pub fn wanda(&self, w: &Matrix, scaler: &[f32], s: f64) -> Result<Mask> {
        match self {
            Backend::Host => super::wanda::wanda(w, scaler, s),
            Backend::Tensor(d) => select::wanda(w, scaler, s, d),
        }
    }

    /// Wanda N:M (see [`super::wanda::wanda_nm`]).
    pub fn wanda_nm(&self, w: &Matrix, scaler: &[f32], n: usize, m: usize) -> Result<Mask> {
        match self {
            Backend::Host => super::wanda::wanda_nm(w, scaler, n, m),
            Backend::Tensor(d) => nm::wanda_nm(w, scaler, n, m, d),
        }
    }

    /// Round-to-nearest (see [`super::rtn::rtn`]).
    pub fn rtn(&self, w: &Matrix, cfg: &QuantConfig) -> Result<QuantizedMatrix> {
        match self {
            Backend::Host => super::rtn::rtn(w, cfg),
            Backend::Tensor(d) => quant::rtn(w, cfg, d),
        }
    }

    /// SparseGPT (see [`super::sparsegpt::sparsegpt`]).
    pub fn sparsegpt(
        &self,
        w: &Matrix,
        h: &Matrix,
        pattern: Pattern,
        opts: &HessianOpts,
    ) -> Result<SparseGptOutput> {
        match self {
            Backend::Host => super::sparsegpt::sparsegpt(w, h, pattern, opts),
            Backend::Tensor(d) => obs::sparsegpt(w, h, pattern, opts, d),
        }
    }

    /// GPTQ (see [`super::gptq::gptq`]).
    pub fn gptq(&self, w: &Matrix, h: &Matrix, cfg: &GptqConfig) -> Result<GptqOutput> {
        match self {
            Backend::Host => super::gptq::gptq(w, h, cfg),
            Backend::Tensor(d) => obs::gptq(w, h, cfg, d),
        }
    }
}
