//! Greedy decoding: a causal model with the KV cache, an encoder-decoder's decoder given the
//! encoded source.

use candle_core::{IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use super::lm::{CausalLm, Seq2SeqLm};

/// Why greedy decoding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model produced an end-of-sequence token (not included in the output).
    Eos,
    /// `max_new_tokens` tokens were produced.
    Length,
    /// The caller's stop condition held after the last token.
    Stop,
}

/// New tokens and why decoding ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

/// Greedily extends `prompt_ids` by up to `max_new_tokens` tokens and returns only the new ones.
/// Stops early after producing `eos` (which is not included in the result).
pub fn greedy(
    model: &dyn CausalLm,
    prompt_ids: &[u32],
    max_new_tokens: usize,
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    let eos: Vec<u32> = eos.into_iter().collect();
    Ok(greedy_until(model, prompt_ids, max_new_tokens, &eos, &mut |_| Ok(false))?.tokens)
}

/// Greedy decoding that ends at the first of: a token in `eos` (left out of the result),
/// `max_new_tokens` new tokens, or `stop(new tokens so far)` returning true after a token (that
/// token is kept: the caller decides what to cut). The prompt is read once; each later step feeds
/// only the last token through the KV cache.
pub fn greedy_until(
    model: &dyn CausalLm,
    prompt_ids: &[u32],
    max_new_tokens: usize,
    eos: &[u32],
    stop: &mut dyn FnMut(&[u32]) -> Result<bool>,
) -> Result<Decoded> {
    if prompt_ids.is_empty() {
        return Err(ModelError::Invalid(
            "greedy decoding needs a non-empty prompt".into(),
        ));
    }
    let mut cache = model.new_cache();
    let mut out = Vec::with_capacity(max_new_tokens);
    let mut input = prompt_ids.to_vec();
    while out.len() < max_new_tokens {
        let tokens = Tensor::new(input.as_slice(), model.device())?.unsqueeze(0)?;
        let logits = model.forward_cached(&tokens, &mut cache)?;
        let last = logits.i((0, input.len() - 1))?;
        let next = last.argmax(0)?.to_scalar::<u32>()?;
        if eos.contains(&next) {
            return Ok(Decoded {
                tokens: out,
                finish: Finish::Eos,
            });
        }
        out.push(next);
        if stop(&out)? {
            return Ok(Decoded {
                tokens: out,
                finish: Finish::Stop,
            });
        }
        input = vec![next];
    }
    Ok(Decoded {
        tokens: out,
        finish: Finish::Length,
    })
}

/// [`greedy_until`] for an encoder-decoder: `source_ids` is encoded once, and the decoder,
/// started from [`Seq2SeqLm::decoder_start`], is extended one argmax token at a time (rerun over
/// the whole target each step: the decoder keeps no cache) until an EOS id, `max_new_tokens`
/// tokens, or `stop`. The start token is not part of the output.
pub fn greedy_seq2seq_until(
    model: &dyn Seq2SeqLm,
    source_ids: &[u32],
    max_new_tokens: usize,
    eos: &[u32],
    stop: &mut dyn FnMut(&[u32]) -> Result<bool>,
) -> Result<Decoded> {
    if source_ids.is_empty() {
        return Err(ModelError::Invalid(
            "greedy decoding needs a non-empty source".into(),
        ));
    }
    let src = Tensor::new(source_ids, model.device())?.unsqueeze(0)?;
    let lengths = [source_ids.len()];
    let encoded = model.encode(&src, &lengths)?;
    let mut target = vec![model.decoder_start()];
    let mut out = Vec::with_capacity(max_new_tokens);
    while out.len() < max_new_tokens {
        let tgt = Tensor::new(target.as_slice(), model.device())?.unsqueeze(0)?;
        let logits = model.decode(&encoded, &lengths, &tgt)?;
        let next = logits
            .i((0, target.len() - 1))?
            .argmax(0)?
            .to_scalar::<u32>()?;
        if eos.contains(&next) {
            return Ok(Decoded {
                tokens: out,
                finish: Finish::Eos,
            });
        }
        out.push(next);
        target.push(next);
        if stop(&out)? {
            return Ok(Decoded {
                tokens: out,
                finish: Finish::Stop,
            });
        }
    }
    Ok(Decoded {
        tokens: out,
        finish: Finish::Length,
    })
}
