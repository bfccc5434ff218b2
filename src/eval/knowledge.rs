//! The LAMA knowledge probe: does the model complete "Dante was born in" with "Florence"?
//!
//! **Causal probing.** The prompt is the cloze's text left of `[MASK]` (leading and trailing
//! whitespace trimmed); a fact whose prompt or object is empty (a template starting with `[Y]`, a
//! sentence starting with `[MASK]`) cannot be asked of a left-to-right model and is skipped and
//! counted. The object is scored as it follows the prompt in running text: the prompt and the
//! object are encoded as a (context, continuation) pair ([`PairEncoder::encode_pair`]), so the
//! whitespace before `[MASK]` leads the object: in every LAMA cloze that is one space, and the
//! target is the first token of `" " + object`.
//!
//! **Encoder-decoder (sentinel) probing** ([`probe_seq2seq`], T5). The source is the cloze with
//! `<extra_id_0>` in the object's place (`left + "<extra_id_0>" + right`, trimmed; LAMA's
//! templates have the subject filled), encoded with the tokenizer's special tokens (T5 appends
//! `</s>`). The object is the decoder's continuation after the sentinel: the decoder input is
//! `[decoder_start, <extra_id_0>, object…]`, the object's tokens being the tokenizer's encoding
//! of the object alone (trimmed, no special tokens: `▁Florence` in T5's SentencePiece). The
//! closing `<extra_id_1>` is not scored. Every fact with a non-empty object can be probed (the
//! object may start the sentence). Vocabulary ranking ranks the object's first token among the
//! decoder's logits after the sentinel; candidate ranking sums the log-probabilities of all the
//! object's tokens; both with the tie and NaN rules below. Sources are right-padded in batches
//! and their padding masked, so the batch size does not change the results (up to rounding).
//!
//! **Rankings** ([`Ranking`]):
//! - `vocabulary` — the rank of that first object token among all next-token logits at the
//!   prompt's last position (1 = best; a tie counts in the gold's favour: rank = 1 + the number
//!   of strictly greater logits). This is LAMA's top-k accuracy for a causal model.
//! - `candidates` — the relation's candidate set is the distinct objects of its facts; each is
//!   scored by the summed log-probability of all its tokens after the prompt ([`loglikelihood`]),
//!   and the gold is ranked among them (same tie rule). Multi-token objects count in full.
//!
//! A NaN never outranks the gold, and a NaN gold ranks last, so a broken model cannot score.
//!
//! **Metrics.** P@k (rank ≤ k) and MRR (mean 1/rank) per relation, then averaged across relations
//! (macro, as LAMA reports P@1); also over all facts (micro), with fact and skip counts.
//! [`known_only`] keeps the facts the base model gets right, so a compressed model's P@1 on them
//! reads as knowledge lost.
//!
//! Prompts run in right-padded batches, each scored at its own last position, so the results do
//! not depend on the batch size.
//!
//! **Masked probing** ([`probe_masked`], BERT-style encoders, as LAMA probes them). The input is
//! the whole cloze, `left + MASK + right`, with the tokenizer's mask token (`[MASK]`, else
//! `<mask>`) in place of the object and the subject filled, encoded with the tokenizer's special
//! tokens (`[CLS] … [SEP]`). The target is the object's token as it stands in place of the mask:
//! the cloze is encoded again with the object written in, and the tokens that differ from the
//! masked encoding (after the common prefix and suffix) must be the mask alone on one side and
//! exactly one token on the other; that token is the target (for RoBERTa the object after a
//! space, `" Paris"`). A fact whose object is not one token there (or is the unknown token
//! `[UNK]` / `<unk>`), or whose cloze is longer than the model's positions, is skipped and counted (LAMA's rule: objects outside the vocabulary
//! are left out). Ranks are read at the mask position with the same tie rule; `vocabulary` ranks
//! among all tokens; `candidates` ranks the gold's logit among the relation's distinct objects
//! that are single tokens in this cloze (multi-token candidates are left out of the set: one mask
//! per token would not be LAMA's protocol). Batches are padded right, with lengths, so padding is
//! invisible and results do not depend on the batch size. Metrics and samples are the causal
//! probe's.

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::eval::lama::{Fact, LamaSet, Split};
use crate::eval::loglik::{logits_at, loglikelihood, EvalError, PairEncoder, Picks, Request};
use crate::model::{CausalLm, MaskedLm, Seq2SeqLm, Tokenizer};

/// How a model is asked for the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStyle {
    /// A decoder predicts the object from the text left of the mask.
    #[default]
    Causal,
    /// An encoder-decoder fills the sentinel `<extra_id_0>` put where the object was (T5).
    Sentinel,
    /// An encoder fills the mask token with both sides visible ([`probe_masked`]).
    Masked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ranking {
    #[default]
    Vocabulary,
    Candidates,
}

impl Ranking {
    pub fn as_str(self) -> &'static str {
        match self {
            Ranking::Vocabulary => "vocabulary",
            Ranking::Candidates => "candidates",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeOptions {
    pub style: ProbeStyle,
    pub ranking: Ranking,
    /// The k of P@k.
    pub ks: Vec<usize>,
    /// Prompts (vocabulary) or (prompt, candidate) pairs (candidates) per forward pass.
    pub batch_size: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            style: ProbeStyle::Causal,
            ranking: Ranking::Vocabulary,
            ks: vec![1, 5, 10],
            batch_size: 16,
        }
    }
}

/// One probed fact, as a per-fact JSONL line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FactResult {
    pub relation: String,
    pub split: Split,
    /// Position of the fact in its relation.
    pub index: usize,
    pub subject: String,
    pub object: String,
    /// The text the model continues.
    pub prompt: String,
    /// Tokens of the object as it follows the prompt (vocabulary ranking scores the first).
    pub object_tokens: usize,
    /// 1 = the model's first choice.
    pub rank: usize,
    /// How many entries were ranked: the vocabulary size, or the relation's candidate count.
    pub ranked: usize,
    /// Log-probability of the gold: its first token (vocabulary) or all its tokens (candidates).
    pub logprob: f64,
    /// The model's first choice: the decoded top token, or the best candidate.
    pub top_prediction: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelationMetrics {
    pub split: Split,
    pub facts: usize,
    pub skipped: usize,
    pub p_at: BTreeMap<usize, f64>,
    pub mrr: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnowledgeMetrics {
    /// P@k averaged across relations (each relation with at least one probed fact counts once).
    pub p_at: BTreeMap<usize, f64>,
    pub mrr: f64,
    /// P@k over all probed facts together.
    pub micro_p_at: BTreeMap<usize, f64>,
    pub micro_mrr: f64,
    /// Facts probed.
    pub facts: usize,
    /// Facts that could not be probed (empty prompt or object).
    pub skipped: usize,
    /// Relations with at least one probed fact.
    pub relations: usize,
    pub per_relation: BTreeMap<String, RelationMetrics>,
}

/// The prompt a causal model continues, with the whitespace that precedes the object, or
/// `None` when the fact cannot be probed this way.
fn causal_context(fact: &Fact) -> Option<&str> {
    let left = fact.left.trim_start();
    (!left.trim_end().is_empty() && !fact.object.trim().is_empty()).then_some(left)
}

/// Whether `style` can ask `fact`: a causal probe needs text left of the mask and an object, a
/// sentinel probe only an object.
fn probeable(fact: &Fact, style: ProbeStyle) -> bool {
    match style {
        ProbeStyle::Causal => causal_context(fact).is_some(),
        ProbeStyle::Sentinel => !fact.object.trim().is_empty(),
        // Which facts a masked probe asks depends on the tokenizer (see `probe_masked`).
        ProbeStyle::Masked => true,
    }
}

/// The sentinel probe's source text: the cloze with `<extra_id_0>` for the object, trimmed.
pub fn sentinel_source(fact: &Fact) -> String {
    format!("{}{SENTINEL}{}", fact.left, fact.right)
        .trim()
        .to_string()
}

/// The span-corruption sentinel an encoder-decoder fills.
pub const SENTINEL: &str = "<extra_id_0>";

/// The prompt as the model sees it: the text left of `[MASK]`, trimmed.
pub fn causal_prompt(fact: &Fact) -> Option<&str> {
    causal_context(fact).map(str::trim_end)
}

/// The units `probe`'s `tick` counts in total: probed facts (vocabulary) or (fact, candidate)
/// pairs (candidates).
pub fn probe_units(set: &LamaSet, opts: &ProbeOptions) -> u64 {
    set.relations
        .iter()
        .map(|r| {
            let probed = r.facts.iter().filter(|f| probeable(f, opts.style)).count();
            let per_fact = match opts.ranking {
                Ranking::Vocabulary => 1,
                Ranking::Candidates => candidates(&r.facts).len(),
            };
            (probed * per_fact) as u64
        })
        .sum()
}

/// A relation's candidate objects: its distinct objects in order of first appearance.
fn candidates(facts: &[Fact]) -> Vec<&str> {
    let mut seen = HashSet::new();
    facts
        .iter()
        .map(|f| f.object.as_str())
        .filter(|o| seen.insert(*o))
        .collect()
}

/// 1 + the number of scores strictly above `gold`; a NaN gold ranks last.
fn rank_of(gold: f64, others_above: usize, total: usize) -> usize {
    if gold.is_nan() {
        total
    } else {
        others_above + 1
    }
}

fn check_ks(ks: &[usize]) -> Result<Vec<usize>, EvalError> {
    if ks.is_empty() || ks.contains(&0) {
        return Err(EvalError::Invalid(format!(
            "P@k needs k ≥ 1 and at least one k, got {ks:?}"
        )));
    }
    let mut ks = ks.to_vec();
    ks.sort_unstable();
    ks.dedup();
    Ok(ks)
}

/// Probes every fact of `set`. `tick` receives units as [`probe_units`] counts them.
pub fn probe(
    model: &dyn CausalLm,
    encoder: &PairEncoder,
    set: &LamaSet,
    opts: &ProbeOptions,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<(KnowledgeMetrics, Vec<FactResult>), EvalError> {
    let ks = check_ks(&opts.ks)?;
    if opts.style != ProbeStyle::Causal {
        return Err(EvalError::Invalid(format!(
            "a causal model is probed with style `causal`, not {:?}",
            opts.style
        )));
    }
    let results = match opts.ranking {
        Ranking::Vocabulary => probe_vocabulary(model, encoder, set, opts, device, tick)?,
        Ranking::Candidates => probe_candidates(model, encoder, set, opts, device, tick)?,
    };
    Ok((knowledge_metrics(set, &results, &ks)?, results))
}

struct Query<'s> {
    relation: usize,
    index: usize,
    fact: &'s Fact,
    request: Request,
}

fn queries<'s>(encoder: &PairEncoder, set: &'s LamaSet) -> Result<Vec<Query<'s>>, EvalError> {
    let mut out = Vec::new();
    for (relation, r) in set.relations.iter().enumerate() {
        for (index, fact) in r.facts.iter().enumerate() {
            let Some(context) = causal_context(fact) else {
                continue;
            };
            let request = encoder.encode_pair(context, &fact.object)?;
            if request.continuation.is_empty() {
                return Err(EvalError::Invalid(format!(
                    "relation {}, fact {index}: the object {:?} adds no tokens after the prompt \
                     {context:?} (the tokenizer merges it into the prompt's last token)",
                    r.id, fact.object
                )));
            }
            out.push(Query {
                relation,
                index,
                fact,
                request,
            });
        }
    }
    Ok(out)
}

fn result(set: &LamaSet, q: &Query) -> FactResult {
    let r = &set.relations[q.relation];
    FactResult {
        relation: r.id.clone(),
        split: r.split,
        index: q.index,
        subject: q.fact.subject.clone(),
        object: q.fact.object.clone(),
        prompt: causal_prompt(q.fact).unwrap_or_default().to_string(),
        object_tokens: q.request.continuation.len(),
        rank: 0,
        ranked: 0,
        logprob: 0.0,
        top_prediction: String::new(),
    }
}

fn probe_vocabulary(
    model: &dyn CausalLm,
    encoder: &PairEncoder,
    set: &LamaSet,
    opts: &ProbeOptions,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<Vec<FactResult>, EvalError> {
    let qs = queries(encoder, set)?;
    let max_len = encoder.max_len();
    let inputs: Vec<&[u32]> = qs
        .iter()
        .map(|q| {
            let c = &q.request.context;
            &c[c.len().saturating_sub(max_len)..]
        })
        .collect();
    let mut order: Vec<usize> = (0..qs.len()).collect();
    order.sort_by(|&a, &b| {
        inputs[b]
            .len()
            .cmp(&inputs[a].len())
            .then_with(|| inputs[a].cmp(inputs[b]))
    });
    let mut out: Vec<Option<FactResult>> = vec![None; qs.len()];
    let batches = Picks::batches(&order, opts.batch_size, |i| {
        let target = qs[i].request.continuation[0];
        (inputs[i], vec![(inputs[i].len() - 1, target)])
    });
    logits_at(
        model,
        &batches,
        device,
        &mut |batch, logits| {
            let ranked = vocabulary_ranks(&logits, &batch.targets, device)?;
            for (&i, (rank, logprob, top)) in batch.items.iter().zip(ranked) {
                let mut r = result(set, &qs[i]);
                r.rank = rank;
                r.ranked = logits.dims()[1];
                r.logprob = logprob;
                r.top_prediction = encoder.tokenizer().decode(&[top])?;
                out[i] = Some(r);
            }
            Ok(batch.items.len() as u64)
        },
        tick,
    )?;
    Ok(out.into_iter().flatten().collect())
}

/// Per row of `logits` [n, vocab]: (rank of the target, its log-probability, the top token).
fn vocabulary_ranks(
    logits: &Tensor,
    targets: &[u32],
    device: &Device,
) -> Result<Vec<(usize, f64, u32)>, EvalError> {
    let vocab = logits.dims()[1];
    let t = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), device)?;
    let gold = logits.gather(&t, 1)?;
    let above = logits
        .broadcast_gt(&gold)?
        .to_dtype(DType::F32)?
        .sum(1)?
        .to_vec1::<f32>()?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?
        .gather(&t, 1)?
        .squeeze(1)?
        .to_vec1::<f32>()?;
    let gold = gold.squeeze(1)?.to_vec1::<f32>()?;
    let top = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok((0..targets.len())
        .map(|i| {
            (
                rank_of(gold[i] as f64, above[i] as usize, vocab),
                logp[i] as f64,
                top[i],
            )
        })
        .collect())
}

fn probe_candidates(
    model: &dyn CausalLm,
    encoder: &PairEncoder,
    set: &LamaSet,
    opts: &ProbeOptions,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<Vec<FactResult>, EvalError> {
    let qs = queries(encoder, set)?;
    let cands: Vec<Vec<&str>> = set.relations.iter().map(|r| candidates(&r.facts)).collect();
    let mut requests = Vec::new();
    for q in &qs {
        let context = causal_context(q.fact).expect("queries hold probed facts only");
        for c in &cands[q.relation] {
            requests.push(encoder.encode_pair(context, c)?);
        }
    }
    let scores = loglikelihood(
        model,
        &requests,
        encoder.max_len(),
        opts.batch_size,
        device,
        tick,
    )?;
    let mut at = 0;
    let mut out = Vec::with_capacity(qs.len());
    for q in &qs {
        let names = &cands[q.relation];
        let lls: Vec<f64> = scores[at..at + names.len()]
            .iter()
            .map(|s| s.logprob)
            .collect();
        at += names.len();
        let g = names
            .iter()
            .position(|c| *c == q.fact.object)
            .expect("the gold is a candidate");
        let above = lls.iter().filter(|&&v| v > lls[g]).count();
        // The best candidate, NaNs aside (they never outrank).
        let top =
            (0..lls.len())
                .filter(|&i| !lls[i].is_nan())
                .fold(None, |best: Option<usize>, i| match best {
                    Some(b) if lls[b] >= lls[i] => Some(b),
                    _ => Some(i),
                });
        let mut r = result(set, q);
        r.rank = rank_of(lls[g], above, names.len());
        r.ranked = names.len();
        r.logprob = lls[g];
        r.top_prediction = top.map_or_else(String::new, |i| names[i].to_string());
        out.push(r);
    }
    Ok(out)
}

/// One fact asked of an encoder-decoder: its source and object tokens.
struct SentinelQuery<'s> {
    relation: usize,
    index: usize,
    fact: &'s Fact,
    source: Vec<u32>,
    object: Vec<u32>,
}

fn sentinel_id(tokenizer: &Tokenizer) -> Result<u32, EvalError> {
    tokenizer.token_id(SENTINEL).ok_or_else(|| {
        EvalError::Invalid(format!(
            "the tokenizer {} has no `{SENTINEL}` token: sentinel probing needs a T5-style \
             tokenizer with span-corruption sentinels",
            tokenizer.path().display()
        ))
    })
}

fn sentinel_queries<'s>(
    tokenizer: &Tokenizer,
    set: &'s LamaSet,
) -> Result<Vec<SentinelQuery<'s>>, EvalError> {
    let mut out = Vec::new();
    for (relation, r) in set.relations.iter().enumerate() {
        for (index, fact) in r.facts.iter().enumerate() {
            if !probeable(fact, ProbeStyle::Sentinel) {
                continue;
            }
            let object = tokenizer.encode(fact.object.trim(), false)?;
            if object.is_empty() {
                return Err(EvalError::Invalid(format!(
                    "relation {}, fact {index}: the object {:?} encodes to no tokens",
                    r.id, fact.object
                )));
            }
            out.push(SentinelQuery {
                relation,
                index,
                fact,
                source: tokenizer.encode(&sentinel_source(fact), true)?,
                object,
            });
        }
    }
    Ok(out)
}

/// Rows of token ids right-padded with `pad` to the longest, as [rows, len], with their lengths.
fn padded(rows: &[&[u32]], pad: u32, device: &Device) -> Result<(Tensor, Vec<usize>), EvalError> {
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
    let flat: Vec<u32> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat(pad)).take(len))
        .collect();
    Ok((Tensor::from_vec(flat, (rows.len(), len), device)?, lengths))
}

/// Probes every fact of `set` on an encoder-decoder with the sentinel style (module docs).
/// `tick` receives units as [`probe_units`] counts them.
pub fn probe_seq2seq(
    model: &dyn Seq2SeqLm,
    tokenizer: &Tokenizer,
    set: &LamaSet,
    opts: &ProbeOptions,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<(KnowledgeMetrics, Vec<FactResult>), EvalError> {
    let ks = check_ks(&opts.ks)?;
    if opts.style != ProbeStyle::Sentinel {
        return Err(EvalError::Invalid(format!(
            "an encoder-decoder is probed with style `sentinel`, not {:?}",
            opts.style
        )));
    }
    let sentinel = sentinel_id(tokenizer)?;
    let qs = sentinel_queries(tokenizer, set)?;
    let start = model.decoder_start();
    let batch_size = opts.batch_size.max(1);
    let result_of = |q: &SentinelQuery| {
        let r = &set.relations[q.relation];
        FactResult {
            relation: r.id.clone(),
            split: r.split,
            index: q.index,
            subject: q.fact.subject.clone(),
            object: q.fact.object.clone(),
            prompt: sentinel_source(q.fact),
            object_tokens: q.object.len(),
            rank: 0,
            ranked: 0,
            logprob: 0.0,
            top_prediction: String::new(),
        }
    };
    let mut out = Vec::with_capacity(qs.len());
    match opts.ranking {
        Ranking::Vocabulary => {
            // Longest sources first, so batch shapes shrink; results go back in fact order.
            let mut order: Vec<usize> = (0..qs.len()).collect();
            order.sort_by(|&a, &b| qs[b].source.len().cmp(&qs[a].source.len()));
            let mut found: Vec<Option<FactResult>> = vec![None; qs.len()];
            for chunk in order.chunks(batch_size) {
                let rows: Vec<&[u32]> = chunk.iter().map(|&i| qs[i].source.as_slice()).collect();
                let (src, lengths) = padded(&rows, start, device)?;
                let enc = model.encode(&src, &lengths)?;
                let tgt = Tensor::from_vec(
                    chunk.iter().flat_map(|_| [start, sentinel]).collect(),
                    (chunk.len(), 2),
                    device,
                )?;
                let logits = model
                    .decode(&enc, &lengths, &tgt)?
                    .narrow(1, 1, 1)?
                    .squeeze(1)?
                    .contiguous()?;
                let targets: Vec<u32> = chunk.iter().map(|&i| qs[i].object[0]).collect();
                let ranked = vocabulary_ranks(&logits, &targets, device)?;
                for (&i, (rank, logprob, top)) in chunk.iter().zip(ranked) {
                    let mut r = result_of(&qs[i]);
                    r.rank = rank;
                    r.ranked = logits.dims()[1];
                    r.logprob = logprob;
                    r.top_prediction = tokenizer.decode(&[top])?;
                    found[i] = Some(r);
                }
                tick(chunk.len() as u64)?;
            }
            out.extend(found.into_iter().flatten());
        }
        Ranking::Candidates => {
            let cands: Vec<Vec<&str>> =
                set.relations.iter().map(|r| candidates(&r.facts)).collect();
            let mut cand_tokens: Vec<Vec<Vec<u32>>> = Vec::new();
            for names in &cands {
                cand_tokens.push(
                    names
                        .iter()
                        .map(|c| tokenizer.encode(c.trim(), false))
                        .collect::<Result<_, _>>()?,
                );
            }
            for q in &qs {
                let names = &cands[q.relation];
                let toks = &cand_tokens[q.relation];
                let src = Tensor::from_vec(q.source.clone(), (1, q.source.len()), device)?;
                let enc = model.encode(&src, &[q.source.len()])?;
                let mut lls = Vec::with_capacity(names.len());
                let all: Vec<usize> = (0..names.len()).collect();
                for chunk in all.chunks(batch_size) {
                    let rows: Vec<Vec<u32>> = chunk
                        .iter()
                        .map(|&c| {
                            [start, sentinel]
                                .into_iter()
                                .chain(toks[c].iter().copied())
                                .collect()
                        })
                        .collect();
                    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
                    let (tgt, _) = padded(&refs, start, device)?;
                    let encs = enc.repeat((chunk.len(), 1, 1))?;
                    let lens = vec![q.source.len(); chunk.len()];
                    let logp =
                        candle_nn::ops::log_softmax(&model.decode(&encs, &lens, &tgt)?, D::Minus1)?
                            .to_dtype(DType::F64)?;
                    for (row, &c) in chunk.iter().enumerate() {
                        // Object token k (0-based) sits at decoder position k + 2, predicted
                        // from position k + 1.
                        let mut sum = 0f64;
                        for (k, &t) in toks[c].iter().enumerate() {
                            sum += logp
                                .get(row)?
                                .get(k + 1)?
                                .get(t as usize)?
                                .to_scalar::<f64>()?;
                        }
                        lls.push(sum);
                    }
                    tick(chunk.len() as u64)?;
                }
                let g = names
                    .iter()
                    .position(|c| *c == q.fact.object)
                    .expect("the gold is a candidate");
                let above = lls.iter().filter(|&&v| v > lls[g]).count();
                let top = (0..lls.len()).filter(|&i| !lls[i].is_nan()).fold(
                    None,
                    |best: Option<usize>, i| match best {
                        Some(b) if lls[b] >= lls[i] => Some(b),
                        _ => Some(i),
                    },
                );
                let mut r = result_of(q);
                r.rank = rank_of(lls[g], above, names.len());
                r.ranked = names.len();
                r.logprob = lls[g];
                r.top_prediction = top.map_or_else(String::new, |i| names[i].to_string());
                out.push(r);
            }
        }
    }
    Ok((
        knowledge_metrics_for(set, &out, &ks, ProbeStyle::Sentinel)?,
        out,
    ))
}

/// P@k and MRR of `ranks` (each ≥ 1).
pub fn rank_metrics(ranks: &[usize], ks: &[usize]) -> (BTreeMap<usize, f64>, f64) {
    let n = ranks.len() as f64;
    let p_at = ks
        .iter()
        .map(|&k| (k, ranks.iter().filter(|&&r| r <= k).count() as f64 / n))
        .collect();
    let mrr = ranks.iter().map(|&r| 1.0 / r as f64).sum::<f64>() / n;
    (p_at, mrr)
}

/// Per-relation, macro and micro metrics of `results` on `set`; relations with no probed fact
/// are listed with their skip counts but left out of the averages.
pub fn knowledge_metrics(
    set: &LamaSet,
    results: &[FactResult],
    ks: &[usize],
) -> Result<KnowledgeMetrics, EvalError> {
    knowledge_metrics_for(set, results, ks, ProbeStyle::Causal)
}

/// [`knowledge_metrics`] of a causal or sentinel probe (the style decides the facts counted as
/// skipped).
pub fn knowledge_metrics_for(
    set: &LamaSet,
    results: &[FactResult],
    ks: &[usize],
    style: ProbeStyle,
) -> Result<KnowledgeMetrics, EvalError> {
    metrics_skipping(set, results, ks, &|_, _, f| !probeable(f, style))
}

/// [`knowledge_metrics`] with `skipped_fact(relation, index, fact)` saying which facts were not
/// probed.
fn metrics_skipping(
    set: &LamaSet,
    results: &[FactResult],
    ks: &[usize],
    skipped_fact: &dyn Fn(usize, usize, &Fact) -> bool,
) -> Result<KnowledgeMetrics, EvalError> {
    let ks = check_ks(ks)?;
    let mut ranks: HashMap<&str, Vec<usize>> = HashMap::new();
    for r in results {
        ranks.entry(&r.relation).or_default().push(r.rank);
    }
    let mut per_relation = BTreeMap::new();
    let mut skipped = 0;
    for (ri, rel) in set.relations.iter().enumerate() {
        let s = (rel.facts.iter().enumerate())
            .filter(|(i, f)| skipped_fact(ri, *i, f))
            .count();
        skipped += s;
        let rs = ranks.get(rel.id.as_str()).map_or(&[][..], |v| &v[..]);
        let (p_at, mrr) = if rs.is_empty() {
            (BTreeMap::new(), f64::NAN)
        } else {
            rank_metrics(rs, &ks)
        };
        per_relation.insert(
            rel.id.clone(),
            RelationMetrics {
                split: rel.split,
                facts: rs.len(),
                skipped: s,
                p_at,
                mrr,
            },
        );
    }
    let scored: Vec<&RelationMetrics> = per_relation.values().filter(|m| m.facts > 0).collect();
    if scored.is_empty() {
        return Err(EvalError::Invalid(format!(
            "no fact could be probed ({} facts in {} relations, {skipped} skipped)",
            set.num_facts(),
            set.relations.len()
        )));
    }
    let n = scored.len() as f64;
    let p_at = ks
        .iter()
        .map(|k| (*k, scored.iter().map(|m| m.p_at[k]).sum::<f64>() / n))
        .collect();
    let mrr = scored.iter().map(|m| m.mrr).sum::<f64>() / n;
    let all: Vec<usize> = results.iter().map(|r| r.rank).collect();
    let (micro_p_at, micro_mrr) = rank_metrics(&all, &ks);
    Ok(KnowledgeMetrics {
        p_at,
        mrr,
        micro_p_at,
        micro_mrr,
        facts: all.len(),
        skipped,
        relations: scored.len(),
        per_relation,
    })
}

/// The facts of `set` that the base model ranked first in `base` (matched by relation, subject,
/// object and prompt); facts without a base result are dropped.
pub fn known_only(set: &LamaSet, base: &[FactResult]) -> LamaSet {
    known_only_by(set, base, &|f| causal_prompt(f).map(str::to_string))
}

/// [`known_only`] for a masked model's results, whose prompts hold the mask token `mask`.
pub fn known_only_masked(set: &LamaSet, base: &[FactResult], mask: &str) -> LamaSet {
    known_only_by(set, base, &|f| Some(masked_text(f, mask)))
}

fn known_only_by(
    set: &LamaSet,
    base: &[FactResult],
    prompt_of: &dyn Fn(&Fact) -> Option<String>,
) -> LamaSet {
    let known: HashSet<(&str, &str, &str, &str)> = base
        .iter()
        .filter(|r| r.rank == 1)
        .map(|r| {
            (
                r.relation.as_str(),
                r.subject.as_str(),
                r.object.as_str(),
                r.prompt.as_str(),
            )
        })
        .collect();
    let mut out = set.clone();
    for rel in &mut out.relations {
        let id = rel.id.clone();
        rel.facts.retain(|f| {
            prompt_of(f).is_some_and(|p| {
                known.contains(&(id.as_str(), f.subject.as_str(), f.object.as_str(), &p))
            })
        });
    }
    out
}

/// The mask tokens a masked model's tokenizer may have, in the order they are looked for.
const MASK_TOKENS: [&str; 2] = ["[MASK]", "<mask>"];

/// The tokenizer's mask token and its id, or an error naming the ones looked for.
pub fn mask_token(tokenizer: &Tokenizer) -> Result<(&'static str, u32), EvalError> {
    MASK_TOKENS
        .iter()
        .find_map(|t| tokenizer.token_id(t).map(|id| (*t, id)))
        .ok_or_else(|| {
            EvalError::Invalid(format!(
                "tokenizer {} has no mask token (looked for {}); a masked model is probed by \
                 filling one",
                tokenizer.path().display(),
                MASK_TOKENS.join(" or ")
            ))
        })
}

/// The cloze with `mask` in place of the object.
pub fn masked_text(fact: &Fact, mask: &str) -> String {
    format!("{}{mask}{}", fact.left, fact.right)
}

/// The single token `object` becomes in place of the mask of `masked` (the cloze's encoding):
/// `None` when it is not exactly one token there.
fn fill_token(
    tokenizer: &Tokenizer,
    fact: &Fact,
    object: &str,
    masked: &[u32],
    mask_id: u32,
) -> Result<Option<u32>, EvalError> {
    if object.trim().is_empty() {
        return Ok(None);
    }
    let filled = tokenizer.encode(&format!("{}{object}{}", fact.left, fact.right), true)?;
    let prefix = masked
        .iter()
        .zip(&filled)
        .take_while(|(a, b)| a == b)
        .count();
    let room = masked.len().min(filled.len()) - prefix;
    let suffix = masked
        .iter()
        .rev()
        .zip(filled.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    let (m, f) = (
        &masked[prefix..masked.len() - suffix],
        &filled[prefix..filled.len() - suffix],
    );
    Ok((m == [mask_id] && f.len() == 1).then(|| f[0]))
}

struct MaskedQuery<'s> {
    relation: usize,
    index: usize,
    fact: &'s Fact,
    ids: Vec<u32>,
    mask_pos: usize,
    target: u32,
    /// With candidate ranking: the distinct single-token candidates' ids (the gold's among them).
    candidates: Vec<u32>,
}

/// The facts a masked model can be asked, and which (relation, fact index) it cannot.
type MaskedQueries<'s> = (Vec<MaskedQuery<'s>>, HashSet<(usize, usize)>);

/// The facts a masked model can be asked, and which (relation, fact) it cannot.
fn masked_queries<'s>(
    tokenizer: &Tokenizer,
    set: &'s LamaSet,
    max_len: usize,
    ranking: Ranking,
) -> Result<MaskedQueries<'s>, EvalError> {
    let (mask, mask_id) = mask_token(tokenizer)?;
    // An object the vocabulary lacks may come out as the unknown token: not a probe.
    let unknown: Vec<u32> = ["[UNK]", "<unk>"]
        .iter()
        .filter_map(|t| tokenizer.token_id(t))
        .collect();
    let mut out = Vec::new();
    let mut skipped = HashSet::new();
    for (relation, r) in set.relations.iter().enumerate() {
        let names = candidates(&r.facts);
        for (index, fact) in r.facts.iter().enumerate() {
            let ids = tokenizer.encode(&masked_text(fact, mask), true)?;
            let at: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == mask_id).collect();
            if at.len() != 1 {
                return Err(EvalError::Invalid(format!(
                    "relation {}, fact {index}: the cloze {:?} holds {} mask tokens after \
                     tokenization; it must hold exactly one",
                    r.id,
                    masked_text(fact, mask),
                    at.len()
                )));
            }
            let target = fill_token(tokenizer, fact, &fact.object, &ids, mask_id)?;
            let Some(target) = target.filter(|t| ids.len() <= max_len && !unknown.contains(t))
            else {
                skipped.insert((relation, index));
                continue;
            };
            let mut cands = Vec::new();
            if ranking == Ranking::Candidates {
                for c in &names {
                    if let Some(t) = fill_token(tokenizer, fact, c, &ids, mask_id)? {
                        if !cands.contains(&t) && !unknown.contains(&t) {
                            cands.push(t);
                        }
                    }
                }
            }
            out.push(MaskedQuery {
                relation,
                index,
                fact,
                mask_pos: at[0],
                ids,
                target,
                candidates: cands,
            });
        }
    }
    Ok((out, skipped))
}

/// The facts [`probe_masked`] will probe (its `tick` counts them).
pub fn masked_probe_units(
    tokenizer: &Tokenizer,
    set: &LamaSet,
    max_len: usize,
) -> Result<u64, EvalError> {
    let (qs, _) = masked_queries(tokenizer, set, max_len, Ranking::Vocabulary)?;
    Ok(qs.len() as u64)
}

/// Probes every fact of `set` on a masked language model (see the module docs).
pub fn probe_masked(
    model: &dyn MaskedLm,
    tokenizer: &Tokenizer,
    set: &LamaSet,
    opts: &ProbeOptions,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<(KnowledgeMetrics, Vec<FactResult>), EvalError> {
    let ks = check_ks(&opts.ks)?;
    if opts.style != ProbeStyle::Masked {
        return Err(EvalError::Invalid(
            "a masked model is probed with the masked style".into(),
        ));
    }
    if opts.batch_size == 0 {
        return Err(EvalError::Invalid("batch_size must be at least 1".into()));
    }
    let max_len = model.config().max_position_embeddings;
    let (qs, skipped) = masked_queries(tokenizer, set, max_len, opts.ranking)?;
    let (mask, _) = mask_token(tokenizer)?;
    // Longest first, so each batch pads little; results do not depend on the order.
    let mut order: Vec<usize> = (0..qs.len()).collect();
    order.sort_by(|&a, &b| {
        qs[b]
            .ids
            .len()
            .cmp(&qs[a].ids.len())
            .then_with(|| qs[a].ids.cmp(&qs[b].ids))
    });
    let mut out: Vec<Option<FactResult>> = vec![None; qs.len()];
    for batch in order.chunks(opts.batch_size) {
        let s = batch.iter().map(|&i| qs[i].ids.len()).max().unwrap_or(1);
        let mut flat = Vec::with_capacity(batch.len() * s);
        let mut lengths = Vec::with_capacity(batch.len());
        for &i in batch {
            let ids = &qs[i].ids;
            flat.extend_from_slice(ids);
            // Padding is hidden by the lengths; any id in the vocabulary will do.
            flat.extend(std::iter::repeat_n(0u32, s - ids.len()));
            lengths.push(ids.len());
        }
        let tokens = Tensor::from_vec(flat, (batch.len(), s), device)?;
        let logits = model.forward_masked(&tokens, &lengths)?;
        let rows = batch
            .iter()
            .enumerate()
            .map(|(b, &i)| logits.get(b)?.get(qs[i].mask_pos))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let rows = Tensor::stack(&rows, 0)?;
        let targets: Vec<u32> = batch.iter().map(|&i| qs[i].target).collect();
        let ranked = vocabulary_ranks(&rows, &targets, device)?;
        for (b, (&i, (rank, logprob, top))) in batch.iter().zip(ranked).enumerate() {
            let q = &qs[i];
            let r = &set.relations[q.relation];
            let (rank, ranked, top) = match opts.ranking {
                Ranking::Vocabulary => (rank, rows.dims()[1], top),
                Ranking::Candidates => {
                    let row: Vec<f32> = rows.get(b)?.to_vec1()?;
                    let gold = row[q.target as usize];
                    let above = q
                        .candidates
                        .iter()
                        .filter(|&&c| row[c as usize] > gold)
                        .count();
                    let best = q.candidates.iter().copied().fold(q.target, |best, c| {
                        if row[c as usize] > row[best as usize] {
                            c
                        } else {
                            best
                        }
                    });
                    let n = q.candidates.len();
                    (rank_of(f64::from(gold), above, n), n, best)
                }
            };
            out[i] = Some(FactResult {
                relation: r.id.clone(),
                split: r.split,
                index: q.index,
                subject: q.fact.subject.clone(),
                object: q.fact.object.clone(),
                prompt: masked_text(q.fact, mask),
                object_tokens: 1,
                rank,
                ranked,
                logprob,
                top_prediction: tokenizer.decode(&[top])?,
            });
        }
        tick(batch.len() as u64)?;
    }
    let results: Vec<FactResult> = out.into_iter().flatten().collect();
    let metrics = metrics_skipping(set, &results, &ks, &|r, i, _| skipped.contains(&(r, i)))?;
    Ok((metrics, results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::lama::Relation;

    fn fact(subject: &str, object: &str, left: &str) -> Fact {
        Fact {
            subject: subject.into(),
            object: object.into(),
            left: left.into(),
            right: " .".into(),
        }
    }

    fn relation(id: &str, facts: Vec<Fact>) -> Relation {
        Relation {
            id: id.into(),
            split: Split::Trex,
            label: id.into(),
            template: None,
            facts,
            excluded: 0,
        }
    }

    fn res(relation: &str, subject: &str, object: &str, prompt: &str, rank: usize) -> FactResult {
        FactResult {
            relation: relation.into(),
            split: Split::Trex,
            index: 0,
            subject: subject.into(),
            object: object.into(),
            prompt: prompt.into(),
            object_tokens: 1,
            rank,
            ranked: 100,
            logprob: -1.0,
            top_prediction: String::new(),
        }
    }

    #[test]
    fn prompts_trim_and_skip() {
        let f = fact("a", "Rome", "  a lives in ");
        assert_eq!(causal_context(&f), Some("a lives in "));
        assert_eq!(causal_prompt(&f), Some("a lives in"));
        assert_eq!(causal_prompt(&fact("a", "Rome", "  ")), None);
        assert_eq!(causal_prompt(&fact("a", " ", "a is")), None);
    }

    #[test]
    fn rank_metrics_by_hand() {
        let (p, mrr) = rank_metrics(&[1, 3, 12, 2], &[1, 3, 10]);
        assert_eq!(p[&1], 0.25);
        assert_eq!(p[&3], 0.75);
        assert_eq!(p[&10], 0.75);
        let want = (1.0 + 1.0 / 3.0 + 1.0 / 12.0 + 0.5) / 4.0;
        assert!((mrr - want).abs() < 1e-15);
        assert_eq!(rank_of(f64::NAN, 0, 7), 7);
        assert_eq!(rank_of(-1.0, 2, 7), 3);
    }

    #[test]
    fn macro_micro_and_skips_by_hand() {
        let set = LamaSet {
            relations: vec![
                relation(
                    "A",
                    vec![
                        fact("x", "1", "x is"),
                        fact("y", "2", "y is"),
                        fact("z", "3", ""),
                    ],
                ),
                relation(
                    "B",
                    vec![
                        fact("u", "4", "u is"),
                        fact("v", "5", "v is"),
                        fact("w", "6", "w is"),
                        fact("t", "7", "t is"),
                    ],
                ),
                relation("C", vec![fact("s", "8", "")]),
            ],
            missing: vec![],
        };
        let results = vec![
            res("A", "x", "1", "x is", 1),
            res("A", "y", "2", "y is", 4),
            res("B", "u", "4", "u is", 1),
            res("B", "v", "5", "v is", 1),
            res("B", "w", "6", "w is", 1),
            res("B", "t", "7", "t is", 2),
        ];
        let m = knowledge_metrics(&set, &results, &[1, 5]).unwrap();
        // A: P@1 1/2, MRR (1 + 1/4)/2; B: P@1 3/4, MRR (3 + 1/2)/4.
        assert_eq!(m.per_relation["A"].p_at[&1], 0.5);
        assert_eq!(m.per_relation["A"].skipped, 1);
        assert_eq!(m.per_relation["C"].facts, 0);
        assert_eq!(m.per_relation["C"].skipped, 1);
        assert!((m.p_at[&1] - (0.5 + 0.75) / 2.0).abs() < 1e-15);
        assert_eq!(m.p_at[&5], 1.0);
        let mrr_a = (1.0 + 0.25) / 2.0;
        let mrr_b = (3.0 + 0.5) / 4.0;
        assert!((m.mrr - (mrr_a + mrr_b) / 2.0).abs() < 1e-15);
        assert!((m.micro_p_at[&1] - 4.0 / 6.0).abs() < 1e-15);
        assert_eq!((m.facts, m.skipped, m.relations), (6, 2, 2));

        let known = known_only(&set, &results);
        let kept: Vec<usize> = known.relations.iter().map(|r| r.facts.len()).collect();
        assert_eq!(kept, [1, 3, 0]);
        assert_eq!(known.relations[0].facts[0].subject, "x");

        let none = LamaSet {
            relations: vec![relation("C", vec![fact("s", "8", "")])],
            missing: vec![],
        };
        assert!(knowledge_metrics(&none, &[], &[1]).is_err());
        assert!(knowledge_metrics(&set, &results, &[0]).is_err());
    }

    #[test]
    fn candidates_are_distinct_objects_in_order() {
        let facts = vec![
            fact("a", "Rome", "a"),
            fact("b", "Oslo", "b"),
            fact("c", "Rome", "c"),
        ];
        assert_eq!(candidates(&facts), ["Rome", "Oslo"]);
        let set = LamaSet {
            relations: vec![relation("A", facts)],
            missing: vec![],
        };
        let mut opts = ProbeOptions::default();
        assert_eq!(probe_units(&set, &opts), 3);
        opts.ranking = Ranking::Candidates;
        assert_eq!(probe_units(&set, &opts), 6);
    }
}
