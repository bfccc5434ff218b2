//! How far a compressed model's next-token distributions drift from its base model's.
//!
//! Both models read the same non-overlapping windows of one token stream (cut exactly as
//! [`perplexity`](super::perplexity) cuts them). At every position of every window, over the full
//! vocabulary, with P the reference (base) model's distribution and Q the evaluated model's:
//! - Jensen-Shannon divergence JS(P, Q) = ½ KL(P‖M) + ½ KL(Q‖M), M = (P + Q)/2, in nats (natural
//!   log, so 0 ≤ JS ≤ ln 2);
//! - KL(P‖Q), reference against model, in nats;
//! - top-1 agreement: whether both argmaxes are the same token, the argmax being the lowest index
//!   among maximal logits (what candle's CPU `argmax` returns, made explicit so that every device
//!   breaks ties alike).
//!
//! An encoder-decoder (T5) is compared teacher-forced: each window is the source and, shifted
//! right behind the decoder start token, the decoder's input, so the distributions compared are
//! the decoder's at every target position (predicting the window's tokens). Its logits come
//! from the model's block path ([`crate::model::Blocks`]: embed, every block, head), held or
//! streamed alike.
//!
//! Each is averaged over positions. Everything is computed from the logits in f32 log-space:
//! with d = log q − log p, log m − log p = log((1 + eᵈ)/2) = relu(d) + log(1 + e^−|d|) − ln 2,
//! which neither overflows nor loses the tails; sums over the vocabulary and over positions are
//! accumulated in f64. Two identical distributions give d = 0 and exactly 0.
//!
//! A masked (encoder) model is compared the same way ([`Pair::Masked`]): each window is read
//! whole and unmasked, and P and Q are the two models' masked-LM distributions at every position
//! (what each would put in that slot), not next-token distributions. Windows are cut from the
//! same token stream, so the tokenizer's special tokens (`[CLS]` … `[SEP]`) wrap the stream, not
//! each window; a window longer than the model's learned positions is refused. No token is
//! masked, and no pseudo-perplexity is computed.

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use super::perplexity::windows;
use crate::model::{
    final_hidden, Blocks, CausalLm, LanguageModel, MaskedLm, ModelError, Seq2SeqLm,
};

/// The two models of a comparison, `(model, reference)`, of one kind: causal LMs' next-token
/// distributions, encoders' masked-LM distributions at every position of an unmasked window, or
/// encoder-decoders' teacher-forced decoder distributions (module docs).
#[derive(Clone, Copy)]
pub enum Pair<'a> {
    Causal(&'a dyn CausalLm, &'a dyn CausalLm),
    Masked(&'a dyn MaskedLm, &'a dyn MaskedLm),
    Seq2Seq(&'a dyn Seq2SeqLm, &'a dyn Seq2SeqLm),
}

impl<'a> Pair<'a> {
    /// `model` against `reference`, refused unless both are of one kind.
    pub fn of(model: &'a LanguageModel, reference: &'a LanguageModel) -> Result<Self, ModelError> {
        match (model, reference) {
            (LanguageModel::Causal(m), LanguageModel::Causal(r)) => Ok(Pair::Causal(&**m, &**r)),
            (LanguageModel::Masked(m), LanguageModel::Masked(r)) => Ok(Pair::Masked(&**m, &**r)),
            (LanguageModel::Seq2Seq(m), LanguageModel::Seq2Seq(r)) => Ok(Pair::Seq2Seq(&**m, &**r)),
            _ => Err(reference.refuse("divergence against this reference", model.objective())),
        }
    }

    fn split(self) -> (Compared<'a>, Compared<'a>) {
        match self {
            Pair::Causal(m, r) => (Compared::Causal(m), Compared::Causal(r)),
            Pair::Masked(m, r) => (Compared::Masked(m), Compared::Masked(r)),
            Pair::Seq2Seq(m, r) => (Compared::Seq2Seq(m), Compared::Seq2Seq(r)),
        }
    }
}

/// One model of a [`Pair`].
#[derive(Clone, Copy)]
enum Compared<'a> {
    Causal(&'a dyn CausalLm),
    Masked(&'a dyn MaskedLm),
    Seq2Seq(&'a dyn Seq2SeqLm),
}

impl<'a> Compared<'a> {
    fn blocks(self) -> &'a dyn Blocks {
        match self {
            Compared::Causal(m) => m,
            Compared::Masked(m) => m,
            Compared::Seq2Seq(m) => m,
        }
    }

    /// Logits [batch, seq, vocab] for windows `ids` [batch, seq].
    fn logits(self, ids: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Compared::Causal(m) => m.forward(ids),
            Compared::Masked(m) => {
                let (b, s) = ids.dims2()?;
                m.forward_masked(ids, &vec![s; b])
            }
            Compared::Seq2Seq(m) => {
                let x = (0..m.num_layers())
                    .try_fold(m.embed(ids)?, |x, l| m.block_forward(l, &x, 0, None, None))?;
                m.head(&x)
            }
        }
    }
}

/// Means over one window's positions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowDivergence {
    pub js: f64,
    pub kl: f64,
    pub top1: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// Mean JS(P, Q) over positions, in nats (at most ln 2).
    pub js: f64,
    /// Mean KL(P‖Q), reference ‖ model, in nats.
    pub kl: f64,
    /// Fraction of positions where both models' argmax is the same token.
    pub top1: f64,
    /// Positions compared: `windows × seqlen` (every position's next-token distribution).
    pub positions: usize,
    pub windows: usize,
    pub seqlen: usize,
    /// Tokens in the whole stream before cutting.
    pub stream_tokens: usize,
    pub per_window: Vec<WindowDivergence>,
}

/// Per-row (per-sequence) sums over positions of a batch of logits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DivergenceSums {
    /// Σ over positions of JS(P, Q), one entry per batch row.
    pub js: Vec<f64>,
    /// Σ over positions of KL(P‖Q), one entry per batch row.
    pub kl: Vec<f64>,
    /// Positions whose argmaxes agree, one entry per batch row.
    pub agree: Vec<usize>,
    /// Positions per row.
    pub positions: usize,
}

/// Positions are processed in chunks of about this many logits, which bounds the temporaries
/// (a dozen tensors of this size) whatever the batch, window and vocabulary.
const CHUNK_ELEMENTS: usize = 1 << 20;

/// JS, KL and top-1 agreement summed over the positions of each row: `reference_logits` (P) and
/// `model_logits` (Q) are both [batch, seq, vocab].
pub fn divergence_sums(
    reference_logits: &Tensor,
    model_logits: &Tensor,
) -> candle_core::Result<DivergenceSums> {
    let v = reference_logits.dims().last().copied().unwrap_or(1);
    sums_in_chunks(
        reference_logits,
        model_logits,
        (CHUNK_ELEMENTS / v.max(1)).max(1),
    )
}

/// [`divergence_sums`], `chunk` positions at a time.
fn sums_in_chunks(
    reference_logits: &Tensor,
    model_logits: &Tensor,
    chunk: usize,
) -> candle_core::Result<DivergenceSums> {
    let (b, t, v) = reference_logits.dims3()?;
    if model_logits.dims() != reference_logits.dims() {
        candle_core::bail!(
            "logits to compare have shapes {:?} (reference) and {:?} (model); the two models \
             must share the vocabulary and read the same tokens",
            reference_logits.dims(),
            model_logits.dims()
        );
    }
    let p_rows = reference_logits.reshape((b * t, v))?;
    let q_rows = model_logits.reshape((b * t, v))?;
    let (mut js, mut kl, mut agree) = (Vec::new(), Vec::new(), Vec::new());
    let mut start = 0;
    while start < b * t {
        let n = chunk.min(b * t - start);
        let (j, k, a) =
            chunk_divergence(&p_rows.narrow(0, start, n)?, &q_rows.narrow(0, start, n)?)?;
        js.extend(j);
        kl.extend(k);
        agree.extend(a);
        start += n;
    }
    let row_sums = |per_pos: &[f64]| per_pos.chunks(t).map(|r| r.iter().sum()).collect();
    Ok(DivergenceSums {
        js: row_sums(&js),
        kl: row_sums(&kl),
        agree: agree
            .chunks(t)
            .map(|r| r.iter().filter(|&&a| a).count())
            .collect(),
        positions: t,
    })
}

/// JS, KL and agreement of each of `n` positions, logits [n, vocab].
fn chunk_divergence(
    p_logits: &Tensor,
    q_logits: &Tensor,
) -> candle_core::Result<(Vec<f64>, Vec<f64>, Vec<bool>)> {
    let p_logits = p_logits.to_dtype(DType::F32)?;
    let q_logits = q_logits.to_dtype(DType::F32)?;
    let lp = candle_nn::ops::log_softmax(&p_logits, D::Minus1)?;
    let lq = candle_nn::ops::log_softmax(&q_logits, D::Minus1)?;
    let p = lp.exp()?;
    let q = lq.exp()?;
    let d = (&lq - &lp)?;
    // log(1 + e^−|d|) − ln 2: shared by log(m/p) = relu(d) + s and log(m/q) = relu(−d) + s.
    let s = ((d.abs()?.neg()?.exp()? + 1.0)?.log()? - std::f64::consts::LN_2)?;
    let log_m_over_p = (d.relu()? + &s)?;
    let log_m_over_q = (d.neg()?.relu()? + &s)?;
    // A zero probability (a −inf logit) contributes nothing, but its log ratio is ±inf or NaN:
    // mask it out rather than multiply 0 by inf.
    let zeros = lp.zeros_like()?;
    let p_alive = lp.gt(f64::NEG_INFINITY)?;
    let q_alive = lq.gt(f64::NEG_INFINITY)?;
    let kl_pm = p_alive.where_cond(&(&p * &log_m_over_p)?.neg()?, &zeros)?;
    let kl_qm = q_alive.where_cond(&(&q * &log_m_over_q)?.neg()?, &zeros)?;
    let js_terms = ((kl_pm + kl_qm)? * 0.5)?;
    // KL(P‖Q) = Σ p (log p − log q); infinite where q = 0 < p, as it should be.
    let kl_terms = p.gt(0.0)?.where_cond(&(&p * d.neg()?)?, &zeros)?;
    let sum = |t: Tensor| -> candle_core::Result<Vec<f64>> {
        t.to_dtype(DType::F64)?.sum(D::Minus1)?.to_vec1::<f64>()
    };
    let js = sum(js_terms)?;
    let kl = sum(kl_terms)?;
    let ap = lowest_argmax(&p_logits)?;
    let aq = lowest_argmax(&q_logits)?;
    let agree = ap.iter().zip(&aq).map(|(a, b)| a == b).collect();
    Ok((js, kl, agree))
}

/// The lowest index among the maxima of each row of `logits` [n, vocab]. A row with a NaN
/// maximum has no index equal to it and yields `vocab`, which agrees with nothing else... except
/// another such row; NaN logits are a broken model either way.
pub fn lowest_argmax(logits: &Tensor) -> candle_core::Result<Vec<u32>> {
    let (_, v) = logits.dims2()?;
    let max = logits.max_keepdim(D::Minus1)?;
    let at_max = logits.broadcast_eq(&max)?;
    // f32 holds every index exactly below 2^24, far beyond any vocabulary.
    let idx = Tensor::arange(0f32, v as f32, logits.device())?
        .reshape((1, v))?
        .broadcast_as(logits.shape())?;
    let beyond = Tensor::full(v as f32, logits.shape(), logits.device())?;
    let first = at_max.where_cond(&idx, &beyond)?.min(D::Minus1)?;
    first.to_dtype(DType::U32)?.to_vec1::<u32>()
}

/// JS, KL and top-1 agreement of the pair's model (Q) against its reference (P) over the windows
/// of `tokens`, `batch_size` windows per forward pass of each model. Only one batch's logits of
/// each model are alive at a time; the result does not depend on `batch_size` beyond rounding.
/// `tick` is called with the number of windows done after each batch.
pub fn divergence(
    pair: Pair<'_>,
    tokens: &[u32],
    seqlen: usize,
    limit: Option<usize>,
    batch_size: usize,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<Divergence, ModelError> {
    let (model_lm, reference_lm) = pair.split();
    let (model, reference) = (model_lm.blocks(), reference_lm.blocks());
    let (vm, vr) = (model.config().vocab_size, reference.config().vocab_size);
    if vm != vr {
        return Err(ModelError::Invalid(format!(
            "cannot compare next-token distributions: the model's vocabulary has {vm} tokens, \
             the reference's {vr}; divergence needs the same tokenizer on both"
        )));
    }
    if seqlen == 0 {
        return Err(ModelError::Invalid("divergence needs seqlen ≥ 1".into()));
    }
    let wins = windows(tokens, seqlen, limit);
    if wins.is_empty() {
        return Err(ModelError::Invalid(format!(
            "the text has {} tokens, fewer than one window of seqlen = {seqlen}",
            tokens.len()
        )));
    }
    let mut per_window = Vec::with_capacity(wins.len());
    let (mut js, mut kl, mut agree) = (0.0f64, 0.0f64, 0usize);
    let batches: Vec<&[&[u32]]> = wins.chunks(batch_size.max(1)).collect();
    let ids = batches
        .iter()
        .map(|batch| {
            let flat: Vec<u32> = batch.iter().flat_map(|w| w.iter().copied()).collect();
            Tensor::from_vec(flat, (batch.len(), seqlen), device)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut add = |sums: DivergenceSums| {
        for r in 0..sums.js.len() {
            js += sums.js[r];
            kl += sums.kl[r];
            agree += sums.agree[r];
            let n = sums.positions as f64;
            per_window.push(WindowDivergence {
                js: sums.js[r] / n,
                kl: sums.kl[r] / n,
                top1: sums.agree[r] as f64 / n,
            });
        }
    };
    if model.is_streamed() || reference.is_streamed() {
        // Layer-wise, one model after the other: the final hidden states of every window are
        // kept (hidden-sized, unlike logits), then both heads run one batch at a time.
        let finals = |m: &dyn Blocks, tick: crate::cancel::Tick| {
            final_hidden::<ModelError>(m, &ids, "divergence", tick)
        };
        let p = finals(reference, tick)?;
        let q = finals(model, tick)?;
        for (i, batch) in batches.iter().enumerate() {
            add(divergence_sums(
                &reference.head(&p.get(i)?)?,
                &model.head(&q.get(i)?)?,
            )?);
            tick(batch.len() as u64)?;
        }
    } else {
        for (batch, ids) in batches.iter().zip(&ids) {
            let sums = {
                let p = reference_lm.logits(ids)?;
                let q = model_lm.logits(ids)?;
                divergence_sums(&p, &q)?
            };
            add(sums);
            tick(batch.len() as u64)?;
        }
    }
    let positions = wins.len() * seqlen;
    let n = positions as f64;
    Ok(Divergence {
        js: js / n,
        kl: kl / n,
        top1: agree as f64 / n,
        positions,
        windows: wins.len(),
        seqlen,
        stream_tokens: tokens.len(),
        per_window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::f64::consts::LN_2;

    fn logits(rows: &[Vec<f32>]) -> Tensor {
        let v = rows[0].len();
        let flat: Vec<f32> = rows.concat();
        Tensor::from_vec(flat, (1, rows.len(), v), &Device::Cpu).unwrap()
    }

    /// Logits whose softmax is exactly the given distribution (ln p; ln 0 = −inf).
    fn from_probs(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| x.ln() as f32).collect()
    }

    fn one(p: &[f64], q: &[f64]) -> (f64, f64, usize) {
        let s = divergence_sums(&logits(&[from_probs(p)]), &logits(&[from_probs(q)])).unwrap();
        (s.js[0], s.kl[0], s.agree[0])
    }

    #[test]
    fn identical_distributions_diverge_by_exactly_zero() {
        let (js, kl, agree) = one(&[0.7, 0.2, 0.1], &[0.7, 0.2, 0.1]);
        assert_eq!((js, kl, agree), (0.0, 0.0, 1));
    }

    #[test]
    fn disjoint_supports_give_ln2_and_infinite_kl() {
        let (js, kl, agree) = one(&[0.5, 0.5, 0.0, 0.0], &[0.0, 0.0, 0.25, 0.75]);
        assert!((js - LN_2).abs() < 1e-6, "{js}");
        assert_eq!(kl, f64::INFINITY);
        assert_eq!(agree, 0);
        // Nearly disjoint with finite logits: the mass below e^-50 is negligible.
        let s =
            divergence_sums(&logits(&[vec![0.0, -50.0]]), &logits(&[vec![-50.0, 0.0]])).unwrap();
        assert!((s.js[0] - LN_2).abs() < 1e-6, "{}", s.js[0]);
        assert!((s.kl[0] - 50.0).abs() < 1e-4, "{}", s.kl[0]);
    }

    #[test]
    fn two_point_case_by_hand() {
        // P = (1/2, 1/2), Q = (1/4, 3/4), M = (3/8, 5/8).
        let (js, kl, agree) = one(&[0.5, 0.5], &[0.25, 0.75]);
        let kl_pm = 0.5 * (0.5f64 / 0.375).ln() + 0.5 * (0.5f64 / 0.625).ln();
        let kl_qm = 0.25 * (0.25f64 / 0.375).ln() + 0.75 * (0.75f64 / 0.625).ln();
        let want_js = 0.5 * kl_pm + 0.5 * kl_qm;
        let want_kl = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((js - want_js).abs() < 1e-7, "{js} vs {want_js}");
        assert!((kl - want_kl).abs() < 1e-7, "{kl} vs {want_kl}");
        // P ties: the lowest index (0) is its argmax; Q's is 1.
        assert_eq!(agree, 0);
    }

    #[test]
    fn rows_and_positions_are_summed_separately() {
        let p = Tensor::from_vec(
            from_probs(&[0.5, 0.5, 0.5, 0.5, 0.9, 0.1, 0.1, 0.9]),
            (2, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let q = Tensor::from_vec(
            from_probs(&[0.5, 0.5, 0.25, 0.75, 0.9, 0.1, 0.2, 0.8]),
            (2, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let s = divergence_sums(&p, &q).unwrap();
        let (js01, kl01, _) = one(&[0.5, 0.5], &[0.25, 0.75]);
        let (js11, kl11, _) = one(&[0.1, 0.9], &[0.2, 0.8]);
        assert_eq!(s.positions, 2);
        assert!((s.js[0] - js01).abs() < 1e-9 && (s.js[1] - js11).abs() < 1e-9);
        assert!((s.kl[0] - kl01).abs() < 1e-9 && (s.kl[1] - kl11).abs() < 1e-9);
        // Row 0: a tie (argmax 0) against the same tie agrees, against (¼, ¾) it does not.
        // Row 1: both positions agree.
        assert_eq!(s.agree, [1, 2]);
    }

    #[test]
    fn chunking_positions_changes_nothing() {
        let dev = &Device::Cpu;
        let p = Tensor::randn(0f32, 3.0, (2, 5, 7), dev).unwrap();
        let q = (&p + Tensor::randn(0f32, 1.0, (2, 5, 7), dev).unwrap()).unwrap();
        let whole = sums_in_chunks(&p, &q, 100).unwrap();
        assert!(whole.js.iter().all(|&j| j > 0.0));
        for chunk in [1, 3, 4] {
            let s = sums_in_chunks(&p, &q, chunk).unwrap();
            assert_eq!(s.agree, whole.agree, "chunk {chunk}");
            for (a, b) in s.js.iter().zip(&whole.js).chain(s.kl.iter().zip(&whole.kl)) {
                assert!((a - b).abs() < 1e-12, "chunk {chunk}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn argmax_ties_go_to_the_lowest_index_as_candle_cpu_does() {
        let t = Tensor::new(
            &[[1f32, 3., 3.], [3., 3., 1.], [2., 1., 2.], [0., 0., 0.]],
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(lowest_argmax(&t).unwrap(), [1, 0, 0, 0]);
        let candle: Vec<u32> = t.argmax(1).unwrap().to_vec1().unwrap();
        assert_eq!(candle, [1, 0, 0, 0]);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let a = Tensor::zeros((1, 2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((1, 2, 4), DType::F32, &Device::Cpu).unwrap();
        let e = divergence_sums(&a, &b).unwrap_err().to_string();
        assert!(e.contains("vocabulary"), "{e}");
    }

    /// JS in f64 straight from the definition.
    fn js_f64(p: &[f64], q: &[f64]) -> f64 {
        let kl = |a: &[f64], m: &[f64]| -> f64 {
            a.iter()
                .zip(m)
                .filter(|(x, _)| **x > 0.0)
                .map(|(x, y)| x * (x / y).ln())
                .sum()
        };
        let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a + b) / 2.0).collect();
        0.5 * kl(p, &m) + 0.5 * kl(q, &m)
    }

    fn softmax(l: &[f32]) -> Vec<f64> {
        let max = l.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let e: Vec<f64> = l.iter().map(|&x| (x as f64 - max).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    proptest! {
        #[test]
        fn js_is_symmetric_bounded_and_matches_f64(
            a in proptest::collection::vec(-30f32..30.0, 6),
            b in proptest::collection::vec(-30f32..30.0, 6),
        ) {
            let (la, lb) = (logits(std::slice::from_ref(&a)), logits(std::slice::from_ref(&b)));
            let pq = divergence_sums(&la, &lb).unwrap();
            let qp = divergence_sums(&lb, &la).unwrap();
            let (js, js_rev) = (pq.js[0], qp.js[0]);
            prop_assert!((js - js_rev).abs() < 1e-6, "{} vs {}", js, js_rev);
            prop_assert!((-1e-7..=LN_2 + 1e-6).contains(&js), "{}", js);
            let want = js_f64(&softmax(&a), &softmax(&b));
            prop_assert!((js - want).abs() < 1e-5, "{} vs f64 {}", js, want);
        }
    }
}
