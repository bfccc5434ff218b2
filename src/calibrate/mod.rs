//! Calibration: windows of tokens drawn from a dataset, and the input statistics of every linear
//! layer when those windows run through the model.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{LinearId, Llama, ModelConfig, ModelError, Proj, TensorMap};

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

/// The distinct inputs of a block's linear layers: q, k and v read one tensor, gate and up another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputGroup {
    Attention,
    Output,
    Mlp,
    Down,
}

impl InputGroup {
    pub fn of(p: Proj) -> Self {
        match p {
            Proj::Q | Proj::K | Proj::V => InputGroup::Attention,
            Proj::O => InputGroup::Output,
            Proj::Gate | Proj::Up => InputGroup::Mlp,
            Proj::Down => InputGroup::Down,
        }
    }

    /// The projection whose capture stands for the group.
    fn leader(self) -> Proj {
        match self {
            InputGroup::Attention => Proj::Q,
            InputGroup::Output => Proj::O,
            InputGroup::Mlp => Proj::Gate,
            InputGroup::Down => Proj::Down,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InputGroup::Attention => "attn_in",
            InputGroup::Output => "o_in",
            InputGroup::Mlp => "mlp_in",
            InputGroup::Down => "down_in",
        }
    }

    pub const ALL: [InputGroup; 4] = [
        InputGroup::Attention,
        InputGroup::Output,
        InputGroup::Mlp,
        InputGroup::Down,
    ];
}

/// Input statistics of the linear layers, accumulated over calibration sequences.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sequences seen.
    pub nsamples: usize,
    pub norms: SqNorms,
    /// Σ XᵀX (f32, [in, in]) per block and input group.
    pub xtx: BTreeMap<(usize, InputGroup), Tensor>,
}

impl Stats {
    /// Wanda's `scaler_row` for a layer: mean over sequences of ‖X_j‖².
    pub fn scaler(&self, id: LinearId) -> Option<Vec<f32>> {
        let n = self.nsamples.max(1) as f64;
        self.norms
            .get(&id)
            .map(|v| v.iter().map(|s| (s / n) as f32).collect())
    }

    /// SparseGPT's and GPTQ's Hessian for a layer: H = (2/n)·ΣXᵀX, n counted in sequences.
    pub fn hessian(&self, id: LinearId) -> Option<candle_core::Result<Tensor>> {
        let n = self.nsamples.max(1) as f64;
        self.xtx
            .get(&(id.layer, InputGroup::of(id.proj)))
            .map(|t| t.affine(2.0 / n, 0.0))
    }
}

/// What to accumulate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wanted {
    pub norms: bool,
    pub hessian: bool,
}

/// A capture hook accumulating `wanted` statistics into `stats`; the first error is kept.
fn accumulate<'a>(
    stats: &'a mut Stats,
    wanted: Wanted,
    failure: &'a mut Option<candle_core::Error>,
) -> impl FnMut(LinearId, &Tensor) + 'a {
    move |id: LinearId, input: &Tensor| {
        if failure.is_some() {
            return;
        }
        let result = (|| -> candle_core::Result<()> {
            let x = input.to_dtype(DType::F32)?;
            if wanted.norms {
                let v = x.sqr()?.sum((0, 1))?.to_vec1::<f32>()?;
                let a = stats.norms.entry(id).or_insert_with(|| vec![0.0; v.len()]);
                for (s, x) in a.iter_mut().zip(v) {
                    *s += x as f64;
                }
            }
            let group = InputGroup::of(id.proj);
            if wanted.hessian && group.leader() == id.proj {
                let (b, t, d) = x.dims3()?;
                let x = x.reshape((b * t, d))?;
                let xtx = x.t()?.matmul(&x)?;
                let key = (id.layer, group);
                let sum = match stats.xtx.remove(&key) {
                    Some(acc) => (acc + xtx)?,
                    None => xtx,
                };
                stats.xtx.insert(key, sum);
            }
            Ok(())
        })();
        if let Err(e) = result {
            *failure = Some(e);
        }
    }
}

fn batches(
    windows: &[Vec<u32>],
    batch_size: usize,
    device: &Device,
) -> candle_core::Result<Vec<Tensor>> {
    windows
        .chunks(batch_size.max(1))
        .map(|b| {
            let flat: Vec<u32> = b.iter().flatten().copied().collect();
            Tensor::from_vec(flat, (b.len(), b[0].len()), device)
        })
        .collect()
}

/// Runs `windows` through the dense model in batches and accumulates input statistics.
/// `tick` is called after each batch with the number of windows done; an error from it stops.
pub fn collect_stats(
    model: &Llama,
    windows: &[Vec<u32>],
    wanted: Wanted,
    batch_size: usize,
    device: &Device,
    tick: &mut dyn FnMut(u64) -> candle_core::Result<()>,
) -> Result<Stats, ModelError> {
    collect_stats_first(
        model,
        model.num_layers(),
        windows,
        wanted,
        batch_size,
        device,
        tick,
    )
}

/// [`collect_stats`] for the first `layers` blocks only.
pub fn collect_stats_first(
    model: &Llama,
    layers: usize,
    windows: &[Vec<u32>],
    wanted: Wanted,
    batch_size: usize,
    device: &Device,
    tick: &mut dyn FnMut(u64) -> candle_core::Result<()>,
) -> Result<Stats, ModelError> {
    let mut stats = Stats::default();
    for (ids, n) in batches(windows, batch_size, device)?
        .into_iter()
        .zip(windows.chunks(batch_size.max(1)).map(<[_]>::len))
    {
        let mut x = model.embed(&ids)?;
        for layer in 0..layers.min(model.num_layers()) {
            let mut failure = None;
            let out = {
                let mut capture = accumulate(&mut stats, wanted, &mut failure);
                model.block_forward(layer, &x, 0, None, Some(&mut capture))
            };
            if let Some(e) = failure {
                return Err(e.into());
            }
            x = out?;
        }
        stats.nsamples += n;
        tick(n as u64)?;
    }
    Ok(stats)
}

/// Calibration windows and how to run them: `batch_size` windows per forward pass on `device`.
pub struct Windows<'a> {
    pub windows: &'a [Vec<u32>],
    pub batch_size: usize,
    pub device: &'a Device,
}

/// Compresses a model block by block, the reference way: block i's statistics come from the
/// outputs of blocks 0..i−1 *after* they were compressed, and all linear layers of a block share
/// one pass. `compress(layer, stats, tensors)` returns the tensors that replace the layer's
/// weights; they go into `tensors` before the block's outputs are recomputed for the next one.
pub fn sequential(
    cfg: &ModelConfig,
    tensors: &mut TensorMap,
    windows: &Windows,
    wanted: Wanted,
    compress: &mut dyn FnMut(usize, &Stats, &TensorMap) -> Result<TensorMap, ModelError>,
    tick: &mut dyn FnMut(u64) -> candle_core::Result<()>,
) -> Result<(), ModelError> {
    let mut model = Llama::new(cfg, tensors)?;
    let mut hidden: Vec<Tensor> = batches(windows.windows, windows.batch_size, windows.device)?
        .iter()
        .map(|ids| model.embed(ids))
        .collect::<Result<_, _>>()?;
    for layer in 0..cfg.num_layers {
        let mut stats = Stats::default();
        for x in &hidden {
            let mut failure = None;
            let out = {
                let mut capture = accumulate(&mut stats, wanted, &mut failure);
                model.block_forward(layer, x, 0, None, Some(&mut capture))
            };
            if let Some(e) = failure {
                return Err(e.into());
            }
            out?;
            stats.nsamples += x.dim(0)?;
        }
        let replaced = compress(layer, &stats, tensors)?;
        tensors.extend(replaced);
        model = Llama::new(cfg, tensors)?;
        // In place, so only one batch's old activations are alive beside the new ones.
        for x in hidden.iter_mut() {
            *x = model.block_forward(layer, x, 0, None, None)?;
        }
        tick(1)?;
    }
    Ok(())
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
