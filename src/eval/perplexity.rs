//! Perplexity by the WikiText protocol: one token stream cut into non-overlapping windows.

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

use crate::model::{CausalLm, ModelError};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Perplexity {
    /// exp(mean NLL over every scored position).
    pub ppl: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub nll: f64,
    /// Scored (predicted) tokens.
    pub tokens: usize,
    /// Windows (or document chunks) run through the model.
    pub windows: usize,
    pub seqlen: usize,
    /// Tokens in the whole stream (all documents) before cutting.
    pub stream_tokens: usize,
    /// NLL sum and scored tokens of each window or chunk, in order.
    #[serde(skip)]
    pub per_window: Vec<Scored>,
}

/// The summed NLL of a window's scored tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scored {
    pub nll_sum: f64,
    pub tokens: usize,
}

/// A sequence to run and the first of its positions to score: position j ≥ 1 is token j,
/// predicted from the logits at j − 1.
struct Job<'a> {
    tokens: &'a [u32],
    from: usize,
}

use crate::cancel::Tick;

/// Non-overlapping windows of `seqlen` tokens; the remainder is dropped; at most `limit` windows.
pub fn windows(tokens: &[u32], seqlen: usize, limit: Option<usize>) -> Vec<&[u32]> {
    let n = tokens.len() / seqlen;
    let n = limit.map_or(n, |l| n.min(l));
    tokens.chunks_exact(seqlen).take(n).collect()
}

/// Sliding windows as Hugging Face's fixed-length perplexity recipe runs them: a window of up to
/// `seqlen` tokens starts every `stride` tokens and scores only the tokens past the previous
/// window's end, so every token after the first is scored exactly once, with up to
/// `seqlen − stride` tokens of extra context. Returns (window, first scored position).
pub fn sliding_windows(
    tokens: &[u32],
    seqlen: usize,
    stride: usize,
    limit: Option<usize>,
) -> Vec<(&[u32], usize)> {
    let mut out = Vec::new();
    let mut prev_end = 0;
    let mut begin = 0;
    while begin < tokens.len() && limit.is_none_or(|l| out.len() < l) {
        let end = (begin + seqlen).min(tokens.len());
        let fresh = end - prev_end;
        let len = end - begin;
        if len >= 2 {
            out.push((&tokens[begin..end], (len - fresh).max(1)));
        }
        prev_end = end;
        if end == tokens.len() {
            break;
        }
        begin += stride;
    }
    out
}

/// Σ −log p(target) over a batch: `logits` [b, t, vocab], `targets` [b, t] (u32). Accumulated in f64.
pub fn nll_sum(logits: &Tensor, targets: &Tensor) -> candle_core::Result<f64> {
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    let total = picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(-total)
}

/// Per-position −log p(target): `logits` \[b, t, vocab\], `targets` \[b, t\] → \[b\]\[t\] in f32.
pub fn token_nlls(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let (b, t) = targets.dims2()?;
    if let Some(flat) = crate::model::target_nlls(logits, &targets.flatten_all()?.to_vec1()?)? {
        return Ok(flat.chunks(t.max(1)).take(b).map(<[f32]>::to_vec).collect());
    }
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    picked.squeeze(D::Minus1)?.neg()?.to_vec2::<f32>()
}

/// Runs each job (right-padded into batches of `batch_size`) and sums the NLL of its scored
/// positions. With a causal mask, padding after a sequence cannot change its scores, so the
/// result does not depend on `batch_size`. A streamed model runs layer-wise: every batch through
/// block i before block i + 1, so each block is read once; the operations on each batch are the
/// same, so are the numbers.
fn score(
    model: &dyn CausalLm,
    jobs: &[Job],
    batch_size: usize,
    device: &Device,
    tick: Tick,
) -> Result<Vec<Scored>, ModelError> {
    let batches: Vec<&[Job]> = jobs.chunks(batch_size.max(1)).collect();
    let ids = batches
        .iter()
        .map(|batch| {
            let rows: Vec<&[u32]> = batch.iter().map(|j| j.tokens).collect();
            right_padded(&rows, device)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(jobs.len());
    crate::model::for_each_final_hidden::<ModelError>(
        model,
        &ids,
        &mut |i, x| {
            out.extend(scored(model, batches[i], &ids[i], &x)?);
            Ok(batches[i].len() as u64)
        },
        tick,
    )?;
    Ok(out)
}

/// Token ids [rows, longest row], each row right-padded with 0. Any valid id pads: with a causal
/// mask, padding after a sequence cannot change its positions' scores.
pub fn right_padded(rows: &[&[u32]], device: &Device) -> candle_core::Result<Tensor> {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut flat = Vec::with_capacity(rows.len() * width);
    for r in rows {
        flat.extend_from_slice(r);
        flat.resize(flat.len() + width - r.len(), 0);
    }
    Tensor::from_vec(flat, (rows.len(), width), device)
}

/// Bytes of logits per piece of [`scored`]: a full batch's logits are hundreds of MB for a large
/// vocabulary, which the allocator maps afresh (and the kernel zeroes) for every batch, while
/// pieces of this size are reused.
const LOGIT_PIECE_BYTES: usize = 16 << 20;

/// The summed NLL of each job's scored positions, from the batch's final hidden states `x`
/// [batch, width, hidden]: the head runs on a few positions at a time. Rows of a CPU matrix
/// product and of a softmax do not depend on the rows beside them (pieces keep at least 64
/// positions, clear of gemm's kernel for tiny products), so the numbers are those of one pass.
fn scored(
    model: &dyn CausalLm,
    batch: &[Job],
    ids: &Tensor,
    x: &Tensor,
) -> Result<Vec<Scored>, ModelError> {
    let (rows, width) = ids.dims2()?;
    let vocab = model.config().vocab_size;
    let piece = (LOGIT_PIECE_BYTES / (4 * vocab * rows).max(1)).max(64);
    let mut nlls: Vec<Vec<f32>> = vec![Vec::with_capacity(width - 1); rows];
    for start in (0..width - 1).step_by(piece) {
        let len = piece.min(width - 1 - start);
        let logits = model.head(&x.narrow(1, start, len)?)?;
        let targets = ids.narrow(1, start + 1, len)?.contiguous()?;
        for (row, part) in nlls.iter_mut().zip(token_nlls(&logits, &targets)?) {
            row.extend(part);
        }
    }
    Ok(batch
        .iter()
        .zip(nlls)
        .map(|(j, row)| {
            // Position p is predicted by row entry p − 1.
            let scored = &row[j.from - 1..j.tokens.len() - 1];
            Scored {
                nll_sum: scored.iter().map(|&x| x as f64).sum(),
                tokens: scored.len(),
            }
        })
        .collect())
}

fn summarize(per_window: Vec<Scored>, seqlen: usize, stream_tokens: usize) -> Perplexity {
    let total: f64 = per_window.iter().map(|s| s.nll_sum).sum();
    let tokens: usize = per_window.iter().map(|s| s.tokens).sum();
    let nll = total / tokens as f64;
    Perplexity {
        ppl: nll.exp(),
        nll,
        tokens,
        windows: per_window.len(),
        seqlen,
        stream_tokens,
        per_window,
    }
}

fn too_short(tokens: usize, what: String) -> ModelError {
    candle_core::Error::Msg(format!("the text has {tokens} tokens, fewer than {what}")).into()
}

/// Perplexity of `model` on `tokens`, `batch_size` windows per forward pass. The result does not
/// depend on `batch_size`. `tick` is called with the number of windows done after each batch.
pub fn perplexity(
    model: &dyn CausalLm,
    tokens: &[u32],
    seqlen: usize,
    limit: Option<usize>,
    batch_size: usize,
    device: &Device,
    tick: Tick,
) -> Result<Perplexity, ModelError> {
    let jobs: Vec<Job> = windows(tokens, seqlen, limit)
        .into_iter()
        .map(|w| Job { tokens: w, from: 1 })
        .collect();
    if jobs.is_empty() {
        return Err(too_short(
            tokens.len(),
            format!("one window of seqlen = {seqlen}"),
        ));
    }
    let scored = score(model, &jobs, batch_size, device, tick)?;
    Ok(summarize(scored, seqlen, tokens.len()))
}

/// Sliding-window perplexity (see [`sliding_windows`]); `limit` caps the number of windows.
#[allow(clippy::too_many_arguments)]
pub fn sliding_perplexity(
    model: &dyn CausalLm,
    tokens: &[u32],
    seqlen: usize,
    stride: usize,
    limit: Option<usize>,
    batch_size: usize,
    device: &Device,
    tick: Tick,
) -> Result<Perplexity, ModelError> {
    let jobs: Vec<Job> = sliding_windows(tokens, seqlen, stride, limit)
        .into_iter()
        .map(|(w, from)| Job { tokens: w, from })
        .collect();
    if jobs.is_empty() {
        return Err(too_short(tokens.len(), "two".into()));
    }
    let scored = score(model, &jobs, batch_size, device, tick)?;
    Ok(summarize(scored, seqlen, tokens.len()))
}

/// Per-document perplexity: each document (already tokenized, with its own special tokens) is cut
/// into chunks of at most `seqlen` tokens, none dropped; every position after a chunk's first is
/// scored. Documents of fewer than two tokens add nothing.
pub fn document_perplexity(
    model: &dyn CausalLm,
    documents: &[Vec<u32>],
    seqlen: usize,
    batch_size: usize,
    device: &Device,
    tick: Tick,
) -> Result<Perplexity, ModelError> {
    let jobs: Vec<Job> = documents
        .iter()
        .flat_map(|d| d.chunks(seqlen))
        .filter(|c| c.len() >= 2)
        .map(|c| Job { tokens: c, from: 1 })
        .collect();
    let total: usize = documents.iter().map(Vec::len).sum();
    if jobs.is_empty() {
        return Err(too_short(total, "two in any document".into()));
    }
    let scored = score(model, &jobs, batch_size, device, tick)?;
    Ok(summarize(scored, seqlen, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_drop_the_remainder_and_respect_limit() {
        let t: Vec<u32> = (0..10).collect();
        assert_eq!(windows(&t, 4, None), vec![&t[0..4], &t[4..8]]);
        assert_eq!(windows(&t, 4, Some(1)), vec![&t[0..4]]);
        assert!(windows(&t, 11, None).is_empty());
    }

    #[test]
    fn sliding_windows_score_every_token_once() {
        let t: Vec<u32> = (0..10).collect();
        let w = sliding_windows(&t, 4, 2, None);
        let got: Vec<(Vec<u32>, usize)> = w.iter().map(|(w, f)| (w.to_vec(), *f)).collect();
        // Windows [0,4), [2,6), [4,8), [6,10): the first scores 1..4, the others their last two.
        assert_eq!(
            got,
            vec![
                (vec![0, 1, 2, 3], 1),
                (vec![2, 3, 4, 5], 2),
                (vec![4, 5, 6, 7], 2),
                (vec![6, 7, 8, 9], 2),
            ]
        );
        let scored: usize = w.iter().map(|(w, f)| w.len() - f).sum();
        assert_eq!(scored, 9);
        // stride = seqlen is the non-overlapping protocol, the remainder kept.
        let w = sliding_windows(&t, 4, 4, None);
        let got: Vec<(usize, usize)> = w.iter().map(|(w, f)| (w.len(), *f)).collect();
        assert_eq!(got, vec![(4, 1), (4, 1), (2, 1)]);
        assert_eq!(sliding_windows(&t, 4, 2, Some(2)).len(), 2);
    }

    #[test]
    fn nll_of_known_distributions() {
        // Two positions over a vocabulary of 3: uniform logits, then a peaked row.
        let logits = Tensor::new(&[[[0.0f32, 0.0, 0.0], [2.0, 0.0, 0.0]]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
        let got = nll_sum(&logits, &targets).unwrap();
        let peaked = -(2f64.exp() / (2f64.exp() + 2.0)).ln();
        let want = 3f64.ln() + peaked;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
