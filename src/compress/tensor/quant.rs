//! The GPTQ reference quantizer on the device: parameters per row of a group of columns, codes,
//! and their values, with the host's `f32` operations in the host's order.

use candle_core::{DType, Device, Tensor};

use crate::compress::rtn::{QuantConfig, QuantizedMatrix};
use crate::compress::{Matrix, Result};

/// `torch.round`: half to even. candle's `round` takes halves away from zero, so exact halves
/// are rounded as `2·round(x/2)` instead (both steps exact in `f32`).
pub(super) fn round_even(x: &Tensor) -> Result<Tensor> {
    let half = (x - x.floor()?)?.eq(0.5)?;
    let even = (x * 0.5)?.round()?.affine(2.0, 0.0)?;
    Ok(half.where_cond(&even, &x.round()?)?)
}

/// One scale and zero per row (`rows × 1` each).
#[derive(Clone)]
pub(super) struct Params {
    pub scale: Tensor,
    pub zero: Tensor,
}

/// A `rows × 1` column of `v`.
fn column(v: f32, rows: usize, device: &Device) -> Result<Tensor> {
    Ok(Tensor::full(v, (rows, 1), device)?)
}

/// The reference's `find_params` for each row of `x` (see [`crate::compress::rtn`]).
pub(super) fn find_params(x: &Tensor, maxq: f32, sym: bool) -> Result<Params> {
    let (rows, _) = x.dims2()?;
    let device = x.device();
    let mut lo = x.min_keepdim(1)?.minimum(0.0)?;
    let mut hi = x.max_keepdim(1)?.maximum(0.0)?;
    if sym {
        hi = hi.maximum(&lo.abs()?)?;
        lo = lo.lt(0.0)?.where_cond(&hi.neg()?, &lo)?;
    }
    let empty = (lo.eq(0.0)? * hi.eq(0.0)?)?;
    lo = empty.where_cond(&column(-1.0, rows, device)?, &lo)?;
    hi = empty.where_cond(&column(1.0, rows, device)?, &hi)?;
    let scale = (hi - &lo)?.broadcast_div(&Tensor::full(maxq, (1, 1), device)?)?;
    let zero = if sym {
        column((maxq + 1.0) / 2.0, rows, device)?
    } else {
        round_even(&(lo.neg()? / &scale)?)?
    };
    Ok(Params { scale, zero })
}

/// The codes of `x` (as `f32`): `clamp(round(x/scale) + zero, 0, maxq)`.
pub(super) fn codes(x: &Tensor, p: &Params, maxq: f32) -> Result<Tensor> {
    let q = round_even(&x.broadcast_div(&p.scale)?)?.broadcast_add(&p.zero)?;
    Ok(q.clamp(0.0, f64::from(maxq))?)
}

/// The values of codes: `scale·(q − zero)`.
pub(super) fn values(codes: &Tensor, p: &Params) -> Result<Tensor> {
    Ok(codes.broadcast_sub(&p.zero)?.broadcast_mul(&p.scale)?)
}

/// Parameters stacked `rows × groups`, as the quantized matrix stores them.
pub(super) fn stack_params(params: &[Params]) -> Result<(Vec<f32>, Vec<u8>)> {
    let scales: Vec<&Tensor> = params.iter().map(|p| &p.scale).collect();
    let zeros: Vec<&Tensor> = params.iter().map(|p| &p.zero).collect();
    let scales = Tensor::cat(&scales, 1)?.flatten_all()?.to_vec1::<f32>()?;
    let zeros = Tensor::cat(&zeros, 1)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    Ok((scales, zeros))
}

/// Round-to-nearest quantization of `w`, group by group.
pub(super) fn rtn(w: &Matrix, cfg: &QuantConfig, device: &Device) -> Result<QuantizedMatrix> {
    cfg.validate()?;
    w.check_finite()?;
    let maxq = cfg.maxq();
    let g = cfg.group_size(w.cols);
    let x = w.to_tensor(device)?;
    let mut params = Vec::new();
    let mut code_parts = Vec::new();
    for c in (0..w.cols).step_by(g) {
        let part = x.narrow(1, c, g.min(w.cols - c))?;
        let p = find_params(&part, maxq, cfg.sym)?;
        code_parts.push(codes(&part, &p, maxq)?);
        params.push(p);
    }
    let codes = match code_parts.len() {
        0 => Vec::new(),
        _ => Tensor::cat(&code_parts, 1)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?,
    };
    let (scales, zeros) = match params.len() {
        0 => (Vec::new(), Vec::new()),
        _ => stack_params(&params)?,
    };
    Ok(QuantizedMatrix {
        rows: w.rows,
        cols: w.cols,
        bits: cfg.bits,
        sym: cfg.sym,
        group_size: g,
        codes,
        scales,
        zeros,
        group_index: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_halves_to_even() {
        let xs = [
            -2.5f32,
            -1.5,
            -0.5,
            0.5,
            1.5,
            2.5,
            2.4999998,
            -0.49999997,
            3.7,
        ];
        let t = Tensor::from_slice(&xs, xs.len(), &Device::Cpu).unwrap();
        let got = round_even(&t).unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = xs.iter().map(|x| x.round_ties_even()).collect();
        assert_eq!(got, want);
    }
}
