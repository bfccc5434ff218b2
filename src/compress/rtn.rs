//! Round-to-nearest quantization with the GPTQ reference quantizer (`quant.py`).
//!
//! For each group of weights (a row, or `g` consecutive input columns of a row), in `f32`:
//! - `xmin = min(min x, 0)`, `xmax = max(max x, 0)` (the grid always contains 0);
//! - symmetric: `xmax = max(|xmin|, xmax)` and, only where `xmin < 0`, `xmin = -xmax`; a group with
//!   no negative weight keeps `xmin = 0` (a reference quirk: its upper half of codes is then
//!   unreachable and weights above `scale·(maxq−zero)` are clipped);
//! - `xmin == xmax == 0` becomes `[-1, 1]`;
//! - `scale = (xmax − xmin)/maxq`, `zero = round(−xmin/scale)` or `(maxq + 1)/2` when symmetric;
//! - `q = clamp(round(w/scale) + zero, 0, maxq)`, dequantized `scale·(q − zero)`.
//!
//! `round` is `torch.round`: half to even.

use rayon::prelude::*;

use super::{CompressError, Matrix, Result};

/// How weights are grouped for one scale/zero pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// One pair per output row (the reference's `--groupsize -1`).
    PerChannel,
    /// One pair per `g` consecutive input columns of each row; a last, shorter group takes the
    /// remaining columns when `g` does not divide the width.
    Group(usize),
}

/// Bits, grouping and symmetry of a quantizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantConfig {
    pub bits: u32,
    pub grouping: Grouping,
    pub sym: bool,
}

impl QuantConfig {
    /// Checks `2 <= bits <= 8` and a non-zero group size.
    pub fn validate(&self) -> Result<()> {
        if !(2..=8).contains(&self.bits) {
            return Err(CompressError::Bits { bits: self.bits });
        }
        if self.grouping == Grouping::Group(0) {
            return Err(CompressError::GroupSize);
        }
        Ok(())
    }

    /// The largest code, `2^bits − 1`.
    pub fn maxq(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }

    /// Columns per group for a matrix `cols` wide.
    pub fn group_size(&self, cols: usize) -> usize {
        match self.grouping {
            Grouping::PerChannel => cols.max(1),
            Grouping::Group(g) => g,
        }
    }
}

/// One group's scale and zero point (an integer-valued float, as in the reference).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantParams {
    pub scale: f32,
    pub zero: f32,
}

impl QuantParams {
    /// The reference's `find_params` over one group of values.
    pub fn find(values: impl IntoIterator<Item = f32>, maxq: f32, sym: bool) -> Self {
        let (mut lo, mut hi) = values
            .into_iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if sym {
            hi = hi.max(lo.abs());
            if lo < 0.0 {
                lo = -hi;
            }
        }
        if lo == 0.0 && hi == 0.0 {
            (lo, hi) = (-1.0, 1.0);
        }
        let scale = (hi - lo) / maxq;
        let zero = if sym {
            (maxq + 1.0) / 2.0
        } else {
            (-lo / scale).round_ties_even()
        };
        Self { scale, zero }
    }

    /// The code of `x`: `clamp(round(x/scale) + zero, 0, maxq)`.
    pub fn code(&self, x: f32, maxq: f32) -> u8 {
        ((x / self.scale).round_ties_even() + self.zero).clamp(0.0, maxq) as u8
    }

    /// The value of a code: `scale·(q − zero)`.
    pub fn value(&self, q: u8) -> f32 {
        self.scale * (f32::from(q) - self.zero)
    }

    /// `x` rounded onto the grid (the reference's `quantize`).
    pub fn fake_quantize(&self, x: f32, maxq: f32) -> f32 {
        self.value(self.code(x, maxq))
    }
}

/// A quantized matrix: one `u8` code per weight plus a scale and zero per (row, group).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub bits: u32,
    pub sym: bool,
    /// Columns per group (`cols` for per-channel).
    pub group_size: usize,
    /// Row-major codes in `0..=2^bits − 1`.
    pub codes: Vec<u8>,
    /// `rows × n_groups`, row-major.
    pub scales: Vec<f32>,
    /// `rows × n_groups`, row-major; zero points fit in `u8` (at most `2^bits − 1`, or `2^(bits−1)`
    /// symmetric).
    pub zeros: Vec<u8>,
    /// The group of each input column when it is not `col / group_size` (GPTQ with act-order
    /// forms groups in the permuted column order).
    pub group_index: Option<Vec<u32>>,
}

impl QuantizedMatrix {
    pub fn n_groups(&self) -> usize {
        self.scales.len() / self.rows.max(1)
    }

    /// The group of input column `c`.
    pub fn group_of(&self, c: usize) -> usize {
        match &self.group_index {
            Some(g) => g[c] as usize,
            None => c / self.group_size,
        }
    }

    /// The scale and zero of (row, group).
    pub fn params(&self, r: usize, g: usize) -> QuantParams {
        let i = r * self.n_groups() + g;
        QuantParams {
            scale: self.scales[i],
            zero: f32::from(self.zeros[i]),
        }
    }

    /// The dequantized weight, `scale·(q − zero)` per entry.
    pub fn dequantize(&self) -> Matrix {
        let mut out = Matrix::zeros(self.rows, self.cols);
        out.data
            .par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = self
                        .params(r, self.group_of(c))
                        .value(self.codes[r * self.cols + c]);
                }
            });
        out
    }
}

/// Round-to-nearest quantization of `w`.
pub fn rtn(w: &Matrix, cfg: &QuantConfig) -> Result<QuantizedMatrix> {
    cfg.validate()?;
    w.check_finite()?;
    let maxq = cfg.maxq();
    let g = cfg.group_size(w.cols);
    let n_groups = w.cols.div_ceil(g);
    let per_row: Vec<(Vec<u8>, Vec<QuantParams>)> = (0..w.rows)
        .into_par_iter()
        .map(|r| {
            let row = w.row(r);
            let mut codes = Vec::with_capacity(w.cols);
            let mut params = Vec::with_capacity(n_groups);
            for chunk in row.chunks(g) {
                let p = QuantParams::find(chunk.iter().copied(), maxq, cfg.sym);
                codes.extend(chunk.iter().map(|&x| p.code(x, maxq)));
                params.push(p);
            }
            (codes, params)
        })
        .collect();
    let mut q = QuantizedMatrix {
        rows: w.rows,
        cols: w.cols,
        bits: cfg.bits,
        sym: cfg.sym,
        group_size: g,
        codes: Vec::with_capacity(w.numel()),
        scales: Vec::with_capacity(w.rows * n_groups),
        zeros: Vec::with_capacity(w.rows * n_groups),
        group_index: None,
    };
    for (codes, params) in per_row {
        q.codes.extend(codes);
        for p in params {
            q.scales.push(p.scale);
            q.zeros.push(p.zero as u8);
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(bits: u32, grouping: Grouping, sym: bool) -> QuantConfig {
        QuantConfig {
            bits,
            grouping,
            sym,
        }
    }

    #[test]
    fn asymmetric_per_channel_rounds_half_to_even() {
        // 3 bits, range [-3, 4]: scale 1, zero round(3) = 3. 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
        let w = Matrix::new(1, 6, vec![-3.0, 0.5, 1.5, 2.5, 4.0, -0.5]).unwrap();
        let q = rtn(&w, &cfg(3, Grouping::PerChannel, false)).unwrap();
        assert_eq!((q.scales.clone(), q.zeros.clone()), (vec![1.0], vec![3]));
        assert_eq!(q.codes, vec![0, 3, 5, 5, 7, 3]);
        assert_eq!(q.dequantize().data, vec![-3.0, 0.0, 2.0, 2.0, 4.0, 0.0]);
    }

    #[test]
    fn symmetric_clips_top_and_keeps_the_nonnegative_quirk() {
        // 3 bits sym: xmax = max(2, 3.5) = 3.5, xmin = -3.5, scale 1, zero (7+1)/2 = 4.
        let w = Matrix::new(2, 4, vec![-2.0, 1.0, 0.9, 3.5, 0.0, 1.0, 2.0, 7.0]).unwrap();
        let q = rtn(&w, &cfg(3, Grouping::PerChannel, true)).unwrap();
        assert_eq!(q.scales, vec![1.0, 1.0]);
        assert_eq!(q.zeros, vec![4, 4]);
        // 3.5 -> round(3.5)=4 -> 8 -> clamp 7. Row 1 has no negative: xmin stays 0, scale
        // 7/7 = 1 with zero 4, so 7 clips to 3 (the reference does this too).
        assert_eq!(q.codes, vec![2, 5, 5, 7, 4, 5, 6, 7]);
        assert_eq!(
            q.dequantize().data,
            vec![-2.0, 1.0, 1.0, 3.0, 0.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn groupwise_params_by_hand() {
        // 2 bits (maxq 3), groups of 2.
        let w = Matrix::new(2, 4, vec![0.0, 3.0, -1.5, 1.5, -6.0, 0.0, 0.0, 0.0]).unwrap();
        let q = rtn(&w, &cfg(2, Grouping::Group(2), false)).unwrap();
        // (0,0): [0,3] scale 1 zero 0. (0,1): [-1.5,1.5] scale 1, zero round(1.5) = 2.
        // (1,0): [-6,0] scale 2 zero 3. (1,1): all zero -> [-1,1], scale 2/3, zero
        // round(1/(2/3)) = round(1.5) = 2.
        assert_eq!(q.scales, vec![1.0, 1.0, 2.0, 2.0f32 / 3.0]);
        assert_eq!(q.zeros, vec![0, 2, 3, 2]);
        // -1.5 -> round(-1.5) = -2 -> 0; 1.5 -> 2 + 2 = 4 -> clamp 3.
        assert_eq!(q.codes, vec![0, 3, 0, 3, 0, 3, 2, 2]);
        assert_eq!(
            q.dequantize().data,
            vec![0.0, 3.0, -2.0, 1.0, -6.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn trailing_partial_group() {
        let w = Matrix::new(1, 5, vec![1.0, 2.0, 3.0, -4.0, 10.0]).unwrap();
        let q = rtn(&w, &cfg(8, Grouping::Group(2), false)).unwrap();
        assert_eq!(q.n_groups(), 3);
        // Last group [10]: xmin 0, scale 10/255, zero 0, code 255.
        assert_eq!(
            q.params(0, 2),
            QuantParams {
                scale: 10.0 / 255.0,
                zero: 0.0
            }
        );
        assert_eq!(q.codes[4], 255);
    }

    #[test]
    fn rejects_bad_configs_and_weights() {
        let w = Matrix::zeros(1, 4);
        assert!(matches!(
            rtn(&w, &cfg(1, Grouping::PerChannel, false)),
            Err(CompressError::Bits { bits: 1 })
        ));
        assert!(matches!(
            rtn(&w, &cfg(9, Grouping::PerChannel, false)),
            Err(CompressError::Bits { bits: 9 })
        ));
        assert!(matches!(
            rtn(&w, &cfg(4, Grouping::Group(0), false)),
            Err(CompressError::GroupSize)
        ));
        let nan = Matrix::new(1, 2, vec![0.0, f32::NAN]).unwrap();
        assert!(matches!(
            rtn(&nan, &cfg(4, Grouping::PerChannel, false)),
            Err(CompressError::NonFinite { row: 0, col: 1, .. })
        ));
    }
}
