//! Calibration: windows of tokens drawn from a dataset, and the input statistics of every linear
//! layer when those windows run through the model.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{Capture, LinearId, Llama, ModelConfig, ModelError, Proj, TensorMap};

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

/// Tokens per forward pass of a block on the CPU (whole windows, at least one).
const FORWARD_TOKENS: usize = 1024;

/// Windows of `seqlen` tokens per forward pass of a block inside a batch: it bounds the attention
/// scores and MLP activations alive at once. Blocks treat windows independently and the CPU
/// matrix products sum every row in the same order whatever their number of rows, provided it is
/// not tiny (gemm takes another kernel for products of at most 256 entries), so results are
/// bit-identical to one pass over the batch; statistics are still accumulated batch by batch.
/// Other devices run whole batches: their libraries may pick kernels by shape.
pub fn forward_chunk(seqlen: usize, device: &Device) -> usize {
    if device.is_cpu() {
        (FORWARD_TOKENS / seqlen.max(1)).max(1)
    } else {
        usize::MAX
    }
}

/// Runs block `layer` over the batch `x` [windows, seq, hidden], `chunk` windows per forward
/// pass, and returns its output. With `stats`, the inputs of the linear layers are gathered over
/// the whole batch and accumulated as one, so the sums are those of a single pass over `x`.
fn run_block(
    model: &Llama,
    layer: usize,
    x: &Tensor,
    chunk: usize,
    stats: Option<(&mut Stats, Wanted)>,
) -> Result<Tensor, ModelError> {
    let Some((stats, wanted)) = stats else {
        return forward_in_chunks(model, layer, x, chunk, None);
    };
    let mut failure = None;
    let out = {
        let mut capture = accumulate(stats, wanted, &mut failure);
        forward_in_chunks(model, layer, x, chunk, Some(&mut capture))
    };
    if let Some(e) = failure {
        return Err(e.into());
    }
    out
}

/// [`Llama::block_forward`] over `x`, `chunk` windows at a time; `capture` sees each linear
/// layer's input once, for all of `x`.
fn forward_in_chunks(
    model: &Llama,
    layer: usize,
    x: &Tensor,
    chunk: usize,
    capture: Option<Capture<'_>>,
) -> Result<Tensor, ModelError> {
    let (n, chunk) = (x.dim(0)?, chunk.max(1));
    if n <= chunk {
        return model.block_forward(layer, x, 0, None, capture);
    }
    // Each layer's input, chunk by chunk, in the order the block reads them.
    let mut inputs: Vec<(LinearId, Vec<Tensor>)> = Vec::new();
    let mut keep = |id: LinearId, input: &Tensor| match inputs.iter_mut().find(|(i, _)| *i == id) {
        Some((_, parts)) => parts.push(input.clone()),
        None => inputs.push((id, vec![input.clone()])),
    };
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    for start in (0..n).step_by(chunk) {
        let part = x.narrow(0, start, chunk.min(n - start))?;
        let keep: Option<Capture<'_>> = match capture {
            Some(_) => Some(&mut keep),
            None => None,
        };
        outs.push(model.block_forward(layer, &part, 0, None, keep)?);
    }
    if let Some(capture) = capture {
        for (id, parts) in inputs {
            capture(id, &Tensor::cat(&parts, 0)?);
        }
    }
    Ok(Tensor::cat(&outs, 0)?)
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
        let chunk = forward_chunk(ids.dim(1)?, device);
        let mut x = model.embed(&ids)?;
        for layer in 0..layers.min(model.num_layers()) {
            x = run_block(model, layer, &x, chunk, Some((&mut stats, wanted)))?;
        }
        stats.nsamples += n;
        tick(n as u64)?;
    }
    Ok(stats)
}

/// Calibration windows and how to run them: `batch_size` windows per batch (statistics are summed
/// batch by batch), `chunk` windows per forward pass within a batch (see [`forward_chunk`]), on
/// `device`.
pub struct Windows<'a> {
    pub windows: &'a [Vec<u32>],
    pub batch_size: usize,
    pub chunk: usize,
    pub device: &'a Device,
}

/// Compresses a model block by block, the reference way: block i's statistics come from the
/// outputs of blocks 0..i−1 *after* they were compressed, and all linear layers of a block share
/// one pass. `compress(layer, stats, tensors)` returns the tensors that replace the layer's
/// weights; they go into `tensors` before the block's outputs are recomputed for the next one.
///
/// Memory: the model, the hidden states of every window at one block boundary, and one chunk's
/// activations inside the block.
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
            run_block(&model, layer, x, windows.chunk, Some((&mut stats, wanted)))?;
            stats.nsamples += x.dim(0)?;
        }
        let replaced = compress(layer, &stats, tensors)?;
        drop(stats);
        tensors.extend(replaced);
        model = Llama::new(cfg, tensors)?;
        // In place, so only one batch's old activations are alive beside the new ones.
        for x in hidden.iter_mut() {
            *x = run_block(&model, layer, x, windows.chunk, None)?;
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

    /// A 2-block model with random weights: 32 wide, 4 heads over 2 KV heads.
    fn tiny_model() -> (ModelConfig, TensorMap) {
        let cfg = ModelConfig::from_json(
            r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 50, "rms_norm_eps": 1e-5}"#,
        )
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let tensors = crate::model::expected_tensors(&cfg)
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let centre = if shape.len() == 1 { 1.0 } else { 0.0 };
                let v: Vec<f32> = (0..n)
                    .map(|_| centre + rng.random_range(-0.3f32..0.3))
                    .collect();
                (name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
            })
            .collect();
        (cfg, tensors)
    }

    fn tiny_windows(n: usize, seqlen: usize) -> Vec<Vec<u32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        (0..n)
            .map(|_| (0..seqlen).map(|_| rng.random_range(0..50)).collect())
            .collect()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    fn assert_same_stats(a: &Stats, b: &Stats, what: &str) {
        assert_eq!(a.nsamples, b.nsamples, "{what}");
        assert_eq!(a.norms, b.norms, "{what}: norms");
        assert_eq!(
            a.xtx.keys().collect::<Vec<_>>(),
            b.xtx.keys().collect::<Vec<_>>(),
            "{what}"
        );
        for (k, t) in &a.xtx {
            assert_eq!(bits(t), bits(&b.xtx[k]), "{what}: xtx {k:?}");
        }
    }

    const BOTH: Wanted = Wanted {
        norms: true,
        hessian: true,
    };

    #[test]
    fn forward_chunks_hold_whole_windows_of_about_1024_tokens() {
        assert_eq!(forward_chunk(512, &Device::Cpu), 2);
        assert_eq!(forward_chunk(128, &Device::Cpu), 8);
        assert_eq!(forward_chunk(100, &Device::Cpu), 10);
        assert_eq!(forward_chunk(4096, &Device::Cpu), 1);
    }

    #[test]
    fn chunked_blocks_match_one_pass_bit_for_bit() {
        let (cfg, tensors) = tiny_model();
        let model = Llama::new(&cfg, &tensors).unwrap();
        let ids = &batches(&tiny_windows(5, 64), 5, &Device::Cpu).unwrap()[0];
        let x = model.embed(ids).unwrap();
        for layer in 0..2 {
            // The reference: one forward over all five windows, accumulating as it goes.
            let mut one = Stats::default();
            let mut failure = None;
            let want = {
                let mut capture = accumulate(&mut one, BOTH, &mut failure);
                model
                    .block_forward(layer, &x, 0, None, Some(&mut capture))
                    .unwrap()
            };
            assert!(failure.is_none());
            assert_eq!(one.xtx.len(), 4);
            assert_eq!(one.norms.len(), 7);
            for chunk in [1, 2, 3, 5, 8] {
                let mut stats = Stats::default();
                let out = run_block(&model, layer, &x, chunk, Some((&mut stats, BOTH))).unwrap();
                assert_eq!(bits(&out), bits(&want), "layer {layer} chunk {chunk}");
                assert_same_stats(&stats, &one, &format!("layer {layer} chunk {chunk}"));
                let plain = run_block(&model, layer, &x, chunk, None).unwrap();
                assert_eq!(bits(&plain), bits(&want), "layer {layer} chunk {chunk}");
            }
        }
    }

    #[test]
    fn sequential_results_do_not_depend_on_the_chunk() {
        let (cfg, original) = tiny_model();
        let windows = tiny_windows(7, 64);
        // Each linear layer shrinks by a factor taken from its statistics, so that any change in
        // them reaches the weights and, through them, the next block's inputs.
        let run = |chunk: usize| {
            let mut tensors = original.clone();
            let mut seen = Vec::new();
            let mut compress = |layer: usize, stats: &Stats, t: &TensorMap| {
                let mut out = TensorMap::new();
                for p in Proj::ALL {
                    let id = LinearId::new(layer, p);
                    let h = stats.hessian(id).unwrap().unwrap();
                    let f = 1.0
                        + stats.scaler(id).unwrap()[0] as f64
                        + h.sum_all()?.to_scalar::<f32>()? as f64 * 1e-3;
                    out.insert(id.weight_name(), t[&id.weight_name()].affine(1.0 / f, 0.0)?);
                }
                seen.push(Stats {
                    nsamples: stats.nsamples,
                    norms: stats.norms.clone(),
                    xtx: stats.xtx.clone(),
                });
                Ok(out)
            };
            let w = Windows {
                windows: &windows,
                batch_size: 4,
                chunk,
                device: &Device::Cpu,
            };
            sequential(&cfg, &mut tensors, &w, BOTH, &mut compress, &mut |_| Ok(())).unwrap();
            (tensors, seen)
        };
        let (want, want_stats) = run(4);
        assert_eq!(want_stats.len(), 2);
        assert_eq!(want_stats[1].nsamples, 7);
        for chunk in [1, 3] {
            let (got, stats) = run(chunk);
            for (a, b) in stats.iter().zip(&want_stats) {
                assert_same_stats(a, b, &format!("chunk {chunk}"));
            }
            for (name, t) in &want {
                assert_eq!(bits(&got[name]), bits(t), "{name}, chunk {chunk}");
            }
        }
        // The weights did change, block by block.
        let q = "model.layers.1.self_attn.q_proj.weight";
        assert_ne!(bits(&want[q]), bits(&original[q]));
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
