//! `evaluate`: metrics of a model's weights on a task.
//!
//! Every task writes `metrics.json` (the aggregate) and `samples.jsonl` (one line per window,
//! fact, item or prompt: what was asked, what the model gave, the score), and reports its
//! metrics and the settings that produced them in the manifest, where reports read them.

use std::io::Write;

use serde_json::{json, Map, Value};

use super::calibrate::cancelled_or;
use super::weights::{materialize, Materialized};
use super::{StageCtx, StageError, StageOutput};
use crate::data::read_documents;
use crate::eval::perplexity::{
    document_perplexity, perplexity, sliding_perplexity, sliding_windows, windows, Perplexity,
};
use crate::pipeline::spec::{EvalTask, EvaluateSpec, PplMode};

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

pub fn run(ctx: &StageCtx, spec: &EvaluateSpec) -> Result<StageOutput, StageError> {
    let weights = materialize(ctx, ctx.input_node("model")?, ctx.device)?;
    let out = match &spec.task {
        EvalTask::Perplexity {
            dataset,
            seqlen,
            join,
            limit,
            mode,
        } => run_perplexity(ctx, spec, &weights, dataset, *seqlen, join, *limit, *mode)?,
        other => {
            return Err(StageError::Invalid(format!(
                "task `{}` is not available in this build",
                other.name()
            )))
        }
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
            "model_bytes": weights.stored_bytes(),
            "metrics": out.metrics,
            "settings": out.settings,
            "samples": out.samples.len(),
        }),
    })
}

fn write_samples(ctx: &StageCtx, samples: &[Value]) -> Result<(), StageError> {
    let path = ctx.out_path(SAMPLES_FILE);
    let io = StageError::io(format!("writing {SAMPLES_FILE}"));
    let file = std::fs::File::create(&path).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    for s in samples {
        serde_json::to_writer(&mut w, s).expect("JSON values serialize");
        w.write_all(b"\n")
            .map_err(StageError::io(format!("writing {SAMPLES_FILE}")))?;
    }
    w.flush()
        .map_err(StageError::io(format!("writing {SAMPLES_FILE}")))
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
    let docs = read_documents(&ctx.plan.pipeline.datasets[dataset])?;
    let tokenizer = weights.tokenizer()?;
    let model = weights.model()?;
    let tick = &mut |n| ctx.tick(n);
    let r: Perplexity = match mode {
        PplMode::Windows | PplMode::Sliding { .. } => {
            // Tokenized once as a whole, with the tokenizer's special tokens, as the protocol does.
            let tokens = tokenizer.encode(&docs.join(join), true)?;
            if let PplMode::Sliding { stride } = mode {
                let n = sliding_windows(&tokens, seqlen, stride, limit).len();
                ctx.progress.start(n as u64, "perplexity");
                sliding_perplexity(
                    &model,
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
                ctx.progress.start(n as u64, "perplexity");
                perplexity(
                    &model,
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
            ctx.progress.start(n as u64, "perplexity");
            document_perplexity(&model, &tokens, seqlen, spec.batch_size, ctx.device, tick)
        }
    }
    .map_err(|e| cancelled_or(ctx, e))?;
    let samples = r
        .per_window
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let nll = s.nll_sum / s.tokens.max(1) as f64;
            json!({"window": i, "tokens": s.tokens, "nll": nll, "ppl": nll.exp()})
        })
        .collect();
    let mut metrics = Map::new();
    metrics.insert("ppl".into(), r.ppl.into());
    metrics.insert("nll".into(), r.nll.into());
    metrics.insert("tokens".into(), r.tokens.into());
    metrics.insert("windows".into(), r.windows.into());
    metrics.insert("seqlen".into(), r.seqlen.into());
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
