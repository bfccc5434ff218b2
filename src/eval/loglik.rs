//! Log-likelihood of a continuation given a context, batched: the `loglikelihood` request of
//! lm-evaluation-harness, which multiple-choice tasks and the LAMA candidate ranking are built on.
//!
//! **Encoding** ([`PairEncoder::encode_pair`]) follows the harness's `HFLM._encode_pair`: trailing
//! whitespace of the context moves to the start of the continuation; `whole = encode(context +
//! continuation)`, `context_enc = encode(context)`, `continuation_enc = whole[len(context_enc)..]`,
//! so the continuation is tokenized as it is in running text (`" Paris"`, not `"Paris"`).
//!
//! **Special tokens.** Texts are encoded without special tokens; then, with
//! [`SpecialTokens::FromTokenizer`] (the default), the tokens the tokenizer's own post-processor
//! puts *in front* of a text (the `<s>` of LLaMA-1/2 or stories260K) are prepended to the context,
//! so the model sees its input as `tokenizer(text)` would give it. Tokens a post-processor
//! *appends* (an `</s>`) are never added: they would sit between context and continuation.
//! SmolLM2's post-processor is ByteLevel, so it gets no BOS either way. The harness passes
//! `add_special_tokens=False` for causal models (no BOS unless `add_bos_token=True`):
//! [`SpecialTokens::None`] reproduces that.
//!
//! **Empty context.** As the harness, an empty context is replaced by one token: the
//! post-processor's prefix when there is one, else the model's EOS (else BOS) token; the
//! continuation is then encoded on its own.
//!
//! **Batching.** Requests are sorted by length, longest first (as the harness does, so the
//! batch shapes shrink), right-padded, and scored in one forward pass per batch; results come
//! back in input order. With a causal mask, padding after a sequence's end cannot reach its
//! earlier positions, so the scores do not depend on the batch size or on what shares a batch
//! (up to f32 rounding of differently shaped matmuls). Sequences longer than the model's context
//! are cut from the left, as the harness does: the input is `(context + continuation)[-(max+1):][:-1]`.
//!
//! **Encoder-decoders** ([`seq2seq`]): the context is the encoder's source and the continuation
//! the decoder's target, with the harness's seq2seq encoding rules (T5's `</s>` closes the source
//! and is not scored after the continuation). [`Scorer`] is the one seam between the two: a model
//! with the encoding its kind needs, asked for the same [`Scored`] sums.

pub mod seq2seq;

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

pub use seq2seq::{seq2seq_loglikelihood, Seq2SeqPairEncoder};

use crate::model::{CausalLm, ModelConfig, ModelError, Seq2SeqLm, Tokenizer};

/// Errors of the evaluation routines (the model, a request, a record of a task).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cancelled")]
    Cancelled(#[from] crate::cancel::Cancelled),
    #[error(transparent)]
    Model(#[from] ModelError),

    /// A multiple-choice record that cannot be turned into requests.
    #[error("task `{task}`, record {index}: {source}")]
    Record {
        task: String,
        index: usize,
        #[source]
        source: crate::eval::choice::ChoiceError,
    },

    /// Input that cannot be scored as given (an empty continuation, a sequence too long, ...).
    #[error("{0}")]
    Invalid(String),
}

impl From<candle_core::Error> for EvalError {
    fn from(e: candle_core::Error) -> Self {
        EvalError::Model(ModelError::Candle(e))
    }
}

/// Whether the special tokens a tokenizer puts in front of a text are added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialTokens {
    /// Prepend what the tokenizer's post-processor prepends (BOS for LLaMA-2, none for SmolLM2).
    #[default]
    FromTokenizer,
    /// No special tokens at all: lm-evaluation-harness's default for causal models.
    None,
}

/// A (context, continuation) pair as token ids. `context` must not be empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// The score of one request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    /// Σ log P(continuation token | everything before it), natural log, accumulated in f64.
    pub logprob: f64,
    /// Every continuation token is a most likely next token (no logit is strictly greater; the
    /// harness's `argmax == token` differs only when two logits tie exactly).
    pub greedy: bool,
}

/// Turns text pairs into [`Request`]s for one model and tokenizer.
#[derive(Debug)]
pub struct PairEncoder<'a> {
    tokenizer: &'a Tokenizer,
    prefix: Vec<u32>,
    empty_context: Option<Vec<u32>>,
    max_len: usize,
}

impl<'a> PairEncoder<'a> {
    pub fn new(
        tokenizer: &'a Tokenizer,
        config: &ModelConfig,
        special: SpecialTokens,
    ) -> Result<PairEncoder<'a>, EvalError> {
        let prefix = match special {
            SpecialTokens::FromTokenizer => special_prefix(tokenizer)?,
            SpecialTokens::None => Vec::new(),
        };
        let empty_context = if prefix.is_empty() {
            let id = config
                .eos_token_ids
                .first()
                .copied()
                .or(config.bos_token_id);
            id.map(|id| vec![id])
        } else {
            Some(prefix.clone())
        };
        Ok(PairEncoder {
            tokenizer,
            prefix,
            empty_context,
            max_len: config.max_position_embeddings,
        })
    }

    /// The tokens put in front of every context.
    pub fn prefix(&self) -> &[u32] {
        &self.prefix
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer
    }

    /// The longest input the model takes (its `max_position_embeddings`).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Cuts sequences to a shorter window than the model's context (a longer one is ignored:
    /// positions past it were never trained).
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.clamp(1, self.max_len);
        self
    }

    /// `context` and `continuation` as the harness encodes them (see the module docs).
    pub fn encode_pair(&self, context: &str, continuation: &str) -> Result<Request, EvalError> {
        let trimmed = context.trim_end();
        let continuation = format!("{}{continuation}", &context[trimmed.len()..]);
        if trimmed.is_empty() {
            let Some(ctx) = self.empty_context.clone() else {
                return Err(EvalError::Invalid(
                    "a context is empty and the model's config names no EOS or BOS token to \
                     stand in for it"
                        .into(),
                ));
            };
            let cont = self.tokenizer.encode(&continuation, false)?;
            return Ok(Request {
                context: ctx,
                continuation: cont,
            });
        }
        let whole = self
            .tokenizer
            .encode(&format!("{trimmed}{continuation}"), false)?;
        let ctx = self.tokenizer.encode(trimmed, false)?;
        let cont = whole[ctx.len().min(whole.len())..].to_vec();
        let mut context = self.prefix.clone();
        context.extend(ctx);
        Ok(Request {
            context,
            continuation: cont,
        })
    }
}

/// The tokens the tokenizer's post-processor puts in front of a text: `encode(t, true)` is
/// `prefix + encode(t, false) + suffix`; the prefix is returned, the suffix dropped.
fn special_prefix(tokenizer: &Tokenizer) -> Result<Vec<u32>, EvalError> {
    let probe = "The cat sat on the mat.";
    let plain = tokenizer.encode(probe, false)?;
    let with = tokenizer.encode(probe, true)?;
    if plain.is_empty() || with.len() < plain.len() {
        return Err(EvalError::Invalid(format!(
            "tokenizer {}: cannot tell which special tokens its post-processor adds ({probe:?} \
             encodes to {} tokens, {} with special tokens); use special tokens `none`",
            tokenizer.path().display(),
            plain.len(),
            with.len()
        )));
    }
    (0..=with.len() - plain.len())
        .find(|&i| with[i..i + plain.len()] == plain[..])
        .map(|i| with[..i].to_vec())
        .ok_or_else(|| {
            EvalError::Invalid(format!(
                "tokenizer {}: its post-processor changes the text's own tokens, so the special \
                 tokens it adds cannot be told apart; use special tokens `none`",
                tokenizer.path().display()
            ))
        })
}

/// One request laid out for the model: the input row and where its continuation is scored.
#[derive(Debug)]
struct Prepared {
    input: Vec<u32>,
    /// Input positions whose next-token logits predict `targets`.
    first: usize,
    targets: Vec<u32>,
}

fn prepare(i: usize, r: &Request, max_len: usize) -> Result<Prepared, EvalError> {
    check_request(i, r, max_len, "context", "PairEncoder")?;
    let full: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
    let start = full.len().saturating_sub(max_len + 1);
    let input = full[start..full.len() - 1].to_vec();
    Ok(Prepared {
        first: input.len() - r.continuation.len(),
        input,
        targets: r.continuation.clone(),
    })
}

/// Request `i` can be scored: a `what` (context or source, which `encoder` supplies) and a
/// continuation of 1 to `max_len` tokens.
fn check_request(
    i: usize,
    r: &Request,
    max_len: usize,
    what: &str,
    encoder: &str,
) -> Result<(), EvalError> {
    if r.context.is_empty() {
        return Err(EvalError::Invalid(format!(
            "request {i}: empty {what} (encode pairs with {encoder}, which supplies one)"
        )));
    }
    if r.continuation.is_empty() {
        return Err(EvalError::Invalid(format!(
            "request {i}: the continuation encodes to no tokens"
        )));
    }
    if r.continuation.len() > max_len {
        return Err(EvalError::Invalid(format!(
            "request {i}: the continuation has {} tokens, more than the model's {max_len} \
             positions",
            r.continuation.len()
        )));
    }
    Ok(())
}

/// Rows that run as one right-padded batch, and the `(row, position)` pairs whose next-token
/// logits are wanted, with the token scored at each.
pub struct Picks<'r> {
    /// The caller's items in this batch, one row each.
    pub items: &'r [usize],
    pub rows: Vec<&'r [u32]>,
    pub picks: Vec<(usize, usize)>,
    pub targets: Vec<u32>,
}

impl<'r> Picks<'r> {
    /// `order` cut into batches of `batch_size` items; `item(i)` gives item i's input row and
    /// the `(position, target)` pairs it scores.
    pub fn batches(
        order: &'r [usize],
        batch_size: usize,
        item: impl Fn(usize) -> (&'r [u32], Vec<(usize, u32)>),
    ) -> Vec<Picks<'r>> {
        order
            .chunks(batch_size.max(1))
            .map(|items| {
                let mut batch = Picks {
                    items,
                    rows: Vec::with_capacity(items.len()),
                    picks: Vec::new(),
                    targets: Vec::new(),
                };
                for (row, &i) in items.iter().enumerate() {
                    let (input, scored) = item(i);
                    batch.rows.push(input);
                    for (pos, target) in scored {
                        batch.picks.push((row, pos));
                        batch.targets.push(target);
                    }
                }
                batch
            })
            .collect()
    }

    fn width(&self) -> usize {
        self.rows.iter().map(|r| r.len()).max().unwrap_or(0)
    }

    /// Logits [picks.len(), vocab] (f32) from the batch's final hidden states: only the picked
    /// positions go through the LM head.
    fn logits(&self, model: &dyn CausalLm, x: &Tensor) -> Result<Tensor, ModelError> {
        let width = self.width();
        let index: Vec<u32> = self
            .picks
            .iter()
            .map(|&(row, pos)| (row * width + pos) as u32)
            .collect();
        let index = Tensor::from_vec(index, self.picks.len(), x.device())?;
        let picked = x
            .reshape((self.rows.len() * width, x.dims()[2]))?
            .index_select(&index, 0)?;
        Ok(model.head(&picked.unsqueeze(0)?)?.squeeze(0)?)
    }
}

/// Hands `each(batch, logits)` the next-token logits [picks.len(), vocab] (f32) of each batch at
/// its picks; `each` returns how many units of work it finished, for `tick`. A streamed model runs
/// every batch through block i before block i + 1 ([`crate::model::for_each_final_hidden`]).
pub fn logits_at(
    model: &dyn CausalLm,
    batches: &[Picks],
    device: &Device,
    each: &mut dyn FnMut(&Picks, Tensor) -> Result<u64, EvalError>,
    tick: crate::cancel::Tick,
) -> Result<(), EvalError> {
    let ids = batches
        .iter()
        .map(|b| super::perplexity::right_padded(&b.rows, device))
        .collect::<Result<Vec<_>, _>>()?;
    crate::model::for_each_final_hidden::<EvalError>(
        model,
        &ids,
        &mut |i, x| {
            let logits = batches[i].logits(model, &x)?;
            each(&batches[i], logits)
        },
        tick,
    )
}

/// Log-probability of `targets` under each row of `logits` [n, vocab], and whether any logit of
/// the row is strictly greater than the target's.
pub fn target_logprobs(
    logits: &Tensor,
    targets: &[u32],
    device: &Device,
) -> Result<(Vec<f32>, Vec<bool>), ModelError> {
    let t = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), device)?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&t, 1)?;
    let beaten = logp
        .broadcast_gt(&picked)?
        .to_dtype(DType::F32)?
        .sum(1)?
        .to_vec1::<f32>()?;
    let picked = picked.squeeze(1)?.to_vec1::<f32>()?;
    Ok((picked, beaten.into_iter().map(|b| b > 0.0).collect()))
}

/// Scores `requests` with `batch_size` requests per forward pass. `max_len` is the longest input
/// (the model's context, [`PairEncoder::max_len`]). `tick` receives the number of requests
/// finished after each batch.
pub fn loglikelihood(
    model: &dyn CausalLm,
    requests: &[Request],
    max_len: usize,
    batch_size: usize,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<Vec<Scored>, EvalError> {
    let prepared = requests
        .iter()
        .enumerate()
        .map(|(i, r)| prepare(i, r, max_len))
        .collect::<Result<Vec<_>, _>>()?;
    let mut order: Vec<usize> = (0..prepared.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (&prepared[a], &prepared[b]);
        pb.input
            .len()
            .cmp(&pa.input.len())
            .then_with(|| pa.input.cmp(&pb.input))
    });
    let mut out = vec![
        Scored {
            logprob: 0.0,
            greedy: false
        };
        requests.len()
    ];
    let batches = Picks::batches(&order, batch_size, |i| {
        let p = &prepared[i];
        let scored = p.targets.iter().enumerate();
        (
            &p.input[..],
            scored.map(|(j, &t)| (p.first + j, t)).collect(),
        )
    });
    logits_at(
        model,
        &batches,
        device,
        &mut |batch, logits| {
            let (logp, beaten) = target_logprobs(&logits, &batch.targets, device)?;
            let mut at = 0;
            for &i in batch.items {
                let n = prepared[i].targets.len();
                out[i] = Scored {
                    logprob: logp[at..at + n].iter().map(|&v| v as f64).sum(),
                    greedy: !beaten[at..at + n].iter().any(|&b| b),
                };
                at += n;
            }
            Ok(batch.items.len() as u64)
        },
        tick,
    )?;
    Ok(out)
}

/// Where log-likelihoods of continuations given contexts come from: a model, with the encoding
/// of (context, continuation) pairs its kind needs. Multiple choice asks only this of a model.
#[derive(Clone, Copy)]
pub enum Scorer<'a> {
    /// A decoder: context and continuation run as one sequence ([`loglikelihood`]).
    Causal {
        model: &'a dyn CausalLm,
        pairs: &'a PairEncoder<'a>,
    },
    /// An encoder-decoder: the context is the source, the continuation the target
    /// ([`seq2seq_loglikelihood`]).
    Seq2Seq {
        model: &'a dyn Seq2SeqLm,
        pairs: &'a Seq2SeqPairEncoder<'a>,
    },
}

impl Scorer<'_> {
    /// `context` and `continuation` encoded as this kind of model reads them.
    pub fn encode_pair(&self, context: &str, continuation: &str) -> Result<Request, EvalError> {
        match self {
            Scorer::Causal { pairs, .. } => pairs.encode_pair(context, continuation),
            Scorer::Seq2Seq { pairs, .. } => pairs.encode_pair(context, continuation),
        }
    }

    /// Scores `requests` from [`Scorer::encode_pair`], `batch_size` per pass; `tick` receives
    /// the number of requests finished.
    pub fn loglikelihood(
        &self,
        requests: &[Request],
        batch_size: usize,
        device: &Device,
        tick: crate::cancel::Tick,
    ) -> Result<Vec<Scored>, EvalError> {
        match *self {
            Scorer::Causal { model, pairs } => {
                loglikelihood(model, requests, pairs.max_len(), batch_size, device, tick)
            }
            Scorer::Seq2Seq { model, pairs } => {
                seq2seq_loglikelihood(model, requests, pairs.max_len(), batch_size, device, tick)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_inputs_are_cut_from_the_left_like_the_harness() {
        let r = Request {
            context: vec![1, 2, 3, 4, 5],
            continuation: vec![6, 7],
        };
        // (ctx + cont)[-(4+1):][:-1] = [3, 4, 5, 6]; the last 2 positions predict 6 and 7.
        let p = prepare(0, &r, 4).unwrap();
        assert_eq!(p.input, vec![3, 4, 5, 6]);
        assert_eq!(p.first, 2);
        let p = prepare(0, &r, 100).unwrap();
        assert_eq!(p.input, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(p.first, 4);
    }

    #[test]
    fn empty_or_oversized_requests_are_refused() {
        let empty = Request {
            context: vec![1],
            continuation: vec![],
        };
        assert!(prepare(3, &empty, 8)
            .unwrap_err()
            .to_string()
            .contains("request 3"));
        let no_ctx = Request {
            context: vec![],
            continuation: vec![1],
        };
        assert!(prepare(0, &no_ctx, 8).is_err());
        let long = Request {
            context: vec![1],
            continuation: vec![2; 9],
        };
        assert!(prepare(0, &long, 8)
            .unwrap_err()
            .to_string()
            .contains("9 tokens"));
    }

    #[test]
    fn target_logprobs_and_greedy_by_hand() {
        let logits = Tensor::new(&[[0.0f32, 1.0, 2.0], [3.0, 3.0, 0.0]], &Device::Cpu).unwrap();
        let (lp, beaten) = target_logprobs(&logits, &[2, 0], &Device::Cpu).unwrap();
        let z0 = (1.0f64 + 1f64.exp() + 2f64.exp()).ln();
        let z1 = (2.0 * 3f64.exp() + 1.0).ln();
        assert!((lp[0] as f64 - (2.0 - z0)).abs() < 1e-6);
        assert!((lp[1] as f64 - (3.0 - z1)).abs() < 1e-6);
        // A tie with the best logit still counts as greedy.
        assert_eq!(beaten, vec![false, false]);
        let (_, beaten) = target_logprobs(&logits, &[1, 2], &Device::Cpu).unwrap();
        assert_eq!(beaten, vec![true, true]);
    }
}
