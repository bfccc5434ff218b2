//! Perplexity by the WikiText protocol: one token stream cut into non-overlapping windows.

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

use crate::model::{Llama, ModelError};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Perplexity {
    /// exp(mean NLL over every predicted position).
    pub ppl: f64,
    /// Mean negative log-likelihood per predicted token, in nats.
    pub nll: f64,
    /// Predicted positions: `windows × (seqlen − 1)`.
    pub tokens: usize,
    pub windows: usize,
    pub seqlen: usize,
    /// Tokens in the whole stream before cutting (the remainder and windows past `limit` unused).
    pub stream_tokens: usize,
}

/// Non-overlapping windows of `seqlen` tokens; the remainder is dropped; at most `limit` windows.
pub fn windows(tokens: &[u32], seqlen: usize, limit: Option<usize>) -> Vec<&[u32]> {
    let n = tokens.len() / seqlen;
    let n = limit.map_or(n, |l| n.min(l));
    tokens.chunks_exact(seqlen).take(n).collect()
}

/// Σ −log p(target) over a batch: `logits` [b, t, vocab], `targets` [b, t] (u32). Accumulated in f64.
pub fn nll_sum(logits: &Tensor, targets: &Tensor) -> candle_core::Result<f64> {
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    let total = picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(-total)
}

/// Perplexity of `model` on `tokens`, `batch_size` windows per forward pass. The result does not
/// depend on `batch_size`. `tick` is called with the number of windows done after each batch.
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    seqlen: usize,
    limit: Option<usize>,
    batch_size: usize,
    device: &Device,
    tick: &mut dyn FnMut(u64) -> candle_core::Result<()>,
) -> Result<Perplexity, ModelError> {
    let wins = windows(tokens, seqlen, limit);
    if wins.is_empty() {
        return Err(candle_core::Error::Msg(format!(
            "the text has {} tokens, fewer than one window of seqlen = {seqlen}",
            tokens.len()
        ))
        .into());
    }
    let mut total = 0.0f64;
    for batch in wins.chunks(batch_size.max(1)) {
        let flat: Vec<u32> = batch.iter().flat_map(|w| w.iter().copied()).collect();
        let ids = Tensor::from_vec(flat, (batch.len(), seqlen), device)?;
        let logits = model.forward(&ids)?;
        let inputs = logits.narrow(1, 0, seqlen - 1)?;
        let targets = ids.narrow(1, 1, seqlen - 1)?.contiguous()?;
        total += nll_sum(&inputs, &targets)?;
        tick(batch.len() as u64)?;
    }
    let predicted = wins.len() * (seqlen - 1);
    let nll = total / predicted as f64;
    Ok(Perplexity {
        ppl: nll.exp(),
        nll,
        tokens: predicted,
        windows: wins.len(),
        seqlen,
        stream_tokens: tokens.len(),
    })
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
