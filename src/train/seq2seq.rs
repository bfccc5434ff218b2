//! Training a small T5 (`T5ForConditionalGeneration`, [`TrainArch::T5`]) by span corruption.
//!
//! **Config.** T5 v1.0: ReLU feed-forward (`wi`, `wo`), head tied to `shared` (and so the
//! decoder output scaled by `d_model^-0.5`), `decoder_start_token_id` = `<pad>` = 0. v1.0 rather
//! than v1.1's gated-GELU with an untied head: it is transformers' default `T5Config`, has a third
//! fewer feed-forward matrices to train on a tiny corpus, and `tie_embeddings: false` still gives
//! an untied head (unscaled, as transformers reads it). `layers` is the depth of each stack.
//!
//! **Tokenizer** ([`build_tokenizer`]): the words of the corpus, as the other architectures', but
//! laid out as T5's: `<pad>` = 0, `</s>` = 1, `<unk>` = 2, the words in byte order, then the
//! sentinels `<extra_id_0>` … `<extra_id_{SENTINELS-1}>`; the post-processor appends `</s>` (no
//! `<s>`). The other architectures keep their tokenizer byte for byte.
//!
//! **Examples.** Documents are cut into sentences after each `.` token (every sentence of the
//! synthetic world names its subject), truncated to `seqlen` tokens. A step draws `batch`
//! sentences uniformly and corrupts each, with probability [`WORD_MASK_RATE`] by masking one
//! uniformly drawn word (a token with a letter or digit; the probe's shape: the object of a fact
//! sentence is one of its few words, so it is masked in about a tenth of the draws of that
//! sentence), otherwise by T5's random spans: round(15%) of the tokens noise (at least one), in
//! round(noise / 3) spans (at least one), span and gap lengths random compositions, as T5's
//! `random_spans_noise_mask`. Span i becomes `<extra_id_i>` in the source; the target is
//! `<extra_id_0> span₀ <extra_id_1> span₁ … <extra_id_m> </s>`. Teacher forcing: the decoder
//! input is the target shifted right behind the decoder start token; cross-entropy over every
//! target token, padding excluded. Sources are right-padded and their padding masked.
//!
//! **Initialisation** as transformers' `T5PreTrainedModel`, with `init_std` as its
//! `initializer_factor` f: `shared` (and an untied head) N(0, f), q N(0, f·(d_model·d_kv)^-½),
//! k, v and the relative bias tables N(0, f·d_model^-½), o N(0, f·(heads·d_kv)^-½), `wi`
//! N(0, f·d_model^-½), `wo` N(0, f·d_ff^-½), norms 1. Init from ChaCha8(seed) stream 0, data from
//! stream 1: a run repeats bit for bit. Optimizer, schedule and clipping are the decoders'.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use super::step::optimise;
use super::tokenizer::split_words;
use super::trainer::{normals, save, Params};
use super::{TrainArch, TrainConfig, TrainError, TrainSummary};
use crate::model::{expected_tensors, LanguageModel, ModelConfig, Seq2SeqLm, TensorMap};

pub const PAD: &str = "<pad>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
pub const PAD_ID: u32 = 0;
pub const EOS_ID: u32 = 1;
pub const UNK_ID: u32 = 2;
/// Sentinels in the vocabulary; a source uses at most this many (the last closes the target).
pub const SENTINELS: usize = 8;
/// The share of examples that mask one whole word rather than T5's random spans.
pub const WORD_MASK_RATE: f64 = 0.5;

/// The `t5` defaults: the decoders' model size, T5's init scale, sentences as examples (short:
/// `seqlen` 32), more of them per step and more steps, as each example teaches only its masked
/// tokens. Measured on the default world (`data/facts/`, 288 facts, best constant answer 0.090),
/// probed by sentinel: P@1 0.444 after 2400 steps of 64 (0.375 after 1200 of 128, 0.083 after
/// 600 of 64; 0.240 after 2400 of 64 at lr 5e-3). On `tests/t5_train.rs`'s 12-person world lr 1e-2 learned less (P@1 0.14 after 600
/// steps) than 3e-3 (0.47 after 400, 0.96 after 800).
pub fn default_config() -> TrainConfig {
    TrainConfig {
        architecture: TrainArch::T5,
        kv_heads: 4,
        seqlen: 32,
        batch: 64,
        steps: 2400,
        lr: 3e-3,
        init_std: 1.0,
        ..TrainConfig::default()
    }
}

/// The `config.json` of a T5 with these settings over `vocab_size` tokens.
pub(crate) fn config_json(cfg: &TrainConfig, vocab_size: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "d_model": cfg.dim,
        "d_kv": cfg.dim / cfg.heads.max(1),
        "d_ff": cfg.hidden,
        "num_layers": cfg.layers,
        "num_decoder_layers": cfg.layers,
        "num_heads": cfg.heads,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "relu",
        "dropout_rate": 0.0,
        "layer_norm_epsilon": 1e-6,
        "initializer_factor": cfg.init_std,
        "is_encoder_decoder": true,
        "tie_word_embeddings": cfg.tie_embeddings,
        "vocab_size": vocab_size,
        "n_positions": cfg.seqlen,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "decoder_start_token_id": PAD_ID,
        "torch_dtype": "float32",
    })
}

/// The T5-specific checks on top of [`TrainConfig`]'s.
pub(crate) fn check(cfg: &TrainConfig) -> Result<(), TrainError> {
    if cfg.kv_heads != cfg.heads {
        return Err(TrainError::Config(format!(
            "train `kv_heads`: T5 has no grouped-query attention; leave it out or set it to \
             `heads` ({}), not {}",
            cfg.heads, cfg.kv_heads
        )));
    }
    Ok(())
}

fn sentinel(i: usize) -> String {
    format!("<extra_id_{i}>")
}

/// A T5-layout word-level tokenizer over the words of `docs` plus `extra` (module docs).
pub fn build_tokenizer<S: AsRef<str>>(
    docs: &[S],
    extra: &BTreeSet<String>,
) -> Result<Tokenizer, TrainError> {
    let mut words = BTreeSet::new();
    for d in docs {
        words.extend(split_words(d.as_ref())?);
    }
    for w in extra {
        words.extend(split_words(w)?);
    }
    let sentinels: Vec<String> = (0..SENTINELS).map(sentinel).collect();
    for special in [PAD, EOS, UNK]
        .into_iter()
        .chain(sentinels.iter().map(|s| s.as_str()))
    {
        words.remove(special);
    }
    let ordered: Vec<&str> = [PAD, EOS, UNK]
        .into_iter()
        .chain(words.iter().map(String::as_str))
        .chain(sentinels.iter().map(String::as_str))
        .collect();
    let mut vocab = serde_json::Map::new();
    for (i, w) in ordered.iter().enumerate() {
        vocab.insert(w.to_string(), serde_json::json!(i));
    }
    let added = |id: usize, content: &str| {
        serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true,
        })
    };
    let first_sentinel = 3 + words.len();
    let added_tokens: Vec<_> = [(0, PAD), (1, EOS), (2, UNK)]
        .into_iter()
        .map(|(i, t)| added(i, t))
        .chain(
            sentinels
                .iter()
                .enumerate()
                .map(|(i, s)| added(first_sentinel + i, s)),
        )
        .collect();
    let eos = |type_id: u32| serde_json::json!({"SpecialToken": {"id": EOS, "type_id": type_id}});
    let seq =
        |id: &str, type_id: u32| serde_json::json!({"Sequence": {"id": id, "type_id": type_id}});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [seq("A", 0), eos(0)],
            "pair": [seq("A", 0), eos(0), seq("B", 1), eos(1)],
            "special_tokens": {EOS: {"id": EOS, "ids": [EOS_ID], "tokens": [EOS]}},
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
    });
    serde_json::to_string_pretty(&json)
        .unwrap_or_default()
        .parse::<Tokenizer>()
        .map_err(|e| TrainError::Tokenizer(format!("cannot build the T5 tokenizer: {e}")))
}

/// For each id of `tokenizer`, whether its token is (part of) a word: has a letter or digit.
pub(crate) fn word_tokens(tokenizer: &tokenizers::Tokenizer) -> Vec<bool> {
    (0..tokenizer.get_vocab_size(true) as u32)
        .map(|id| {
            tokenizer
                .id_to_token(id)
                .is_some_and(|t| t.chars().any(char::is_alphanumeric))
        })
        .collect()
}

/// The sentences of `docs` as token ids (no specials), each cut after its `.` and truncated to
/// `max_len` tokens.
pub(crate) fn sentences(
    docs: &[String],
    tokenizer: &Tokenizer,
    max_len: usize,
) -> Result<Vec<Vec<u32>>, TrainError> {
    let stop = tokenizer.token_to_id(".");
    let mut out = Vec::new();
    for d in docs {
        let enc = tokenizer
            .encode(d.as_str(), false)
            .map_err(|e| TrainError::Tokenizer(format!("cannot encode a document: {e}")))?;
        let mut cur = Vec::new();
        for &id in enc.get_ids() {
            cur.push(id);
            if Some(id) == stop {
                out.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    for s in &mut out {
        s.truncate(max_len);
    }
    Ok(out)
}

/// `total` split into `parts` positive lengths, uniformly among such splits.
fn composition(rng: &mut ChaCha8Rng, total: usize, parts: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (1..total).collect();
    for i in 0..parts - 1 {
        let j = rng.random_range(i..cuts.len());
        cuts.swap(i, j);
    }
    let mut cuts = cuts[..parts - 1].to_vec();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(parts);
    let mut prev = 0;
    for c in cuts.into_iter().chain([total]) {
        out.push(c - prev);
        prev = c;
    }
    out
}

/// The noise spans `(start, len)` of a sentence of `words` (one flag per token: a word, not
/// punctuation), by the module docs' rule.
fn noise_spans(rng: &mut ChaCha8Rng, words: &[bool]) -> Vec<(usize, usize)> {
    let n = words.len();
    let word_positions: Vec<usize> = (0..n).filter(|&i| words[i]).collect();
    let whole_word = rng.random_bool(WORD_MASK_RATE) || n < 2;
    if whole_word {
        let at = match word_positions.len() {
            0 => rng.random_range(0..n),
            w => word_positions[rng.random_range(0..w)],
        };
        return vec![(at, 1)];
    }
    let noise = ((n as f64 * 0.15).round() as usize).clamp(1, n - 1);
    let spans = ((noise as f64 / 3.0).round() as usize)
        .clamp(1, noise)
        .min(n - noise + 1)
        .min(SENTINELS - 1);
    let lens = composition(rng, noise, spans);
    // Gaps: the first and last may be empty, the inner ones not.
    let mut gaps = composition(rng, n - noise + 2, spans + 1);
    gaps[0] -= 1;
    gaps[spans] -= 1;
    let mut out = Vec::with_capacity(spans);
    let mut at = 0;
    for (gap, len) in gaps.iter().zip(&lens) {
        at += gap;
        out.push((at, *len));
        at += len;
    }
    out
}

/// The corrupted source (ending in `</s>`) and the target of `tokens` with `spans` masked.
fn corrupt(tokens: &[u32], spans: &[(usize, usize)], sentinel_ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let (mut src, mut tgt) = (Vec::new(), Vec::new());
    let mut at = 0;
    for (i, &(start, len)) in spans.iter().enumerate() {
        src.extend_from_slice(&tokens[at..start]);
        src.push(sentinel_ids[i]);
        tgt.push(sentinel_ids[i]);
        tgt.extend_from_slice(&tokens[start..start + len]);
        at = start + len;
    }
    src.extend_from_slice(&tokens[at..]);
    src.push(EOS_ID);
    tgt.push(sentinel_ids[spans.len()]);
    tgt.push(EOS_ID);
    (src, tgt)
}

/// Right-pads `rows` with `<pad>` into [rows, longest].
fn pad_rows(rows: &[Vec<u32>], device: &Device) -> Result<Tensor, TrainError> {
    let len = rows.iter().map(Vec::len).max().unwrap_or(1);
    let flat: Vec<u32> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat(PAD_ID)).take(len))
        .collect();
    Ok(Tensor::from_vec(flat, (rows.len(), len), device)?)
}

/// Mean cross-entropy of `model` on (source, target) pairs, teacher-forced.
pub(crate) fn pair_loss(
    model: &dyn Seq2SeqLm,
    pairs: &[(Vec<u32>, Vec<u32>)],
    device: &Device,
) -> Result<(Tensor, usize), TrainError> {
    let sources: Vec<Vec<u32>> = pairs.iter().map(|(s, _)| s.clone()).collect();
    let lengths: Vec<usize> = sources.iter().map(Vec::len).collect();
    let inputs: Vec<Vec<u32>> = pairs
        .iter()
        .map(|(_, t)| {
            std::iter::once(model.decoder_start())
                .chain(t[..t.len() - 1].iter().copied())
                .collect()
        })
        .collect();
    let t_len = pairs.iter().map(|(_, t)| t.len()).max().unwrap_or(1);
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    for (b, (_, t)) in pairs.iter().enumerate() {
        for (j, &label) in t.iter().enumerate() {
            rows.push((b * t_len + j) as u32);
            labels.push(label);
        }
    }
    let enc = model.encode(&pad_rows(&sources, device)?, &lengths)?;
    let logits = model.decode(&enc, &lengths, &pad_rows(&inputs, device)?)?;
    let vocab = logits.dim(2)?;
    let flat = logits.reshape((pairs.len() * t_len, vocab))?;
    let n = rows.len();
    let picked = flat.index_select(&Tensor::from_vec(rows, n, device)?, 0)?;
    let labels = Tensor::from_vec(labels, n, device)?;
    Ok((candle_nn::loss::cross_entropy(&picked, &labels)?, n))
}

/// T5's initialisation (module docs) in [`expected_tensors`] order from ChaCha8(seed) stream 0.
pub(crate) fn init_params(
    model_cfg: &ModelConfig,
    cfg: &TrainConfig,
    dtype: DType,
    device: &Device,
) -> Result<Params, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let f = cfg.init_std;
    let (d, kv, ff) = (
        model_cfg.hidden_size as f64,
        model_cfg.head_dim as f64,
        model_cfg.intermediate_size as f64,
    );
    let heads = model_cfg.num_heads as f64;
    let mut out = Vec::new();
    for (name, shape) in expected_tensors(model_cfg) {
        let n: usize = shape.iter().product();
        let std = if name.ends_with("layer_norm.weight") {
            None
        } else if name.ends_with(".q.weight") {
            Some(f * (d * kv).powf(-0.5))
        } else if name.ends_with(".o.weight") {
            Some(f * (heads * kv).powf(-0.5))
        } else if name.ends_with(".wo.weight") {
            Some(f * ff.powf(-0.5))
        } else if name == "shared.weight" || name == "lm_head.weight" {
            Some(f)
        } else {
            // k, v, relative bias, wi
            Some(f * d.powf(-0.5))
        };
        let values = match std {
            None => vec![1.0; n],
            Some(s) => normals(&mut rng, n).into_iter().map(|z| z * s).collect(),
        };
        let t = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
        out.push((name, Var::from_tensor(&t)?));
    }
    Ok(out)
}

/// The runtime T5 over the variables (sharing their storage).
pub(crate) fn model_of(
    model_cfg: &ModelConfig,
    params: &Params,
) -> Result<Box<dyn Seq2SeqLm>, TrainError> {
    let map: TensorMap = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    match model_cfg
        .architecture()
        .build(model_cfg, &map, Vec::new())?
    {
        LanguageModel::Seq2Seq(m) => Ok(m),
        other => Err(other
            .refuse("span-corruption training", crate::model::Objective::Seq2Seq)
            .into()),
    }
}

/// Trains a T5 on `docs` by span corruption and writes the folder as [`super::train`] does.
pub(crate) fn train(
    docs: &[String],
    tokenizer: &Tokenizer,
    cfg: &TrainConfig,
    device: &Device,
    out_dir: &Path,
    on_step: &mut dyn FnMut(usize, f32) -> Result<(), TrainError>,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    check(cfg)?;
    let sentinel_ids = (0..SENTINELS)
        .map(|i| {
            tokenizer.token_to_id(&sentinel(i)).ok_or_else(|| {
                TrainError::Tokenizer(format!(
                    "the tokenizer has no `{}`: a T5 trains with the T5 tokenizer \
                     (seq2seq::build_tokenizer)",
                    sentinel(i)
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab_size = tokenizer.get_vocab_size(true);
    let is_word = word_tokens(tokenizer);
    let model_cfg = ModelConfig::from_json(&config_json(cfg, vocab_size).to_string())?;
    let corpus = sentences(docs, tokenizer, cfg.seqlen)?;
    if corpus.is_empty() {
        return Err(TrainError::Config(
            "the corpus has no sentences to train a T5 on".into(),
        ));
    }
    let params = init_params(&model_cfg, cfg, DType::F32, device)?;
    let model = model_of(&model_cfg, &params)?;
    let mut data_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    data_rng.set_stream(1);
    let mut tokens_seen = 0;
    let losses = optimise(&params, cfg, on_step, |_| {
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..cfg.batch)
            .map(|_| {
                let s = &corpus[data_rng.random_range(0..corpus.len())];
                let words: Vec<bool> = s.iter().map(|&id| is_word[id as usize]).collect();
                let spans = noise_spans(&mut data_rng, &words);
                corrupt(s, &spans, &sentinel_ids)
            })
            .collect();
        let (loss, n) = pair_loss(&*model, &pairs, device)?;
        tokens_seen += n;
        Ok(loss)
    })?;
    save(out_dir, cfg, vocab_size, tokenizer, &params)?;
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
    fn spans_cover_noise_and_targets_restore_the_sentence() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let tokens: Vec<u32> = (10..30).collect();
        let words = vec![true; tokens.len()];
        let sentinels: Vec<u32> = (100..100 + SENTINELS as u32).collect();
        let mut random_spans = 0;
        for _ in 0..200 {
            let spans = noise_spans(&mut rng, &words);
            let masked: usize = spans.iter().map(|s| s.1).sum();
            assert!(
                spans.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0),
                "{spans:?}"
            );
            assert!(spans.iter().all(|s| s.1 >= 1 && s.0 + s.1 <= tokens.len()));
            if masked == 3 {
                random_spans += 1; // round(0.15 · 20)
            } else {
                assert_eq!((spans.len(), masked), (1, 1));
            }
            let (src, tgt) = corrupt(&tokens, &spans, &sentinels);
            // Filling each sentinel of the source with its span gives the sentence back.
            let mut back = Vec::new();
            for &t in &src[..src.len() - 1] {
                match sentinels.iter().position(|&s| s == t) {
                    Some(i) => {
                        let at = tgt.iter().position(|&x| x == sentinels[i]).unwrap();
                        let end = tgt.iter().position(|&x| x == sentinels[i + 1]).unwrap();
                        back.extend_from_slice(&tgt[at + 1..end]);
                    }
                    None => back.push(t),
                }
            }
            assert_eq!(back, tokens);
            assert_eq!((src.last(), tgt.last()), (Some(&EOS_ID), Some(&EOS_ID)));
        }
        assert!((60..140).contains(&random_spans), "{random_spans}");
    }

    #[test]
    fn whole_word_masking_skips_punctuation() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // Twenty tokens, two of them words: random spans mask three tokens, so a single masked
        // token is whole-word masking, which must land on a word.
        let words: Vec<bool> = (0..20).map(|i| i == 5 || i == 12).collect();
        let mut single = 0;
        for _ in 0..100 {
            let spans = noise_spans(&mut rng, &words);
            if spans.iter().map(|s| s.1).sum::<usize>() == 1 {
                assert!(spans[0].0 == 5 || spans[0].0 == 12, "{spans:?}");
                single += 1;
            }
        }
        assert!(single > 20, "{single}");
    }

    #[test]
    fn tokenizer_has_t5_layout_and_appends_eos() {
        let t = build_tokenizer(&["Mira lives in Paris ."], &BTreeSet::new()).unwrap();
        let id = |w: &str| t.token_to_id(w).unwrap();
        assert_eq!((id(PAD), id(EOS), id(UNK)), (0, 1, 2));
        assert_eq!(id("<extra_id_0>"), 3 + 5);
        assert_eq!(t.get_vocab_size(true), 3 + 5 + SENTINELS);
        let enc = t.encode("Mira lives in <extra_id_0> .", true).unwrap();
        assert_eq!(
            enc.get_ids(),
            &[
                id("Mira"),
                id("lives"),
                id("in"),
                id("<extra_id_0>"),
                id("."),
                1
            ]
        );
    }

    #[test]
    fn grouped_kv_heads_are_refused_by_name() {
        let cfg = TrainConfig {
            kv_heads: 2,
            ..default_config()
        };
        let e = check(&cfg).unwrap_err().to_string();
        assert!(e.contains("`kv_heads`"), "{e}");
        assert!(check(&default_config()).is_ok());
    }
}
