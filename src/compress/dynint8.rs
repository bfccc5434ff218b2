//! PyTorch `quantize_dynamic` emulation (int8, x86/fbgemm backend) for one linear layer.
//!
//! Weight: per-tensor symmetric int8, `s_w = max|W| / 127.5` (the observer's
//! `(qmax − qmin)/2`; floored at `f32::EPSILON` like the observer), zero point 0,
//! `q_w = clamp(round(W/s_w), −128, 127)`.
//!
//! Input, per call: `lo = min(min x, 0)`, `hi = max(max x, 0)`, 7-bit range (`reduce_range`):
//! `s_x = (hi − lo)/127` (computed in `f64`, stored as `f32`), `z_x = round(−lo/s_x)` clamped to
//! `[0, 127]`, `q_x = clamp(round(x/s_x) + z_x, 0, 127)`. PyTorch's guards are kept: a zero
//! scale becomes 0.1 and a scale below 6.1e-5 is raised to it with the range stretched.
//!
//! Output: `s_x·s_w·Σ (q_x − z_x)·q_w + bias`, the sum exact in integers, the rest in `f32`.
//! `lo`/`hi` span the whole call, so results depend on how tokens are batched into calls.

use rayon::prelude::*;

use super::{CompressError, Matrix, Result};

/// A per-tensor int8 weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Weight {
    pub rows: usize,
    pub cols: usize,
    pub scale: f32,
    /// Row-major codes.
    pub codes: Vec<i8>,
}

impl Int8Weight {
    /// `s_w · q_w`, the weight the int8 kernel effectively uses.
    pub fn dequantize(&self) -> Matrix {
        Matrix {
            rows: self.rows,
            cols: self.cols,
            data: self
                .codes
                .iter()
                .map(|&q| self.scale * f32::from(q))
                .collect(),
        }
    }
}

/// The quantization of one call's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Input {
    pub scale: f32,
    pub zero: i32,
    /// Codes in `0..=127`.
    pub codes: Vec<u8>,
}

/// Quantizes a weight as `quantize_dynamic` does.
pub fn quantize_weight(w: &Matrix) -> Result<Int8Weight> {
    w.check_finite()?;
    let amax = w.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = (amax / 127.5).max(f32::EPSILON);
    let codes = w
        .data
        .iter()
        .map(|&v| (v / scale).round_ties_even().clamp(-128.0, 127.0) as i8)
        .collect();
    Ok(Int8Weight {
        rows: w.rows,
        cols: w.cols,
        scale,
        codes,
    })
}

const QMAX: i32 = 127;
const SMALL_SCALE: f32 = 6.1e-5;

/// Quantizes one call's input to 7-bit unsigned codes.
pub fn quantize_input(x: &[f32]) -> Result<Int8Input> {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(CompressError::BadStat {
            what: "dynamic int8 input",
            index: i,
            value: f64::from(x[i]),
        });
    }
    let mut lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let mut hi = x.iter().fold(0f32, |m, &v| m.max(v));
    let mut scale = ((f64::from(hi) - f64::from(lo)) / f64::from(QMAX)) as f32;
    if scale == 0.0 || (1.0 / scale).is_infinite() {
        scale = 0.1;
    }
    if scale < SMALL_SCALE {
        let amplifier = SMALL_SCALE / scale;
        scale = SMALL_SCALE;
        if lo == 0.0 {
            hi = SMALL_SCALE * QMAX as f32;
        } else if hi == 0.0 {
            lo = -SMALL_SCALE * QMAX as f32;
        } else {
            lo *= amplifier;
            hi *= amplifier;
        }
    }
    // PyTorch picks the zero point from whichever end has the smaller error term; with qmin 0
    // that is the `lo` end unless lo == 0.
    let s = f64::from(scale);
    let from_min = -f64::from(lo) / s;
    let from_max = f64::from(QMAX) - f64::from(hi) / s;
    let initial = if -(f64::from(lo) / s).abs() < f64::from(QMAX) - (f64::from(hi) / s).abs() {
        from_min
    } else {
        from_max
    };
    let zero = if initial < 0.0 {
        0
    } else if initial > f64::from(QMAX) {
        QMAX
    } else {
        (initial as f32).round_ties_even() as i32
    };
    let codes = x
        .iter()
        .map(|&v| ((v / scale).round_ties_even() + zero as f32).clamp(0.0, QMAX as f32) as u8)
        .collect();
    Ok(Int8Input { scale, zero, codes })
}

/// One dynamic-int8 linear call: `x` is `tokens × cols` row-major (all quantized together),
/// the result `tokens × rows`.
pub fn linear(x: &[f32], w: &Int8Weight, bias: Option<&[f32]>) -> Result<Vec<f32>> {
    let cols = w.cols;
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(CompressError::InputLength { len: x.len(), cols });
    }
    if let Some(b) = bias {
        if b.len() != w.rows {
            return Err(CompressError::StatLength {
                what: "bias",
                expected: w.rows,
                got: b.len(),
            });
        }
    }
    let xq = quantize_input(x)?;
    let mult = xq.scale * w.scale;
    let tokens = x.len() / cols;
    let mut out = vec![0f32; tokens * w.rows];
    out.par_chunks_mut(w.rows.max(1))
        .enumerate()
        .for_each(|(t, o)| {
            let xs: Vec<i32> = xq.codes[t * cols..(t + 1) * cols]
                .iter()
                .map(|&q| i32::from(q) - xq.zero)
                .collect();
            for (r, v) in o.iter_mut().enumerate() {
                let acc: i32 = w.codes[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(&xs)
                    .map(|(&q, &x)| i32::from(q) * x)
                    .sum();
                *v = mult * acc as f32 + bias.map_or(0.0, |b| b[r]);
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand_with_exact_binary_scales() {
        // max|W| = 127.5/64 -> s_w = 1/64. Codes: 127.5 -> 128 -> 127; -32.5 -> -32 (even);
        // 1.5 -> 2; -127.5 -> -128 (even); 16.
        let w = Matrix::new(
            2,
            3,
            vec![1.9921875, -0.5078125, 0.0, 0.0234375, -1.9921875, 0.25],
        )
        .unwrap();
        let q = quantize_weight(&w).unwrap();
        assert_eq!(q.scale, 1.0 / 64.0);
        assert_eq!(q.codes, vec![127, -32, 0, 2, -128, 16]);
        // x: lo -1, hi 2.96875 -> s_x = 3.96875/127 = 1/32, z = 32.
        // q_x: 95 + 32 = 127; -32 + 32 = 0; round(.5) = 0 -> 32. q_x − z = 95, −32, 0.
        let x = [2.96875, -1.0, 0.015625];
        let xq = quantize_input(&x).unwrap();
        assert_eq!(
            (xq.scale, xq.zero, xq.codes.clone()),
            (1.0 / 32.0, 32, vec![127, 0, 32])
        );
        // acc = 95·127 + 32·32 = 13089 and 95·2 + 32·128 = 4286; times 2^-11, plus bias.
        let y = linear(&x, &q, Some(&[0.5, -1.0])).unwrap();
        assert_eq!(y, vec![13089.0 / 2048.0 + 0.5, 4286.0 / 2048.0 - 1.0]);
    }

    #[test]
    fn batching_changes_the_input_scale() {
        let w = quantize_weight(&Matrix::new(1, 2, vec![0.3, -0.7]).unwrap()).unwrap();
        let a = [0.1, 0.2];
        let b = [5.0, -3.0];
        let both = linear(&[a, b].concat(), &w, None).unwrap();
        let alone = linear(&a, &w, None).unwrap();
        assert_eq!(both[1], linear(&b, &w, None).unwrap()[0]); // b sets the range either way
        assert_ne!(both[0], alone[0]); // a is coarser when batched with b
        let exact = 0.1 * 0.3 - 0.2 * 0.7;
        assert!((alone[0] - exact).abs() < (both[0] - exact).abs());
    }

    #[test]
    fn all_zero_input_gives_bias() {
        let w = quantize_weight(&Matrix::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap()).unwrap();
        let y = linear(&[0.0, 0.0], &w, Some(&[0.25, -0.5])).unwrap();
        assert_eq!(y, vec![0.25, -0.5]);
        assert!(linear(&[0.0; 3], &w, None).is_err());
    }
}
