//! The `loglikelihood` request for an encoder-decoder (T5): the context is the encoder's source,
//! the continuation the decoder's target, as lm-evaluation-harness scores an
//! `AutoModelForSeq2SeqLM` (`TemplateLM._encode_pair`, `HFLM._loglikelihood_tokens`).
//!
//! **Encoding** ([`Seq2SeqPairEncoder::encode_pair`]). Trailing whitespace of the context moves
//! to the start of the continuation, as for a decoder. The context is encoded *with* the
//! tokenizer's special tokens (the harness's `tok_encode` defaults to `add_special_tokens=True`
//! for seq2seq models: T5's post-processor appends `</s>`), the continuation on its own *without*
//! them, so T5's `</s>` is not scored after the answer. There is no joint encoding of
//! context + continuation: the two are separate sequences.
//!
//! **Empty context.** As the harness (`context == ""`): the source is one token, the config's
//! BOS, else its EOS (T5: `</s>`; the harness's `prefix_token_id`), and the continuation is then
//! encoded *with* special tokens, so for T5 it ends with a scored `</s>`. This quirk of the
//! harness is kept so that the numbers compare. A non-empty context that encodes to no tokens
//! is refused (the harness asserts).
//!
//! **Scoring** ([`seq2seq_loglikelihood`]). The source keeps its last `max_len` tokens (T5's
//! `n_positions`, the harness's `max_length`); a continuation longer than that is refused. The
//! decoder input is `[decoder_start] + continuation[..n-1]`, teacher-forced, and position j's
//! logits score continuation token j. Requests with the same source (the choices of one
//! question) share one encoder pass: sources are grouped, longest first, and a batch holds
//! whole groups up to `batch_size` decoder rows (a larger group is a batch of its own, decoded
//! `batch_size` rows at a time). Sources are right-padded with their padding masked; targets are
//! right-padded, and the decoder's self-attention is causal, so padding after a target's end
//! reaches none of its scored positions. So the sums do not depend on the batch size or on what
//! shares a batch (up to f32 rounding of differently shaped matmuls).

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::{check_request, target_logprobs, EvalError, Request, Scored};
use crate::eval::perplexity::right_padded;
use crate::model::{ModelConfig, Seq2SeqLm, Tokenizer};

/// Turns text pairs into [`Request`]s for an encoder-decoder: `context` is the source,
/// `continuation` the target.
#[derive(Debug)]
pub struct Seq2SeqPairEncoder<'a> {
    tokenizer: &'a Tokenizer,
    empty_context: Option<u32>,
    max_len: usize,
}

impl<'a> Seq2SeqPairEncoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer, config: &ModelConfig) -> Seq2SeqPairEncoder<'a> {
        Seq2SeqPairEncoder {
            tokenizer,
            empty_context: config
                .bos_token_id
                .or_else(|| config.eos_token_ids.first().copied()),
            max_len: config.max_position_embeddings,
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer
    }

    /// The longest source (and target) the model takes: T5's `n_positions`.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// `context` and `continuation` as the harness encodes them for a seq2seq model (module
    /// docs).
    pub fn encode_pair(&self, context: &str, continuation: &str) -> Result<Request, EvalError> {
        if context.is_empty() {
            let Some(id) = self.empty_context else {
                return Err(EvalError::Invalid(
                    "a context is empty and the model's config names no BOS or EOS token to \
                     stand in for it"
                        .into(),
                ));
            };
            return Ok(Request {
                context: vec![id],
                continuation: self.tokenizer.encode(continuation, true)?,
            });
        }
        let trimmed = context.trim_end();
        let continuation = format!("{}{continuation}", &context[trimmed.len()..]);
        let source = self.tokenizer.encode(trimmed, true)?;
        if source.is_empty() {
            return Err(EvalError::Invalid(format!(
                "the context {context:?} encodes to no tokens"
            )));
        }
        Ok(Request {
            context: source,
            continuation: self.tokenizer.encode(&continuation, false)?,
        })
    }
}

/// Requests that share one source, in input order.
struct Group<'r> {
    source: &'r [u32],
    requests: Vec<usize>,
}

/// The source request `i` is encoded from (its last `max_len` tokens), or why it cannot be
/// scored.
fn source_of(i: usize, r: &Request, max_len: usize) -> Result<&[u32], EvalError> {
    check_request(i, r, max_len, "source", "Seq2SeqPairEncoder")?;
    Ok(&r.context[r.context.len().saturating_sub(max_len)..])
}

/// Scores `requests` on an encoder-decoder (module docs): `max_len` bounds the source (and the
/// target), `batch_size` the decoder rows of one pass. `tick` receives the number of requests
/// finished after each pass.
pub fn seq2seq_loglikelihood(
    model: &dyn Seq2SeqLm,
    requests: &[Request],
    max_len: usize,
    batch_size: usize,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<Vec<Scored>, EvalError> {
    let batch_size = batch_size.max(1);
    let mut groups: Vec<Group> = Vec::new();
    let mut by_source: HashMap<&[u32], usize> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        let source = source_of(i, r, max_len)?;
        let g = *by_source.entry(source).or_insert_with(|| {
            groups.push(Group {
                source,
                requests: Vec::new(),
            });
            groups.len() - 1
        });
        groups[g].requests.push(i);
    }
    // Longest sources first, so batch shapes shrink; ties by the tokens, so the order is fixed.
    groups.sort_by(|a, b| {
        b.source
            .len()
            .cmp(&a.source.len())
            .then_with(|| a.source.cmp(b.source))
    });
    let mut out = vec![
        Scored {
            logprob: 0.0,
            greedy: false
        };
        requests.len()
    ];
    let start = model.decoder_start();
    let mut at = 0;
    while at < groups.len() {
        // Whole groups up to `batch_size` rows; a larger group alone.
        let mut end = at + 1;
        let mut rows = groups[at].requests.len();
        while end < groups.len() && rows + groups[end].requests.len() <= batch_size {
            rows += groups[end].requests.len();
            end += 1;
        }
        let batch = &groups[at..end];
        let sources: Vec<&[u32]> = batch.iter().map(|g| g.source).collect();
        let lengths: Vec<usize> = sources.iter().map(|s| s.len()).collect();
        let encoded = model.encode(&right_padded(&sources, device)?, &lengths)?;
        // (group within the batch, request) per decoder row.
        let rows: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .flat_map(|(g, group)| group.requests.iter().map(move |&i| (g, i)))
            .collect();
        for chunk in rows.chunks(batch_size) {
            score_rows(
                model, &encoded, &lengths, chunk, requests, start, &mut out, device,
            )?;
            tick(chunk.len() as u64)?;
        }
        at = end;
    }
    Ok(out)
}

/// Decodes `rows` (group within the batch, request) against the batch's encoder states and
/// writes each request's score.
#[allow(clippy::too_many_arguments)]
fn score_rows(
    model: &dyn Seq2SeqLm,
    encoded: &Tensor,
    src_lengths: &[usize],
    rows: &[(usize, usize)],
    requests: &[Request],
    start: u32,
    out: &mut [Scored],
    device: &Device,
) -> Result<(), EvalError> {
    let pick: Vec<u32> = rows.iter().map(|&(g, _)| g as u32).collect();
    let enc = encoded.index_select(&Tensor::new(pick, device)?, 0)?;
    let lengths: Vec<usize> = rows.iter().map(|&(g, _)| src_lengths[g]).collect();
    let inputs: Vec<Vec<u32>> = rows
        .iter()
        .map(|&(_, i)| {
            let cont = &requests[i].continuation;
            std::iter::once(start)
                .chain(cont[..cont.len() - 1].iter().copied())
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let logits = model.decode(&enc, &lengths, &right_padded(&refs, device)?)?;
    let (n, width, vocab) = logits.dims3()?;
    // The scored positions only: row r's first len(continuation) positions.
    let mut index = Vec::new();
    let mut targets = Vec::new();
    for (r, &(_, i)) in rows.iter().enumerate() {
        for (j, &t) in requests[i].continuation.iter().enumerate() {
            index.push((r * width + j) as u32);
            targets.push(t);
        }
    }
    let index = Tensor::new(index, device)?;
    let picked = logits
        .reshape((n * width, vocab))?
        .index_select(&index, 0)?;
    let (logp, beaten) = target_logprobs(&picked, &targets, device)?;
    let mut at = 0;
    for &(_, i) in rows {
        let k = requests[i].continuation.len();
        out[i] = Scored {
            logprob: logp[at..at + k].iter().map(|&v| v as f64).sum(),
            greedy: !beaten[at..at + k].iter().any(|&b| b),
        };
        at += k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_sources_keep_their_last_tokens_like_the_harness() {
        let r = Request {
            context: vec![1, 2, 3, 4, 5],
            continuation: vec![6, 7],
        };
        // context_enc[-max_length:]: the end of the source (T5's `</s>`) is kept.
        assert_eq!(source_of(0, &r, 3).unwrap(), [3, 4, 5]);
        assert_eq!(source_of(0, &r, 8).unwrap(), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn requests_that_cannot_be_scored_are_refused_by_index() {
        let bad = [
            (vec![], vec![1], "empty source"),
            (vec![1], vec![], "no tokens"),
            (vec![1], vec![2; 9], "9 tokens"),
        ];
        for (context, continuation, want) in bad {
            let r = Request {
                context,
                continuation,
            };
            let e = source_of(4, &r, 8).unwrap_err().to_string();
            assert!(e.contains("request 4") && e.contains(want), "{e}");
        }
    }
}
