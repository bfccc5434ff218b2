//! Training a small `BertForMaskedLM` ([`TrainArch::Bert`]) with the masked-LM objective.
//!
//! **Model.** The runtime's own post-LayerNorm encoder on [`candle_core::Var`]s under
//! transformers' names, initialised as the decoders are ([`super::trainer`]: N(0, `init_std`),
//! LayerNorm weights 1, biases 0; the decoder tied to the word embeddings); `seqlen` is also its
//! `max_position_embeddings`. The world's tokenizer gains `[MASK]` as one more special token (the
//! last id), for this architecture only, so the other architectures' tokenizers, and their keys,
//! are unchanged.
//!
//! **Examples.** Sentences, as T5's ([`super::seq2seq`]): documents are cut after each `.` token
//! and each sentence, behind `<s>` (as the tokenizer encodes a probe), truncated to `seqlen`
//! tokens, is one example. A step draws `batch` sentences uniformly and masks each, with
//! probability [`WORD_MASK_RATE`] one uniformly drawn word (a token with a letter or digit; the
//! masked probe's shape, `<s> Ann was born in [MASK] .`), otherwise each token after `<s>` with
//! probability [`MASK_RATE`] (at least one). A picked token is always replaced by `[MASK]` (no
//! 80/10/10 rule: the probe only ever shows `[MASK]`). Rows are right-padded and their padding
//! hidden by the lengths; the loss is the cross-entropy of the original tokens at the picked
//! positions. Init from ChaCha8(seed) stream 0, sentence draws from stream 1, picks from stream
//! 2: a run repeats bit for bit. Optimizer, schedule and clipping are the decoders'.
//!
//! **Why sentences.** Random windows of the document stream, as the decoders train on (a window
//! of `seqlen` tokens starting anywhere, spanning sentences and documents), did not train: the
//! loss fell from 5.4 to the unigram level (4.0–4.7 nats) within ~80 steps and stayed there, and
//! the masked probe's P@1 on the facts was 0, with lr 1e-3 to 1e-2, up to 2500 steps, init_std
//! 0.1 and without clipping. On the 12-person world of `tests/bert_train.rs` (dim 48, 2 layers,
//! 800 steps of 64, lr 3e-3) windows of 32 tokens ended at loss 4.02 and P@1 0.000; sentences
//! with random 15% masking alone reached loss 0.64 but P@1 0.18 (best constant answer 0.125);
//! sentences with half the examples whole-word masked P@1 0.19 after 800 steps and 1.000 after
//! 1600 (80% whole-word: 0.58 after 800; all whole-word: 0.86). A fixed batch repeated is
//! memorised either way (the backward pass is right, and agrees with central differences).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use super::step::optimise;
use super::tokenizer::{BOS_ID, UNK_ID};
use super::trainer::{init_params, lm_of, save};
use super::{TrainArch, TrainConfig, TrainError, TrainSummary};
use crate::model::{MaskedLm, ModelConfig};

/// The mask token `arch: bert` adds to the world's tokenizer.
pub const MASK: &str = "[MASK]";

/// Of each example masked at random, the share of positions picked.
pub const MASK_RATE: f64 = 0.15;
/// The share of examples that mask one whole word rather than random positions.
pub const WORD_MASK_RATE: f64 = 0.5;

/// The `bert` defaults: the decoders' model size and init, sentences as examples (short:
/// `seqlen` 32), T5's batch and learning rate, twice its steps (each example teaches only its
/// masked tokens). On `tests/bert_train.rs`'s 12-person world (best constant answer 0.125) the
/// masked probe's P@1 was 0.19 after 800 steps, 0.972 after 1200 and 1.000 after 1600. On the
/// default world (`data/facts/`, 288 facts, best constant answer 0.090) P@1 0.917 after 4800
/// steps (P@5 0.997, final loss 0.63; 662 s on one busy thread), 0.247 after 2400 (P@5 0.684).
pub fn default_config() -> TrainConfig {
    TrainConfig {
        architecture: TrainArch::Bert,
        seqlen: 32,
        batch: 64,
        steps: 4800,
        lr: 3e-3,
        ..TrainConfig::default()
    }
}

/// The examples of `docs` as token ids: each sentence (cut after its `.`) behind `<s>`,
/// truncated to `max_len` tokens.
fn sentences(
    docs: &[String],
    tokenizer: &Tokenizer,
    max_len: usize,
) -> Result<Vec<Vec<u32>>, TrainError> {
    let plain = super::seq2seq::sentences(docs, tokenizer, max_len)?;
    Ok(plain
        .into_iter()
        .map(|s| {
            let mut row: Vec<u32> = std::iter::once(BOS_ID).chain(s).collect();
            row.truncate(max_len);
            row
        })
        .collect())
}

/// A masked-LM batch: rows with `[MASK]` at the picked positions, and the original tokens there.
struct MaskedBatch {
    rows: Vec<Vec<u32>>,
    /// (row, column) of each pick and its original token.
    picks: Vec<(usize, usize)>,
    targets: Vec<u32>,
}

impl MaskedBatch {
    fn mask_row(&mut self, tokens: &[u32], picked: &[usize], mask_id: u32) {
        let row = self.rows.len();
        let mut r = tokens.to_vec();
        for &p in picked {
            r[p] = mask_id;
            self.picks.push((row, p));
            self.targets.push(tokens[p]);
        }
        self.rows.push(r);
    }
}

/// The positions of `tokens` (a sentence behind `<s>`) to mask, by the module docs' rule.
fn picks(rng: &mut ChaCha8Rng, tokens: &[u32], is_word: &[bool]) -> Vec<usize> {
    // `<s>` is never masked, unless it is all there is.
    let first = usize::from(tokens.len() > 1);
    let words: Vec<usize> = (first..tokens.len())
        .filter(|&i| is_word[tokens[i] as usize])
        .collect();
    if !words.is_empty() && rng.random_bool(WORD_MASK_RATE) {
        return vec![words[rng.random_range(0..words.len())]];
    }
    let mut out: Vec<usize> = (first..tokens.len())
        .filter(|_| rng.random_bool(MASK_RATE))
        .collect();
    if out.is_empty() {
        out.push(rng.random_range(first..tokens.len()));
    }
    out
}

/// Cross-entropy of the original tokens at the picked positions.
fn masked_loss(
    model: &dyn MaskedLm,
    b: &MaskedBatch,
    device: &Device,
) -> Result<Tensor, TrainError> {
    let len = b.rows.iter().map(Vec::len).max().unwrap_or(1);
    let lengths: Vec<usize> = b.rows.iter().map(Vec::len).collect();
    let flat: Vec<u32> = b
        .rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat(UNK_ID)).take(len))
        .collect();
    let inputs = Tensor::from_vec(flat, (b.rows.len(), len), device)?;
    let logits = model.forward_masked(&inputs, &lengths)?;
    let v = logits.dims()[2];
    let picks: Vec<u32> = b.picks.iter().map(|&(r, p)| (r * len + p) as u32).collect();
    let n = picks.len();
    let picked = logits
        .reshape((b.rows.len() * len, v))?
        .index_select(&Tensor::from_vec(picks, n, device)?, 0)?;
    let targets = Tensor::from_vec(b.targets.clone(), n, device)?;
    Ok(candle_nn::loss::cross_entropy(&picked, &targets)?)
}

/// Trains a BERT on `docs` and writes the folder as [`super::train`] does.
pub(crate) fn train(
    docs: &[String],
    tokenizer: &Tokenizer,
    cfg: &TrainConfig,
    device: &Device,
    out_dir: &Path,
    on_step: &mut dyn FnMut(usize, f32) -> Result<(), TrainError>,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    let mut tokenizer = tokenizer.clone();
    tokenizer.add_special_tokens(&[tokenizers::AddedToken::from(MASK, true)]);
    let mask_id = tokenizer.token_to_id(MASK).unwrap_or(UNK_ID);
    let vocab_size = tokenizer.get_vocab_size(true);
    let mut is_word = super::seq2seq::word_tokens(&tokenizer);
    // `[MASK]` spells a word but is never one to mask.
    is_word[mask_id as usize] = false;
    let model_cfg = ModelConfig::from_json(&cfg.config_json(vocab_size).to_string())?;
    let corpus = sentences(docs, &tokenizer, cfg.seqlen)?;
    if corpus.is_empty() {
        return Err(TrainError::Config(
            "the corpus has no sentences to train a BERT on".into(),
        ));
    }
    let params = init_params(&model_cfg, cfg, DType::F32, device)?;
    let model = lm_of(&model_cfg, &params)?.into_masked("masked-LM training")?;
    let mut data_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    data_rng.set_stream(1);
    let mut mask_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    mask_rng.set_stream(2);
    let mut tokens_seen = 0;
    let losses = optimise(&params, cfg, on_step, |_| {
        let mut b = MaskedBatch {
            rows: Vec::with_capacity(cfg.batch),
            picks: Vec::new(),
            targets: Vec::new(),
        };
        for _ in 0..cfg.batch {
            let tokens = &corpus[data_rng.random_range(0..corpus.len())];
            let picked = picks(&mut mask_rng, tokens, &is_word);
            b.mask_row(tokens, &picked, mask_id);
        }
        tokens_seen += b.targets.len();
        masked_loss(&*model, &b, device)
    })?;
    save(out_dir, cfg, vocab_size, &tokenizer, &params)?;
    Ok(TrainSummary::of_run(
        losses,
        &params,
        tokens_seen,
        corpus.iter().map(Vec::len).sum(),
        vocab_size,
        started,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_skip_bos_and_whole_words_land_on_words() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // `<s>` and twenty tokens, two of them words.
        let tokens: Vec<u32> = std::iter::once(BOS_ID).chain(10..30).collect();
        let mut is_word = vec![false; 40];
        (is_word[15], is_word[22]) = (true, true);
        let (mut single_word, mut random) = (0, 0);
        for _ in 0..200 {
            let p = picks(&mut rng, &tokens, &is_word);
            assert!(!p.is_empty() && p.iter().all(|&i| (1..tokens.len()).contains(&i)));
            assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
            if p.len() == 1 && is_word[tokens[p[0]] as usize] {
                single_word += 1;
            } else {
                random += 1;
            }
        }
        // Half whole-word (plus the odd random draw of a single word).
        assert!((80..140).contains(&single_word), "{single_word} {random}");
    }

    #[test]
    fn sentences_start_with_bos_and_end_at_the_stop() {
        let docs = vec!["Ann was born in Paris . Ann lives in Rome .".to_string()];
        let tok = super::super::tokenizer::build_tokenizer(&docs, &Default::default()).unwrap();
        let s = sentences(&docs, &tok, 32).unwrap();
        assert_eq!(s.len(), 2);
        let stop = tok.token_to_id(".").unwrap();
        for x in &s {
            assert_eq!((x[0], *x.last().unwrap()), (BOS_ID, stop));
        }
        assert_eq!(sentences(&docs, &tok, 3).unwrap()[0].len(), 3);
    }
}
