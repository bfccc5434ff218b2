//! A small dense row-major `f32` matrix, the kernels' input and output type.

use candle_core::{DType, Device, Tensor};

use super::{CompressError, Result};

/// A dense row-major matrix in PyTorch `Linear.weight` layout: `rows` output features,
/// `cols` input features, `data[r * cols + c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    /// Wraps row-major data, checking that it has `rows * cols` values.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(CompressError::DataLength {
                rows,
                cols,
                len: data.len(),
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// A square matrix with entries `f(i, j)`.
    #[cfg(test)]
    pub(crate) fn from_fn_for_tests(n: usize, f: impl Fn(usize, usize) -> f32) -> Self {
        Self {
            rows: n,
            cols: n,
            data: (0..n * n).map(|k| f(k / n, k % n)).collect(),
        }
    }

    /// Copies a rank-2 tensor of any float dtype, on any device, into an `f32` matrix.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let &[rows, cols] = t.dims() else {
            return Err(CompressError::Rank(t.dims().to_vec()));
        };
        let data = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        Self::new(rows, cols, data)
    }

    /// An `f32` tensor of shape `(rows, cols)` on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.rows, self.cols),
            device,
        )?)
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn get(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.cols + c]
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Elementwise `|w|`, the magnitude score.
    pub fn abs(&self) -> Self {
        Self {
            rows: self.rows,
            cols: self.cols,
            data: self.data.iter().map(|v| v.abs()).collect(),
        }
    }

    /// Errors unless the shape is `(rows, cols)`; `what` names the operand.
    pub(crate) fn expect_shape(&self, what: &'static str, rows: usize, cols: usize) -> Result<()> {
        if self.shape() != (rows, cols) {
            return Err(CompressError::Shape {
                what,
                expected: (rows, cols),
                got: self.shape(),
            });
        }
        Ok(())
    }

    /// The first non-finite value, for kernels whose arithmetic needs finite weights.
    pub(crate) fn check_finite(&self) -> Result<()> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(CompressError::NonFinite {
                row: i / self.cols,
                col: i % self.cols,
                value: self.data[i],
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_round_trip_keeps_layout() {
        let m = Matrix::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let t = m.to_tensor(&Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(t.to_vec2::<f32>().unwrap()[1], vec![4.0, 5.0, 6.0]);
        let back = Matrix::from_tensor(&t.to_dtype(DType::F16).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn from_tensor_rejects_other_ranks() {
        let t = Tensor::zeros((2, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(Matrix::from_tensor(&t), Err(CompressError::Rank(d)) if d == [2, 2, 2]));
    }

    #[test]
    fn new_checks_length() {
        assert!(matches!(
            Matrix::new(2, 3, vec![0.0; 5]),
            Err(CompressError::DataLength { len: 5, .. })
        ));
    }
}
