//! Random unstructured pruning: a seeded control for the knowledge study's LM-head experiments.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{torch_prune_count, Mask, Matrix, Result};

/// Prunes exactly `round(numel·s)` weights (half to even, as torch's `random_unstructured`
/// counts) chosen uniformly at random. The same seed gives the same mask (ChaCha8, stable across
/// platforms and versions of this crate; torch's generator cannot be matched, only its count).
pub fn random(w: &Matrix, s: f64, seed: u64) -> Result<Mask> {
    let k = torch_prune_count(w.numel(), s)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut mask = Mask::new(w.rows, w.cols);
    for i in rand::seq::index::sample(&mut rng, w.numel(), k) {
        mask.set(i / w.cols, i % w.cols, true);
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_count_and_seeded() {
        let w = Matrix::new(7, 9, vec![1.0; 63]).unwrap();
        let a = random(&w, 0.5, 3).unwrap();
        assert_eq!(a.count(), 32); // round(31.5), half to even; floor would give 31
        assert_eq!(random(&w, 0.5, 3).unwrap(), a);
        assert_ne!(random(&w, 0.5, 4).unwrap(), a);
        assert_eq!(random(&w, 0.0, 3).unwrap().count(), 0);
    }

    #[test]
    fn independent_of_the_values() {
        let a = Matrix::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = Matrix::new(2, 3, vec![-9.0, 0.0, 0.5, 7.0, 1.0, 2.0]).unwrap();
        assert_eq!(random(&a, 0.5, 0).unwrap(), random(&b, 0.5, 0).unwrap());
    }
}
