//! `evaluate`: metrics of a model's weights on a task.
//!
//! Every task writes `metrics.json` (the aggregate) and `samples.jsonl` (one line per window,
//! fact, item or prompt: what was asked, what the model gave, the score), and reports its
//! metrics and the settings that produced them in the manifest, where reports read them.

use std::io::Write;

use serde_json::{json, Map, Value};

use super::{EvalTask, EvaluateSpec, PplMode, TaskFile};
use crate::data::{read_documents, read_records};
use crate::eval::choice::{evaluate_items, ChoiceTask};
use crate::eval::divergence::{divergence, Pair};
use crate::eval::generation::{evaluate_generation_with, GenerationTask, Generator};
use crate::eval::knowledge::{self, probe, probe_units, ProbeOptions, ProbeStyle, Ranking};
use crate::eval::lama::{load_lama, GoogleRePrompts, LamaOptions};
use crate::eval::loglik::{PairEncoder, Scorer, Seq2SeqPairEncoder, SpecialTokens};
use crate::eval::perplexity::{
    document_perplexity, perplexity, sliding_perplexity, sliding_windows, windows, Perplexity,
};
use crate::model::Objective;
use crate::stages::weights::{materialize, Materialized};
use crate::stages::{StageCtx, StageError, StageOutput};

/// Per-sample outputs, one JSON object per line.
pub const SAMPLES_FILE: &str = "samples.jsonl";

/// What a task produced.
struct Outcome {
    /// Flat name → number, as tables show them.
    metrics: Map<String, Value>,
    /// The settings a reader needs to compare numbers (seqlen, log base, counts…).
    settings: Value,
    samples: Vec<Value>,
    /// One line for the stage log.
    summary: String,
}

pub(super) fn run(ctx: &StageCtx, spec: &EvaluateSpec) -> Result<StageOutput, StageError> {
    let weights = materialize(ctx, ctx.input_node("model")?, ctx.device)?;
    let out = match &spec.task {
        EvalTask::Perplexity {
            dataset,
            seqlen,
            join,
            limit,
            mode,
        } => run_perplexity(ctx, spec, &weights, dataset, *seqlen, join, *limit, *mode)?,
        EvalTask::Knowledge {
            dataset,
            ranking,
            splits,
            relations,
            limit,
            known_only,
            reference: _,
        } => {
            let lama = LamaOptions {
                splits: splits.clone(),
                relations: (!relations.is_empty()).then(|| relations.clone()),
                limit: *limit,
                google_re_prompts: GoogleRePrompts::Template,
            };
            run_knowledge(ctx, spec, &weights, dataset, &lama, *ranking, *known_only)?
        }
        EvalTask::MultipleChoice {
            dataset,
            task_file,
            limit,
        } => run_choice(ctx, spec, &weights, dataset, task_file, *limit)?,
        EvalTask::Divergence {
            dataset,
            seqlen,
            join,
            limit,
            reference: _,
        } => run_divergence(ctx, spec, &weights, dataset, *seqlen, join, *limit)?,
        EvalTask::Generation {
            dataset,
            task_file,
            limit,
            max_new_tokens,
        } => run_generation(ctx, &weights, dataset, task_file, *limit, *max_new_tokens)?,
    };
    ctx.note(&out.summary);
    write_samples(ctx, &out.samples)?;
    ctx.write_json("metrics.json", &Value::Object(out.metrics.clone()))?;
    Ok(StageOutput {
        content: None,
        meta: json!({
            "task": spec.task.name(),
            "dataset": spec.task.dataset(),
            "weights": weights.meta.content(),
            "model_size": {
                "bytes": weights.model_bytes(),
                "dense_bytes": weights.dense_bytes(),
            },
            "metrics": out.metrics,
            "settings": out.settings,
            "samples": out.samples.len(),
        }),
    })
}

fn write_samples(ctx: &StageCtx, samples: &[Value]) -> Result<(), StageError> {
    let path = ctx.out_path(SAMPLES_FILE);
    let io = StageError::io(format!("writing {}", path.display()));
    let file = std::fs::File::create(&path).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    for s in samples {
        serde_json::to_writer(&mut w, s).expect("JSON values serialize");
        w.write_all(b"\n")
            .map_err(StageError::io(format!("writing {}", path.display())))?;
    }
    w.flush()
        .map_err(StageError::io(format!("writing {}", path.display())))
}

#[allow(clippy::too_many_arguments)]
fn run_perplexity(
    ctx: &StageCtx,
    spec: &EvaluateSpec,
    weights: &Materialized,
    dataset: &str,
    seqlen: usize,
    join: &str,
    limit: Option<usize>,
    mode: PplMode,
) -> Result<Outcome, StageError> {
    let source = &ctx.pipeline().datasets[dataset];
    let docs = read_documents(source)?;
    let tokenizer = weights.tokenizer()?;
    let model = weights.model()?;
    let model = model.causal("perplexity")?;
    let tick = &mut |n| ctx.tick(n);
    // Too little text is the dataset's problem: say which file, and what would fit.
    let too_short = |tokens: usize, need: &str| -> StageError {
        crate::data::DataError::Invalid {
            name: dataset.to_string(),
            path: source.path.clone(),
            message: format!(
                "{tokens} tokens after tokenizing, too few for {need}: use more text or a \
                 smaller `seqlen`"
            ),
        }
        .into()
    };
    let r: Perplexity = match mode {
        PplMode::Windows | PplMode::Sliding { .. } => {
            // Tokenized once as a whole, with the tokenizer's special tokens, as the protocol does.
            let tokens = tokenizer.encode(&docs.join(join), true)?;
            if let PplMode::Sliding { stride } = mode {
                let n = sliding_windows(&tokens, seqlen, stride, limit).len();
                if n == 0 {
                    return Err(too_short(tokens.len(), "a window of two tokens"));
                }
                ctx.progress.start(n as u64, "perplexity");
                sliding_perplexity(
                    model,
                    &tokens,
                    seqlen,
                    stride,
                    limit,
                    spec.batch_size,
                    ctx.device,
                    tick,
                )
            } else {
                let n = windows(&tokens, seqlen, limit).len();
                if n == 0 {
                    return Err(too_short(
                        tokens.len(),
                        &format!("one window of seqlen = {seqlen}"),
                    ));
                }
                ctx.progress.start(n as u64, "perplexity");
                perplexity(
                    model,
                    &tokens,
                    seqlen,
                    limit,
                    spec.batch_size,
                    ctx.device,
                    tick,
                )
            }
        }
        PplMode::Documents => {
            let docs = &docs[..limit.map_or(docs.len(), |l| l.min(docs.len()))];
            let tokens = docs
                .iter()
                .map(|d| tokenizer.encode(d, true))
                .collect::<Result<Vec<_>, _>>()?;
            let n: usize = tokens
                .iter()
                .map(|t| t.chunks(seqlen).filter(|c| c.len() >= 2).count())
                .sum();
            if n == 0 {
                let total = tokens.iter().map(Vec::len).sum();
                return Err(too_short(total, "two tokens in any document"));
            }
            ctx.progress.start(n as u64, "perplexity");
            document_perplexity(model, &tokens, seqlen, spec.batch_size, ctx.device, tick)
        }
    }?;
    let samples = r
        .per_window
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let nll = s.nll_sum / s.tokens.max(1) as f64;
            json!({"window": i, "tokens": s.tokens, "nll": nll, "ppl": nll.exp()})
        })
        .collect();
    let metrics = metric_map([
        ("ppl", r.ppl.into()),
        ("nll", r.nll.into()),
        ("tokens", r.tokens.into()),
        ("windows", r.windows.into()),
        ("seqlen", r.seqlen.into()),
    ]);
    let mut settings = json!({
        "mode": mode.as_str(),
        "seqlen": seqlen,
        "stream_tokens": r.stream_tokens,
        "log_base": "e",
    });
    if let PplMode::Sliding { stride } = mode {
        settings["stride"] = stride.into();
    }
    Ok(Outcome {
        summary: format!(
            "ppl {:.4} over {} tokens ({} windows of ≤ {}, {})",
            r.ppl,
            r.tokens,
            r.windows,
            r.seqlen,
            mode.as_str()
        ),
        metrics,
        settings,
        samples,
    })
}

/// P@k for these k, as the knowledge study reports top-1 and top-5 and LAMA P@10.
const KS: [usize; 3] = [1, 5, 10];

fn run_knowledge(
    ctx: &StageCtx,
    spec: &EvaluateSpec,
    weights: &Materialized,
    dataset: &str,
    lama: &LamaOptions,
    ranking: Ranking,
    keep_known: bool,
) -> Result<Outcome, StageError> {
    let source = &ctx.pipeline().datasets[dataset];
    let mut set = load_lama(&source.path, lama)?;
    if weights.config.architecture().objective() == Objective::Masked {
        return run_knowledge_masked(ctx, spec, weights, set, lama, ranking, keep_known);
    }
    let style = GenerativeStyle::of(&weights.config);
    let opts = ProbeOptions {
        style: style.probe_style(),
        ranking,
        ks: KS.to_vec(),
        batch_size: spec.batch_size,
    };
    let tick = &mut |n| ctx.tick(n);
    let units = probe_units(&set, &opts);
    let total_facts = set.num_facts();
    if keep_known {
        // The reference's own answers decide which facts count as known.
        let base = materialize(ctx, ctx.input_node("reference")?, ctx.device)?;
        let base_style = GenerativeStyle::of(&base.config);
        if base_style != style {
            return Err(crate::eval::loglik::EvalError::Invalid(format!(
                "the reference is probed as {base_style:?} and the model as {style:?}: \
                 known-only needs both of one kind (decoder-only, or encoder-decoder)"
            ))
            .into());
        }
        ctx.progress
            .start(2 * units, "knowledge (reference, then model)");
        let (_, results) = probe_any(&base, &set, &opts, ctx.device, tick)?;
        set = knowledge::known_only(&set, &results);
        ctx.progress.start(probe_units(&set, &opts), "knowledge");
    } else {
        ctx.progress.start(units, "knowledge");
    }
    let (m, results) = probe_any(weights, &set, &opts, ctx.device, tick)?;
    let mut metrics = Map::new();
    for (k, p) in &m.p_at {
        metrics.insert(format!("p@{k}"), (*p).into());
    }
    metrics.insert("mrr".into(), m.mrr.into());
    if let Some(p1) = m.micro_p_at.get(&1) {
        metrics.insert("micro_p@1".into(), (*p1).into());
    }
    metrics.insert("facts".into(), m.facts.into());
    metrics.insert("relations".into(), m.relations.into());
    let per_relation = serde_json::to_value(&m.per_relation).expect("serializable");
    ctx.write_json("relations.json", &per_relation)?;
    let settings = json!({
        "ranking": ranking.as_str(),
        "style": style.name(),
        "target": style.target(ranking),
        "splits": lama.splits.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "limit_per_relation": lama.limit,
        "known_only": keep_known,
        "facts_loaded": total_facts,
        "skipped": m.skipped,
    });
    let p1 = m.p_at.get(&1).copied().unwrap_or(f64::NAN);
    Ok(Outcome {
        summary: format!(
            "P@1 {p1:.4} (macro over {} relations), MRR {:.4}, {} facts",
            m.relations, m.mrr, m.facts
        ),
        metrics,
        settings,
        samples: results
            .iter()
            .map(|r| serde_json::to_value(r).expect("samples serialize"))
            .collect(),
    })
}

/// How [`run_knowledge`] probes a model: a decoder continues the text left of the mask, an
/// encoder-decoder fills a sentinel. Masked models are probed by [`run_knowledge_masked`]
/// instead, so this holds the [`ProbeStyle`]s other than `Masked` and no match on it needs a
/// masked arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenerativeStyle {
    Causal,
    Sentinel,
}

impl GenerativeStyle {
    /// The style for a model of this config.
    fn of(config: &crate::model::ModelConfig) -> Self {
        match config.architecture().objective() {
            crate::model::Objective::Seq2Seq => GenerativeStyle::Sentinel,
            _ => GenerativeStyle::Causal,
        }
    }

    fn probe_style(self) -> ProbeStyle {
        match self {
            GenerativeStyle::Causal => ProbeStyle::Causal,
            GenerativeStyle::Sentinel => ProbeStyle::Sentinel,
        }
    }

    /// The name the settings report.
    fn name(self) -> &'static str {
        match self {
            GenerativeStyle::Causal => "causal",
            GenerativeStyle::Sentinel => "sentinel",
        }
    }

    /// What is scored and ranked, as the settings report it.
    fn target(self, ranking: Ranking) -> &'static str {
        match (self, ranking) {
            (GenerativeStyle::Causal, Ranking::Vocabulary) => "first token of \" \" + object; rank among the whole vocabulary",
            (GenerativeStyle::Causal, Ranking::Candidates) => "the object after the prompt, all its tokens (summed log-probability); rank among the relation's distinct objects",
            (GenerativeStyle::Sentinel, Ranking::Vocabulary) => "source: the cloze with <extra_id_0> for the object; first token of the object after [decoder_start, <extra_id_0>]; rank among the whole vocabulary",
            (GenerativeStyle::Sentinel, Ranking::Candidates) => "source: the cloze with <extra_id_0> for the object; the object after [decoder_start, <extra_id_0>], all its tokens (summed log-probability); rank among the relation's distinct objects",
        }
    }
}

/// Probes `set` on the model of `weights` in `opts.style`, refusing a model that style cannot
/// ask.
fn probe_any(
    weights: &Materialized,
    set: &crate::eval::lama::LamaSet,
    opts: &ProbeOptions,
    device: &candle_core::Device,
    tick: crate::cancel::Tick,
) -> Result<(knowledge::KnowledgeMetrics, Vec<knowledge::FactResult>), StageError> {
    let (tok, model) = (weights.tokenizer()?, weights.model()?);
    match (&model, opts.style) {
        (crate::model::LanguageModel::Seq2Seq(m), ProbeStyle::Sentinel) => Ok(
            knowledge::probe_seq2seq(&**m, &tok, set, opts, device, tick)?,
        ),
        _ => {
            let enc = PairEncoder::new(&tok, &weights.config, SpecialTokens::FromTokenizer)?;
            let model = model.causal("knowledge probing")?;
            Ok(probe(model, &enc, set, opts, device, tick)?)
        }
    }
}

/// [`run_knowledge`] for a masked (encoder) model: the mask filled with both sides visible
/// ([`knowledge::probe_masked`]); the reference of `known_only` must be masked too.
fn run_knowledge_masked(
    ctx: &StageCtx,
    spec: &EvaluateSpec,
    weights: &Materialized,
    mut set: crate::eval::lama::LamaSet,
    lama: &LamaOptions,
    ranking: Ranking,
    keep_known: bool,
) -> Result<Outcome, StageError> {
    let opts = ProbeOptions {
        style: ProbeStyle::Masked,
        ranking,
        ks: KS.to_vec(),
        batch_size: spec.batch_size,
    };
    let tick = &mut |n| ctx.tick(n);
    let total_facts = set.num_facts();
    let max_len = weights.config.max_position_embeddings;
    if keep_known {
        let base = materialize(ctx, ctx.input_node("reference")?, ctx.device)?;
        let tok = base.tokenizer()?;
        let model = base.model()?.into_masked("masked knowledge probing")?;
        let units = knowledge::masked_probe_units(&tok, &set, max_len)?;
        ctx.progress
            .start(2 * units, "knowledge (reference, then model)");
        let (_, results) = knowledge::probe_masked(&*model, &tok, &set, &opts, ctx.device, tick)?;
        let (mask, _) = knowledge::mask_token(&tok)?;
        set = knowledge::known_only_masked(&set, &results, mask);
    }
    let tok = weights.tokenizer()?;
    let model = weights.model()?.into_masked("masked knowledge probing")?;
    ctx.progress.start(
        knowledge::masked_probe_units(&tok, &set, max_len)?,
        "knowledge",
    );
    let (m, results) = knowledge::probe_masked(&*model, &tok, &set, &opts, ctx.device, tick)?;
    let (mask, _) = knowledge::mask_token(&tok)?;
    let mut metrics = Map::new();
    for (k, p) in &m.p_at {
        metrics.insert(format!("p@{k}"), (*p).into());
    }
    metrics.insert("mrr".into(), m.mrr.into());
    if let Some(p1) = m.micro_p_at.get(&1) {
        metrics.insert("micro_p@1".into(), (*p1).into());
    }
    metrics.insert("facts".into(), m.facts.into());
    metrics.insert("relations".into(), m.relations.into());
    let per_relation = serde_json::to_value(&m.per_relation).expect("serializable");
    ctx.write_json("relations.json", &per_relation)?;
    let settings = json!({
        "style": "masked",
        "mask_token": mask,
        "ranking": ranking.as_str(),
        "target": match ranking {
            Ranking::Vocabulary => "the object's single token in place of the mask; rank among the whole vocabulary at the mask position",
            Ranking::Candidates => "the object's single token in place of the mask; rank among the relation's distinct single-token objects at the mask position",
        },
        "skip_rule": "facts whose object is not one token in place of the mask, or whose cloze exceeds the model's positions",
        "splits": lama.splits.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "limit_per_relation": lama.limit,
        "known_only": keep_known,
        "facts_loaded": total_facts,
        "skipped": m.skipped,
    });
    let p1 = m.p_at.get(&1).copied().unwrap_or(f64::NAN);
    Ok(Outcome {
        summary: format!(
            "P@1 {p1:.4} (macro over {} relations, masked), MRR {:.4}, {} facts",
            m.relations, m.mrr, m.facts
        ),
        metrics,
        settings,
        samples: results
            .iter()
            .map(|r| serde_json::to_value(r).expect("samples serialize"))
            .collect(),
    })
}

/// How an encoder-decoder's choices are scored, as the settings report it.
const SEQ2SEQ_SCORING: &str = "source: the context with the tokenizer's special tokens (T5: \
    ending in </s>); target: the choice without special tokens, teacher-forced behind the decoder \
    start token; Σ log P over the choice's tokens";

fn run_choice(
    ctx: &StageCtx,
    spec: &EvaluateSpec,
    weights: &Materialized,
    dataset: &str,
    task_file: &TaskFile<ChoiceTask>,
    limit: Option<usize>,
) -> Result<Outcome, StageError> {
    let task = &task_file.task;
    let mut records = read_records(&ctx.pipeline().datasets[dataset])?;
    records.truncate(limit.unwrap_or(records.len()));
    let items = task.prepare(&records)?;
    let pairs: usize = items.iter().map(|i| i.num_choices()).sum();
    ctx.progress.start(pairs as u64, task.name());
    let (tok, model) = (weights.tokenizer()?, weights.model()?);
    let tick = &mut |n| ctx.tick(n);
    let (m, samples, scoring) = match &model {
        crate::model::LanguageModel::Causal(m) => {
            let pairs = PairEncoder::new(&tok, &weights.config, SpecialTokens::FromTokenizer)?;
            let scorer = Scorer::Causal {
                model: &**m,
                pairs: &pairs,
            };
            let (m, s) = evaluate_items(scorer, &items, spec.batch_size, ctx.device, tick)?;
            (m, s, None)
        }
        crate::model::LanguageModel::Seq2Seq(m) => {
            let pairs = Seq2SeqPairEncoder::new(&tok, &weights.config);
            let scorer = Scorer::Seq2Seq {
                model: &**m,
                pairs: &pairs,
            };
            let (m, s) = evaluate_items(scorer, &items, spec.batch_size, ctx.device, tick)?;
            (m, s, Some(SEQ2SEQ_SCORING))
        }
        crate::model::LanguageModel::Masked(_) => {
            return Err(crate::eval::loglik::EvalError::Invalid(format!(
                "multiple choice scores each choice by its log-likelihood after the context, \
                 which this masked (encoder-only) `{}` model does not give (lm-evaluation-harness \
                 does not score masked LMs either); use a causal or encoder-decoder model, or \
                 knowledge probes and divergence for this one",
                weights.config.architecture().name()
            ))
            .into())
        }
    };
    let metrics = metric_map([
        ("acc", m.acc.into()),
        ("acc_norm", m.acc_norm.into()),
        ("acc_stderr", m.acc_stderr.into()),
        ("samples", m.samples.into()),
    ]);
    Ok(Outcome {
        summary: format!(
            "{}: acc {:.4}, acc_norm {:.4} over {} items",
            task.name(),
            m.acc,
            m.acc_norm,
            m.samples
        ),
        metrics,
        settings: {
            let mut settings = json!({
                "task": task.name(),
                "task_file": task_file.path.display().to_string(),
                "acc_norm": "log-likelihood / UTF-8 bytes of the choice",
            });
            if let Some(scoring) = scoring {
                settings["scoring"] = scoring.into();
            }
            settings
        },
        samples: samples
            .iter()
            .map(|r| serde_json::to_value(r).expect("samples serialize"))
            .collect(),
    })
}

fn run_divergence(
    ctx: &StageCtx,
    spec: &EvaluateSpec,
    weights: &Materialized,
    dataset: &str,
    seqlen: usize,
    join: &str,
    limit: Option<usize>,
) -> Result<Outcome, StageError> {
    let reference = materialize(ctx, ctx.input_node("reference")?, ctx.device)?;
    let docs = read_documents(&ctx.pipeline().datasets[dataset])?;
    // The reference's tokenizer cuts the text: both models must share it (checked below).
    let tokenizer = reference.tokenizer()?;
    if reference.meta.tokenizer != weights.meta.tokenizer {
        return Err(StageError::TokenizersDiffer);
    }
    let tokens = tokenizer.encode(&docs.join(join), true)?;
    let n = windows(&tokens, seqlen, limit).len();
    ctx.progress.start(n as u64, "divergence");
    let (model, base) = (weights.model()?, reference.model()?);
    let r = divergence(
        Pair::of(&model, &base)?,
        &tokens,
        seqlen,
        limit,
        spec.batch_size,
        ctx.device,
        &mut |n| ctx.tick(n),
    )?;
    let metrics = metric_map([
        ("js", r.js.into()),
        ("kl", r.kl.into()),
        ("top1", r.top1.into()),
        ("positions", r.positions.into()),
    ]);
    Ok(Outcome {
        summary: format!(
            "JS {:.5} nats, KL {:.5}, top-1 agreement {:.4} over {} positions",
            r.js, r.kl, r.top1, r.positions
        ),
        metrics,
        settings: json!({
            "seqlen": seqlen,
            "windows": r.windows,
            "stream_tokens": r.stream_tokens,
            "log_base": "e",
            "js_max": std::f64::consts::LN_2,
            "kl": "KL(reference ‖ model)",
            "distributions": match model.objective() {
                crate::model::Objective::Seq2Seq => "decoder, teacher-forced: source = the window, decoder input = the window shifted right behind the decoder start token",
                _ => "next token at every position of the window",
            },
            "reference_weights": reference.meta.content(),
        }),
        samples: r
            .per_window
            .iter()
            .enumerate()
            .map(|(i, w)| json!({"window": i, "js": w.js, "kl": w.kl, "top1": w.top1}))
            .collect(),
    })
}

fn run_generation(
    ctx: &StageCtx,
    weights: &Materialized,
    dataset: &str,
    task_file: &TaskFile<GenerationTask>,
    limit: Option<usize>,
    max_new_tokens: Option<usize>,
) -> Result<Outcome, StageError> {
    let task = &task_file.task;
    let mut records = read_records(&ctx.pipeline().datasets[dataset])?;
    records.truncate(limit.unwrap_or(records.len()));
    if weights.is_streamed() {
        ctx.note(&format!(
            "greedy decoding cannot go layer-wise: every block of the model ({:.1} GB) is read \
             again for each generated token, which is slow (give the stage more memory with \
             `--memory` to hold the model whole)",
            weights.dense_bytes() as f64 / 1e9
        ));
    }
    ctx.progress.start(records.len() as u64, &task.name);
    let (tok, model) = (weights.tokenizer()?, weights.model()?);
    let generator = match &model {
        crate::model::LanguageModel::Seq2Seq(m) => Generator::Seq2Seq(&**m),
        _ => Generator::Causal(model.causal("generation")?),
    };
    let (m, samples) =
        evaluate_generation_with(generator, &tok, task, &records, max_new_tokens, &mut |n| {
            ctx.tick(n)
        })?;
    let metrics = metric_map([
        ("em", m.em.into()),
        ("f1", m.f1.into()),
        ("rouge1", m.rouge1.into()),
        ("samples", m.samples.into()),
        ("generated_tokens", m.generated_tokens.into()),
    ]);
    Ok(Outcome {
        summary: format!(
            "{}: EM {:.4}, F1 {:.4}, ROUGE-1 {:.4} over {} prompts",
            task.name, m.em, m.f1, m.rouge1, m.samples
        ),
        metrics,
        settings: json!({
            "task": task.name,
            "task_file": task_file.path.display().to_string(),
            "max_new_tokens": max_new_tokens.unwrap_or(task.max_new_tokens),
            "stop": task.stop,
            "decoding": "greedy",
            "truncated_prompts": m.truncated_prompts,
            "scores": "fractions in [0, 1]; SQuAD normalisation for EM/F1, rouge_score tokens for ROUGE-1",
        }),
        samples: samples
            .iter()
            .map(|r| serde_json::to_value(r).expect("samples serialize"))
            .collect(),
    })
}

/// Metric name → value, in the order given.
fn metric_map<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
