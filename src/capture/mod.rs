//! Calibration: windows of tokens drawn from a dataset, and the input statistics of every linear
//! layer when those windows run through the model.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{hidden_for, Blocks, Capture, LinearId, ModelError, Proj};

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

/// Per linear layer, one value per input feature j: with [`Accumulation::Exact`] the f64 sum over
/// calibration tokens of x_j² (Wanda's `scaler_row` is this divided by the number of sequences),
/// with [`Accumulation::Reference`] `scaler_row` itself (f32 values).
pub type SqNorms = BTreeMap<LinearId, Vec<f64>>;

/// How input statistics are summed over the calibration sequences.
///
/// Near-ties between Wanda scores (or SparseGPT's) are decided by the last bits of these sums,
/// so on deep models the two modes lead to slightly different masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accumulation {
    /// One sum over every sequence, divided by their number once: Σx_j² in f64 (each batch's
    /// f32 sum over its tokens added in), ΣXᵀX in f32 batch by batch.
    #[default]
    Exact,
    /// The reference code's f32 running averages, updated once per sequence in window order, as
    /// its per-sequence forward hooks do: Wanda's `scaler_row` (`lib/layerwrapper.py`) and
    /// SparseGPT's and GPTQ's `H` (`add_batch`).
    Reference,
}

impl Accumulation {
    pub fn as_str(self) -> &'static str {
        match self {
            Accumulation::Exact => "exact",
            Accumulation::Reference => "reference",
        }
    }
}

/// The reference's rescaling when sequence number `seen + 1` arrives: its statistics are
/// multiplied by `seen / (seen + 1)` (a Python float, rounded to f32 by the tensor product).
fn keep_factor(seen: usize) -> f32 {
    (seen as f64 / (seen + 1) as f64) as f32
}

/// One step of Wanda's running average for one feature, in f32 and in the reference's order:
/// `scaler *= seen/(seen+1); scaler += torch.norm(x_j)**2 / (seen+1)`, where `sq` is the
/// sequence's Σx_j² and the norm is its square root.
pub fn wanda_reference_step(scaler: f32, sq: f32, seen: usize) -> f32 {
    let norm = sq.sqrt();
    let scaled = scaler * keep_factor(seen);
    scaled + norm * norm / (seen + 1) as f32
}

/// The distinct inputs of a block's linear layers: q, k and v (or GPT-2's fused qkv) read one
/// tensor, gate and up (or the MLP's first layer alone) another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputGroup {
    Attention,
    Output,
    Mlp,
    Down,
    /// T5's cross-attention query: the decoder's normed states.
    CrossQuery,
    /// T5's cross-attention keys and values: the encoder's output.
    CrossKv,
    /// T5's cross-attention output projection.
    CrossOutput,
}

impl InputGroup {
    pub fn of(p: Proj) -> Self {
        match p {
            Proj::Q | Proj::K | Proj::V | Proj::Qkv => InputGroup::Attention,
            Proj::O => InputGroup::Output,
            Proj::Gate | Proj::Up => InputGroup::Mlp,
            Proj::Down => InputGroup::Down,
            Proj::CrossQ => InputGroup::CrossQuery,
            Proj::CrossK | Proj::CrossV => InputGroup::CrossKv,
            Proj::CrossO => InputGroup::CrossOutput,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InputGroup::Attention => "attn_in",
            InputGroup::Output => "o_in",
            InputGroup::Mlp => "mlp_in",
            InputGroup::Down => "down_in",
            InputGroup::CrossQuery => "cross_q_in",
            InputGroup::CrossKv => "cross_kv_in",
            InputGroup::CrossOutput => "cross_o_in",
        }
    }

    pub const ALL: [InputGroup; 7] = [
        InputGroup::Attention,
        InputGroup::Output,
        InputGroup::Mlp,
        InputGroup::Down,
        InputGroup::CrossQuery,
        InputGroup::CrossKv,
        InputGroup::CrossOutput,
    ];
}

/// Input statistics of the linear layers, accumulated over calibration sequences.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sequences seen.
    pub nsamples: usize,
    pub accumulation: Accumulation,
    pub norms: SqNorms,
    /// Per block and input group (f32, [in, in]): Σ XᵀX when exact, the reference's running
    /// `H` = (2/n)·ΣXᵀX otherwise.
    pub xtx: BTreeMap<(usize, InputGroup), Tensor>,
}

impl Stats {
    pub fn new(accumulation: Accumulation) -> Self {
        Stats {
            accumulation,
            ..Stats::default()
        }
    }

    /// Wanda's `scaler_row` for a layer: mean over sequences of ‖X_j‖².
    pub fn scaler(&self, id: LinearId) -> Option<Vec<f32>> {
        let n = self.nsamples.max(1) as f64;
        let reference = self.accumulation == Accumulation::Reference;
        self.norms.get(&id).map(|v| {
            v.iter()
                .map(|&s| if reference { s as f32 } else { (s / n) as f32 })
                .collect()
        })
    }

    /// Puts the statistics of a weight that several blocks run (ALBERT's shared layers) under
    /// the first block's id, summed over every block that runs it: each `runs` lists one
    /// weight's blocks, first block first. A shared matrix is then compressed once, from all its
    /// inputs, as a hook on the shared module sees them in PyTorch. The sum is a scale away
    /// from the mean over all inputs, which Wanda's scores, SparseGPT and GPTQ do not see.
    pub fn merge_shared(&mut self, runs: &[Vec<LinearId>]) -> candle_core::Result<()> {
        let mut merged = std::collections::BTreeSet::new();
        for ids in runs.iter().filter(|ids| ids.len() > 1) {
            let first = ids[0];
            let parts: Vec<Vec<f64>> = ids.iter().filter_map(|id| self.norms.remove(id)).collect();
            if let Some(sum) = parts.into_iter().reduce(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            }) {
                self.norms.insert(first, sum);
            }
            // q, k and v share one input group: its Hessians are summed once.
            let key = |id: &LinearId| (id.layer, InputGroup::of(id.proj));
            if !merged.insert(key(&first)) {
                continue;
            }
            let mut sum: Option<Tensor> = None;
            for k in ids.iter().map(key) {
                if let Some(t) = self.xtx.remove(&k) {
                    sum = Some(match sum {
                        Some(s) => (s + t)?,
                        None => t,
                    });
                }
            }
            if let Some(t) = sum {
                self.xtx.insert(key(&first), t);
            }
        }
        Ok(())
    }

    /// SparseGPT's and GPTQ's Hessian for a layer: H = (2/n)·ΣXᵀX, n counted in sequences.
    pub fn hessian(&self, id: LinearId) -> Option<candle_core::Result<Tensor>> {
        let n = self.nsamples.max(1) as f64;
        let t = self.xtx.get(&(id.layer, InputGroup::of(id.proj)))?;
        Some(match self.accumulation {
            Accumulation::Exact => t.affine(2.0 / n, 0.0),
            Accumulation::Reference => Ok(t.clone()),
        })
    }
}

/// What to accumulate, and how.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wanted {
    pub norms: bool,
    pub hessian: bool,
    pub accumulation: Accumulation,
}

/// A capture hook accumulating `wanted` statistics into `stats`; the first error is kept. Used
/// for one pass over a block: the layers of an input group share one input, so the first of
/// them to run (LLaMA's q and gate, OPT's q) stands for the group's Hessian.
fn accumulate<'a>(
    stats: &'a mut Stats,
    wanted: Wanted,
    failure: &'a mut Option<candle_core::Error>,
) -> impl FnMut(LinearId, &Tensor) + 'a {
    let mut seen: Vec<(usize, InputGroup)> = Vec::new();
    // The layers of one input group read one tensor: its norms are summed once.
    let mut group_norms: Option<((usize, InputGroup), Vec<f32>)> = None;
    move |id: LinearId, input: &Tensor| {
        if failure.is_some() {
            return;
        }
        let group = InputGroup::of(id.proj);
        let first = !seen.contains(&(id.layer, group));
        if first {
            seen.push((id.layer, group));
        }
        let result = (|| -> candle_core::Result<()> {
            let x = input.to_dtype(DType::F32)?;
            let hessian = wanted.hessian && first;
            match stats.accumulation {
                Accumulation::Exact => {
                    if wanted.norms {
                        let key = (id.layer, group);
                        match &group_norms {
                            Some((k, v)) if *k == key && !first => add_sq_norms(stats, id, v),
                            _ => {
                                let v = sq_sums(&x, false)?.swap_remove(0);
                                add_sq_norms(stats, id, &v);
                                group_norms = Some((key, v));
                            }
                        }
                    }
                    if hessian {
                        add_xtx(stats, (id.layer, group), &x)?;
                    }
                }
                Accumulation::Reference => {
                    if wanted.norms {
                        running_scaler(stats, id, &x)?;
                    }
                    if hessian {
                        running_hessian(stats, (id.layer, group), &x)?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            *failure = Some(e);
        }
    }
}

/// Adds the batch's Σx_j² (an f32 sum over its tokens, from [`sq_sums`]) to the f64 sums.
fn add_sq_norms(stats: &mut Stats, id: LinearId, v: &[f32]) {
    let a = stats.norms.entry(id).or_insert_with(|| vec![0.0; v.len()]);
    for (s, &x) in a.iter_mut().zip(v) {
        *s += x as f64;
    }
}

/// Σx_j² of `x` [batch, tokens, d] per column j, over all its tokens (`per_sequence: false`,
/// one row) or over each sequence's (one row per sequence), in f32.
///
/// Each column is summed in token order from zero, which is the order of candle's own
/// `x.sqr()?.sum(..)` over leading dimensions, so the numbers are the same; on the CPU the sum
/// runs here, over column ranges in parallel, instead of candle's single-threaded strided loop.
fn sq_sums(x: &Tensor, per_sequence: bool) -> candle_core::Result<Vec<Vec<f32>>> {
    let (b, t, d) = x.dims3()?;
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return match per_sequence {
            true => x.sqr()?.sum(1)?.to_vec2(),
            false => Ok(vec![x.sqr()?.sum((0, 1))?.to_vec1()?]),
        };
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        unreachable!("a CPU tensor has CPU storage")
    };
    let (start, end) = layout.contiguous_offsets().expect("made contiguous above");
    let data = &cpu.as_slice::<f32>()?[start..end];
    let rows = if per_sequence { t } else { b * t };
    Ok(data
        .chunks(rows * d)
        .map(|group| column_sq_sums(group, d))
        .collect())
}

/// Columns per task of [`column_sq_sums`]: a few cache lines of each row.
const SQ_SUM_COLUMNS: usize = 64;

/// Σ over the rows of `data` (rows of `d` f32) of each column's square, row by row.
fn column_sq_sums(data: &[f32], d: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; d];
    out.par_chunks_mut(SQ_SUM_COLUMNS)
        .enumerate()
        .for_each(|(c, sums)| {
            let cols = c * SQ_SUM_COLUMNS..c * SQ_SUM_COLUMNS + sums.len();
            for row in data.chunks_exact(d) {
                for (s, &v) in sums.iter_mut().zip(&row[cols.clone()]) {
                    *s += v * v;
                }
            }
        });
    out
}

/// Adds the batch's XᵀX (one f32 product over all its tokens) to the sum.
fn add_xtx(stats: &mut Stats, key: (usize, InputGroup), x: &Tensor) -> candle_core::Result<()> {
    let (b, t, d) = x.dims3()?;
    let x = x.reshape((b * t, d))?;
    let xtx = x.t()?.matmul(&x)?;
    let sum = match stats.xtx.remove(&key) {
        Some(acc) => (acc + xtx)?,
        None => xtx,
    };
    stats.xtx.insert(key, sum);
    Ok(())
}

/// Wanda's running `scaler_row`, one update per sequence of the batch (see
/// [`wanda_reference_step`]); `stats.nsamples` counts the sequences of earlier batches.
fn running_scaler(stats: &mut Stats, id: LinearId, x: &Tensor) -> candle_core::Result<()> {
    let d = x.dim(2)?;
    let per_seq = sq_sums(x, true)?;
    let seen = stats.nsamples;
    let a = stats.norms.entry(id).or_insert_with(|| vec![0.0; d]);
    for (i, sq) in per_seq.iter().enumerate() {
        for (s, &q) in a.iter_mut().zip(sq) {
            *s = f64::from(wanda_reference_step(*s as f32, q, seen + i));
        }
    }
    Ok(())
}

/// SparseGPT's running `H`, one update per sequence, in f32 and in its order:
/// `H *= seen/(seen+1); x = sqrt(2/(seen+1))·x; H += xᵀx`.
fn running_hessian(
    stats: &mut Stats,
    key: (usize, InputGroup),
    x: &Tensor,
) -> candle_core::Result<()> {
    let (b, _, d) = x.dims3()?;
    let seen = stats.nsamples;
    let mut h = match stats.xtx.remove(&key) {
        Some(h) => h,
        None => Tensor::zeros((d, d), DType::F32, x.device())?,
    };
    for i in 0..b {
        let n = seen + i;
        // math.sqrt in f64, rounded to f32 when it multiplies the f32 input.
        let scale = (2.0 / (n + 1) as f64).sqrt() as f32;
        let xi = x.get(i)?.affine(f64::from(scale), 0.0)?;
        h = (h.affine(f64::from(keep_factor(n)), 0.0)? + xi.t()?.matmul(&xi)?)?;
    }
    stats.xtx.insert(key, h);
    Ok(())
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
    model: &dyn Blocks,
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

/// [`Blocks::block_forward`] over `x`, `chunk` windows at a time; `capture` sees each linear
/// layer's input once, for all of `x`.
fn forward_in_chunks(
    model: &dyn Blocks,
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
    model: &dyn Blocks,
    windows: &[Vec<u32>],
    wanted: Wanted,
    batch_size: usize,
    device: &Device,
    tick: crate::cancel::Tick,
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
    model: &dyn Blocks,
    layers: usize,
    windows: &[Vec<u32>],
    wanted: Wanted,
    batch_size: usize,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<Stats, ModelError> {
    let mut stats = Stats::new(wanted.accumulation);
    let sizes: Vec<usize> = windows.chunks(batch_size.max(1)).map(<[_]>::len).collect();
    if model.is_streamed() {
        // Layer-wise, so each block is read once. A layer's statistics see the batches in the
        // same order, with the same running count, as batch by batch: the same numbers.
        let ids = batches(windows, batch_size, device)?;
        let mut hidden = hidden_for(model, &ids, "calibration")?;
        for i in &ids {
            hidden.push(model.embed(i)?)?;
        }
        drop(ids);
        let chunk = forward_chunk(windows.first().map_or(1, Vec::len), device);
        for layer in 0..layers.min(model.num_layers()) {
            stats.nsamples = 0;
            hidden.update(|i, x| {
                let y = run_block(model, layer, x, chunk, Some((&mut stats, wanted)))?;
                stats.nsamples += sizes[i];
                Ok(y)
            })?;
            tick(0)?;
        }
        model.release();
        tick(windows.len() as u64)?;
        return Ok(stats);
    }
    for (ids, n) in batches(windows, batch_size, device)?.into_iter().zip(sizes) {
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

/// A sequential compressor's step: replace block `layer`'s weights from its statistics and
/// return the model that computes with them.
pub type CompressBlock<'a, E> = dyn FnMut(usize, &Stats) -> Result<Box<dyn Blocks>, E> + 'a;

/// Compresses a model block by block, the reference way: block i's statistics come from the
/// outputs of blocks 0..i−1 *after* they were compressed, and all linear layers of a block share
/// one pass. `compress(layer, stats)` replaces the layer's weights and returns the model that
/// computes with them; the block's outputs are recomputed with it for the next block.
///
/// `compress` fails with the caller's own error type, which the driver returns as it is.
///
/// Memory: what the model holds (all of it, or one block when streamed), the hidden states of
/// every window at one block boundary, and one chunk's activations inside the block.
pub fn sequential<
    E: From<ModelError> + From<candle_core::Error> + From<crate::cancel::Cancelled>,
>(
    model: Box<dyn Blocks>,
    layers: usize,
    windows: &Windows,
    wanted: Wanted,
    compress: &mut CompressBlock<E>,
    tick: crate::cancel::Tick,
) -> Result<(), E> {
    let mut model = model;
    let ids = batches(windows.windows, windows.batch_size, windows.device)?;
    let mut hidden = hidden_for(&*model, &ids, "sequential compression")?;
    for i in &ids {
        hidden.push(model.embed(i)?)?;
    }
    drop(ids);
    for layer in 0..layers {
        let mut stats = Stats::new(wanted.accumulation);
        for i in 0..hidden.len() {
            let x = hidden.get(i)?;
            run_block(
                &*model,
                layer,
                &x,
                windows.chunk,
                Some((&mut stats, wanted)),
            )?;
            stats.nsamples += x.dim(0)?;
        }
        model.release();
        model = compress(layer, &stats)?;
        drop(stats);
        // In place, so only one batch's old activations are alive beside the new ones.
        hidden.update(|_, x| run_block(&*model, layer, x, windows.chunk, None))?;
        model.release();
        tick(1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::wanda::wanda;
    use crate::compress::Matrix;
    use crate::model::{ModelConfig, TensorMap};

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
        accumulation: Accumulation::Exact,
    };

    #[test]
    fn forward_chunks_hold_whole_windows_of_about_1024_tokens() {
        assert_eq!(forward_chunk(512, &Device::Cpu), 2);
        assert_eq!(forward_chunk(128, &Device::Cpu), 8);
        assert_eq!(forward_chunk(100, &Device::Cpu), 10);
        assert_eq!(forward_chunk(4096, &Device::Cpu), 1);
    }

    #[test]
    fn squared_sums_are_candles_bit_for_bit() {
        for (b, t, d) in [(1, 1, 1), (3, 17, 70), (2, 64, 128), (5, 9, 200)] {
            let x = Tensor::randn(0f32, 3.0, (b, t, d), &Device::Cpu).unwrap();
            let whole: Vec<f32> = x.sqr().unwrap().sum((0, 1)).unwrap().to_vec1().unwrap();
            assert_eq!(sq_sums(&x, false).unwrap(), vec![whole]);
            let each: Vec<Vec<f32>> = x.sqr().unwrap().sum(1).unwrap().to_vec2().unwrap();
            assert_eq!(sq_sums(&x, true).unwrap(), each);
            // A strided view is summed as its contiguous copy.
            let xt = x.transpose(0, 1).unwrap();
            let want: Vec<f32> = xt.sqr().unwrap().sum((0, 1)).unwrap().to_vec1().unwrap();
            assert_eq!(sq_sums(&xt, false).unwrap(), vec![want]);
        }
    }

    #[test]
    fn chunked_blocks_match_one_pass_bit_for_bit() {
        let (cfg, tensors) = tiny_model();
        let model = cfg.architecture().build(&cfg, &tensors, Vec::new());
        let model = model.unwrap();
        let model = model.blocks();
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
                let out = run_block(model, layer, &x, chunk, Some((&mut stats, BOTH))).unwrap();
                assert_eq!(bits(&out), bits(&want), "layer {layer} chunk {chunk}");
                assert_same_stats(&stats, &one, &format!("layer {layer} chunk {chunk}"));
                let plain = run_block(model, layer, &x, chunk, None).unwrap();
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
            let arch = cfg.architecture();
            let mut compress = |layer: usize, stats: &Stats| {
                for p in Proj::ALL {
                    let id = LinearId::new(layer, p);
                    let h = stats.hessian(id).unwrap().unwrap();
                    let f = 1.0
                        + stats.scaler(id).unwrap()[0] as f64
                        + h.sum_all()?.to_scalar::<f32>()? as f64 * 1e-3;
                    let name = arch.weight_name(&cfg, id);
                    let scaled = tensors[&name].affine(1.0 / f, 0.0)?;
                    tensors.insert(name, scaled);
                }
                seen.push(Stats {
                    nsamples: stats.nsamples,
                    accumulation: stats.accumulation,
                    norms: stats.norms.clone(),
                    xtx: stats.xtx.clone(),
                });
                Ok(arch.build(&cfg, &tensors, Vec::new())?.into_blocks())
            };
            let w = Windows {
                windows: &windows,
                batch_size: 4,
                chunk,
                device: &Device::Cpu,
            };
            let model = arch.build(&cfg, &original, Vec::new()).unwrap();
            let model = model.into_blocks();
            sequential::<ModelError>(model, 2, &w, BOTH, &mut compress, &mut |_| Ok(())).unwrap();
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

    /// The reference's statistics as torch computes them (tests/fixtures/accumulation/make.py).
    fn torch_reference() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/accumulation/torch_reference.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f32> {
        let a = v.as_array().unwrap();
        a.iter().map(|x| x.as_f64().unwrap() as f32).collect()
    }

    /// A fixture input [windows, tokens, features].
    fn fixture_input(case: &serde_json::Value) -> Tensor {
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        Tensor::from_vec(floats(&case["x"]), shape, &Device::Cpu).unwrap()
    }

    /// Feeds `x` to the capture hook of one layer 8 windows at a time, as `collect_stats` does.
    fn accumulate_batches(x: &Tensor, wanted: Wanted) -> Stats {
        let mut stats = Stats::new(wanted.accumulation);
        let n = x.dim(0).unwrap();
        for start in (0..n).step_by(8) {
            let batch = x.narrow(0, start, 8.min(n - start)).unwrap();
            let mut failure = None;
            accumulate(&mut stats, wanted, &mut failure)(LinearId::new(0, Proj::Q), &batch);
            assert!(failure.is_none());
            stats.nsamples += batch.dim(0).unwrap();
        }
        stats
    }

    fn f32_bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn near_ties_follow_the_reference_accumulation() {
        let case = &torch_reference()["near_tie"];
        let x = fixture_input(case);
        let id = LinearId::new(0, Proj::Q);
        let scaler = |accumulation| {
            let wanted = Wanted {
                norms: true,
                hessian: false,
                accumulation,
            };
            accumulate_batches(&x, wanted).scaler(id).unwrap()
        };
        let (exact, reference) = (scaler(Accumulation::Exact), scaler(Accumulation::Reference));
        // Torch's f32 running average, bit for bit, across the two batches.
        assert_eq!(f32_bits(&reference), f32_bits(&floats(&case["scaler_row"])));
        // Features 0 and 1 see the same values in another order: equal exact means (13.75),
        // running averages one f32 step apart.
        assert_eq!((exact[0], exact[1]), (13.75, 13.75));
        assert!(reference[1] < reference[0]);
        // So Wanda on a row of equal weights, pruning 1 of 4, cuts another column: the tie goes
        // to the lower column, the reference's sums make column 1 the smallest.
        let w = Matrix::new(1, 4, vec![1.0; 4]).unwrap();
        let cut = |s: &[f32]| {
            let m = wanda(&w, s, 0.25).unwrap();
            (0..4).filter(|&c| m.is_pruned(0, c)).collect::<Vec<_>>()
        };
        assert_eq!(cut(&exact), vec![0]);
        assert_eq!(cut(&reference), vec![1]);
    }

    #[test]
    fn reference_hessian_matches_torch_bit_for_bit() {
        let case = &torch_reference()["one_token"];
        let x = fixture_input(case);
        let id = LinearId::new(0, Proj::Q);
        let run = |accumulation| {
            let wanted = Wanted {
                norms: true,
                hessian: true,
                accumulation,
            };
            accumulate_batches(&x, wanted)
        };
        let reference = run(Accumulation::Reference);
        let h = reference.hessian(id).unwrap().unwrap();
        assert_eq!(bits(&h), f32_bits(&floats(&case["hessian"])));
        let scaler = reference.scaler(id).unwrap();
        assert_eq!(f32_bits(&scaler), f32_bits(&floats(&case["scaler_row"])));
        // The exact sums give the same statistics up to f32 rounding.
        let exact = run(Accumulation::Exact).hessian(id).unwrap().unwrap();
        let (e, r) = (
            exact.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            h.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (a, b) in e.iter().zip(&r) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
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

    #[test]
    fn shared_weights_take_the_sum_over_their_blocks() {
        let mut stats = Stats::new(Accumulation::Exact);
        let (q0, k0, q2, k2) = (
            LinearId::new(0, Proj::Q),
            LinearId::new(0, Proj::K),
            LinearId::new(2, Proj::Q),
            LinearId::new(2, Proj::K),
        );
        let up1 = LinearId::new(1, Proj::Up);
        for (id, v) in [
            (q0, [1.0, 2.0]),
            (k0, [1.0, 2.0]),
            (q2, [10.0, 20.0]),
            (k2, [10.0, 20.0]),
        ] {
            stats.norms.insert(id, v.to_vec());
        }
        stats.norms.insert(up1, vec![5.0]);
        let t = |v: [f32; 4]| Tensor::from_vec(v.to_vec(), (2, 2), &Device::Cpu).unwrap();
        stats
            .xtx
            .insert((0, InputGroup::Attention), t([1., 2., 3., 4.]));
        stats
            .xtx
            .insert((2, InputGroup::Attention), t([10., 20., 30., 40.]));
        stats.xtx.insert((1, InputGroup::Mlp), t([7., 7., 7., 7.]));
        // q and k of stored layer 0 run in blocks 0 and 2; block 1's MLP is its own.
        stats
            .merge_shared(&[vec![q0, q2], vec![k0, k2], vec![up1]])
            .unwrap();
        assert_eq!(stats.norms[&q0], [11.0, 22.0]);
        assert_eq!(stats.norms[&k0], [11.0, 22.0]);
        assert_eq!(stats.norms[&up1], [5.0]);
        assert!(!stats.norms.contains_key(&q2) && !stats.norms.contains_key(&k2));
        // q and k share one input: its Hessian is summed once, not once per projection.
        let h = stats.xtx[&(0, InputGroup::Attention)]
            .flatten_all()
            .unwrap();
        assert_eq!(h.to_vec1::<f32>().unwrap(), [11., 22., 33., 44.]);
        assert!(!stats.xtx.contains_key(&(2, InputGroup::Attention)));
        let m = stats.xtx[&(1, InputGroup::Mlp)].flatten_all().unwrap();
        assert_eq!(m.to_vec1::<f32>().unwrap(), [7.; 4]);
    }
}
