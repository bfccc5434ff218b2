//! Pruning masks as bitsets (1 = pruned), one bit per weight in row-major order.

use rayon::prelude::*;

use super::{CompressError, Matrix, Result};

/// A pruning mask over a `rows × cols` weight: bit `r * cols + c` set means the weight is pruned.
///
/// Bits past `rows * cols` in the last word are always zero, so equal masks have equal bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    rows: usize,
    cols: usize,
    bits: Vec<u64>,
}

/// Magic and version at the head of [`Mask::to_bytes`]; bump the version if the layout changes.
const MAGIC: &[u8; 4] = b"WMSK";
const VERSION: u32 = 1;
const HEADER: usize = 4 + 4 + 8 + 8;

impl Mask {
    /// A mask that prunes nothing.
    pub fn new(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            bits: vec![0; (rows * cols).div_ceil(64)],
        }
    }

    /// A mask with `pruned(r, c)` deciding each bit.
    pub fn from_fn(rows: usize, cols: usize, mut pruned: impl FnMut(usize, usize) -> bool) -> Self {
        let mut m = Self::new(rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                if pruned(r, c) {
                    m.set(r, c, true);
                }
            }
        }
        m
    }

    /// The mask with weight `i` (row-major) pruned where `pruned(values[i])`; built word by word
    /// in parallel, since layer masks of large models have tens of millions of bits.
    pub(crate) fn from_values(
        rows: usize,
        cols: usize,
        values: &[f32],
        pruned: impl Fn(f32) -> bool + Sync,
    ) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        let bits = values
            .par_chunks(64)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .fold(0u64, |w, (b, &v)| w | (u64::from(pruned(v)) << b))
            })
            .collect();
        Self { rows, cols, bits }
    }

    /// The mask with weight `i` (row-major) pruned where `flags[i] != 0`.
    pub(crate) fn from_flags(rows: usize, cols: usize, flags: &[u8]) -> Self {
        debug_assert_eq!(flags.len(), rows * cols);
        let bits = flags
            .par_chunks(64)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .fold(0u64, |w, (b, &f)| w | (u64::from(f != 0) << b))
            })
            .collect();
        Self { rows, cols, bits }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The raw words (bit `i % 64` of word `i / 64` is weight `i`).
    pub fn words(&self) -> &[u64] {
        &self.bits
    }

    pub fn is_pruned(&self, r: usize, c: usize) -> bool {
        self.bit(r * self.cols + c)
    }

    pub fn set(&mut self, r: usize, c: usize, pruned: bool) {
        assert!(r < self.rows && c < self.cols, "mask index out of range");
        self.set_bit(r * self.cols + c, pruned);
    }

    fn bit(&self, i: usize) -> bool {
        self.bits[i / 64] >> (i % 64) & 1 == 1
    }

    pub(crate) fn set_bit(&mut self, i: usize, pruned: bool) {
        let (w, b) = (i / 64, i % 64);
        if pruned {
            self.bits[w] |= 1 << b;
        } else {
            self.bits[w] &= !(1 << b);
        }
    }

    /// How many weights are pruned.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// How many weights of row `r` are pruned.
    pub fn row_count(&self, r: usize) -> usize {
        (r * self.cols..(r + 1) * self.cols)
            .filter(|&i| self.bit(i))
            .count()
    }

    /// The pruned fraction.
    pub fn sparsity(&self) -> f64 {
        let n = self.rows * self.cols;
        if n == 0 {
            0.0
        } else {
            self.count() as f64 / n as f64
        }
    }

    /// Zeroes the pruned weights of `w`.
    pub fn apply(&self, w: &mut Matrix) -> Result<()> {
        w.expect_shape("mask.apply weight", self.rows, self.cols)?;
        for (wi, &word) in self.bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let b = word.trailing_zeros() as usize;
                w.data[wi * 64 + b] = 0.0;
                word &= word - 1;
            }
        }
        Ok(())
    }

    /// Versioned little-endian bytes: `"WMSK"`, version (u32), rows (u64), cols (u64), words.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.bits.len() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.rows as u64).to_le_bytes());
        out.extend_from_slice(&(self.cols as u64).to_le_bytes());
        for w in &self.bits {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Parses [`Mask::to_bytes`] output, checking magic, version, length and padding bits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = CompressError::MaskBytes;
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(bad("missing the WMSK header"));
        }
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad("unknown version (written by a newer whittle?)"));
        }
        let rows = usize::try_from(u64_at(8)).map_err(|_| bad("rows overflow"))?;
        let cols = usize::try_from(u64_at(16)).map_err(|_| bad("cols overflow"))?;
        let n = rows.checked_mul(cols).ok_or(bad("rows x cols overflows"))?;
        let words = n.div_ceil(64);
        if bytes.len() - HEADER != words * 8 {
            return Err(bad("length does not match rows x cols"));
        }
        let bits: Vec<u64> = (0..words).map(|i| u64_at(HEADER + i * 8)).collect();
        if n % 64 != 0 && bits[words - 1] >> (n % 64) != 0 {
            return Err(bad("bits set past the end of the matrix"));
        }
        Ok(Self { rows, cols, bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_count_and_apply() {
        let mut m = Mask::new(3, 5);
        m.set(0, 1, true);
        m.set(2, 4, true);
        m.set(2, 0, true);
        m.set(2, 0, false);
        assert_eq!(m.count(), 2);
        assert_eq!((m.row_count(0), m.row_count(1), m.row_count(2)), (1, 0, 1));
        let mut w = Matrix::new(3, 5, (1..=15).map(|v| v as f32).collect()).unwrap();
        m.apply(&mut w).unwrap();
        let zeroed: Vec<usize> = (0..15).filter(|&i| w.data[i] == 0.0).collect();
        assert_eq!(zeroed, vec![1, 14]);
        assert!(m.apply(&mut Matrix::zeros(5, 3)).is_err());
    }

    #[test]
    fn bytes_round_trip_and_reject_corruption() {
        let m = Mask::from_fn(7, 11, |r, c| (r * 3 + c) % 4 == 0);
        let bytes = m.to_bytes();
        assert_eq!(bytes.len(), 24 + 8 * 2); // 77 bits -> 2 words
        assert_eq!(Mask::from_bytes(&bytes).unwrap(), m);
        let mut padded = bytes.clone();
        *padded.last_mut().unwrap() |= 0x80; // bit 127, past the 77 weights
        assert!(Mask::from_bytes(&padded).is_err());
        assert!(Mask::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut ver = bytes.clone();
        ver[4] = 2;
        assert!(Mask::from_bytes(&ver).is_err());
        assert!(Mask::from_bytes(b"nope").is_err());
    }
}
