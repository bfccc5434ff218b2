//! Calibration: windows of tokens drawn from a dataset, and the input statistics of every linear
//! layer when those windows run through the model.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{LinearId, Llama, ModelError};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error(
        "no document of the dataset is longer than seqlen = {seqlen} tokens (after {draws} draws): \
         lower `seqlen`, or use `sampling: contiguous` to cut windows across documents"
    )]
    NoLongDocument { seqlen: usize, draws: usize },
    #[error(
        "the dataset has {available} tokens, enough for {windows} windows of {seqlen}, but \
         `samples: {samples}` asks for more: lower `samples` or `seqlen`, or use a larger dataset"
    )]
    TooShort {
        available: usize,
        windows: usize,
        seqlen: usize,
        samples: usize,
    },
    #[error("tokenizing the dataset failed: {0}")]
    Tokenize(String),
}

/// The reference sampler: draw a random document until one is longer than `seqlen` tokens, then a
/// random window of it. Documents are tokenized lazily, only when drawn.
pub fn random_windows(
    n_docs: usize,
    mut tokenize: impl FnMut(usize) -> Result<Vec<u32>, String>,
    samples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>, SampleError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cache: HashMap<usize, Vec<u32>> = HashMap::new();
    let max_draws = 1000 * samples.max(1) + 10 * n_docs;
    let mut draws = 0;
    let mut out = Vec::with_capacity(samples);
    while out.len() < samples {
        if n_docs == 0
            || draws >= max_draws
            || (cache.len() == n_docs && cache.values().all(|d| d.len() <= seqlen))
        {
            return Err(SampleError::NoLongDocument { seqlen, draws });
        }
        draws += 1;
        let i = rng.random_range(0..n_docs);
        let doc = match cache.entry(i) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(tokenize(i).map_err(SampleError::Tokenize)?)
            }
        };
        if doc.len() <= seqlen {
            continue;
        }
        // As Python's randint(0, len - seqlen - 1), both ends included.
        let start = rng.random_range(0..doc.len() - seqlen);
        out.push(doc[start..start + seqlen].to_vec());
    }
    Ok(out)
}

/// The first `samples` non-overlapping windows of a token stream.
pub fn contiguous_windows(
    tokens: &[u32],
    samples: usize,
    seqlen: usize,
) -> Result<Vec<Vec<u32>>, SampleError> {
    let windows = tokens.len() / seqlen;
    if windows < samples {
        return Err(SampleError::TooShort {
            available: tokens.len(),
            windows,
            seqlen,
            samples,
        });
    }
    Ok(tokens
        .chunks_exact(seqlen)
        .take(samples)
        .map(<[u32]>::to_vec)
        .collect())
}

/// Per linear layer, Σ over calibration tokens of x_j² for every input feature j (f64 sums).
/// Wanda's `scaler_row` is this divided by the number of sequences.
pub type SqNorms = BTreeMap<LinearId, Vec<f64>>;

/// Runs `windows` through the dense model in batches and accumulates input statistics.
/// `tick` is called after each batch with the number of windows done; an error from it stops.
pub fn collect_sq_norms(
    model: &Llama,
    windows: &[Vec<u32>],
    batch_size: usize,
    device: &Device,
    tick: &mut dyn FnMut(u64) -> candle_core::Result<()>,
) -> Result<SqNorms, ModelError> {
    let mut acc: SqNorms = BTreeMap::new();
    for batch in windows.chunks(batch_size.max(1)) {
        let flat: Vec<u32> = batch.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (batch.len(), batch[0].len()), device)?;
        let mut x = model.embed(&ids)?;
        for layer in 0..model.num_layers() {
            let mut failure: Option<candle_core::Error> = None;
            let mut capture = |id: LinearId, input: &Tensor| {
                if failure.is_some() {
                    return;
                }
                let sums = input
                    .to_dtype(DType::F32)
                    .and_then(|t| t.sqr())
                    .and_then(|t| t.sum((0, 1)))
                    .and_then(|t| t.to_vec1::<f32>());
                match sums {
                    Ok(v) => {
                        let a = acc.entry(id).or_insert_with(|| vec![0.0; v.len()]);
                        for (s, x) in a.iter_mut().zip(v) {
                            *s += x as f64;
                        }
                    }
                    Err(e) => failure = Some(e),
                }
            };
            x = model.block_forward(layer, &x, 0, None, Some(&mut capture))?;
            if let Some(e) = failure {
                return Err(e.into());
            }
        }
        tick(batch.len() as u64)?;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_takes_the_first_windows() {
        let t: Vec<u32> = (0..10).collect();
        let w = contiguous_windows(&t, 2, 4).unwrap();
        assert_eq!(w, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        assert!(matches!(
            contiguous_windows(&t, 3, 4),
            Err(SampleError::TooShort { windows: 2, .. })
        ));
    }

    #[test]
    fn random_windows_are_seeded_and_from_long_documents() {
        let docs: Vec<Vec<u32>> =
            vec![(0..3).collect(), (100..120).collect(), (200..260).collect()];
        let tok = |i: usize| Ok(docs[i].clone());
        let a = random_windows(3, tok, 8, 5, 0).unwrap();
        let b = random_windows(3, tok, 8, 5, 0).unwrap();
        let c = random_windows(3, tok, 8, 5, 1).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        for w in &a {
            assert_eq!(w.len(), 5);
            // Contiguous tokens of one document, never the short one.
            assert!(w[0] >= 100);
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
            // The last token of a document is never in a window (randint upper bound).
            assert!(*w.last().unwrap() != 119 && *w.last().unwrap() != 259);
        }
    }

    #[test]
    fn random_windows_fail_cleanly_without_long_documents() {
        let r = random_windows(2, |_| Ok(vec![1, 2, 3]), 1, 5, 0);
        assert!(matches!(
            r,
            Err(SampleError::NoLongDocument { seqlen: 5, .. })
        ));
    }
}
