//! `evaluate`: metrics of a model's weights on a task.

use serde_json::json;

use super::calibrate::cancelled_or;
use super::weights::materialize;
use super::{StageCtx, StageError, StageOutput};
use crate::data::read_documents;
use crate::eval::perplexity::{perplexity, windows};
use crate::pipeline::spec::{EvalTask, EvaluateSpec};

pub fn run(ctx: &StageCtx, spec: &EvaluateSpec) -> Result<StageOutput, StageError> {
    let weights = materialize(ctx, ctx.input_node("model")?, ctx.device)?;
    match &spec.task {
        EvalTask::Perplexity {
            dataset,
            seqlen,
            join,
            limit,
        } => {
            let docs = read_documents(&ctx.plan.pipeline.datasets[dataset])?;
            // Tokenized once as a whole, with the tokenizer's special tokens, as the protocol does.
            let tokens = weights.tokenizer()?.encode(&docs.join(join), true)?;
            let model = weights.model()?;
            let n = windows(&tokens, *seqlen, *limit).len();
            ctx.progress.start(n as u64, "perplexity");
            let r = perplexity(
                &model,
                &tokens,
                *seqlen,
                *limit,
                spec.batch_size,
                ctx.device,
                &mut |n| ctx.tick(n),
            )
            .map_err(|e| cancelled_or(ctx, e))?;
            ctx.note(&format!(
                "ppl {:.4} over {} tokens ({} windows of {})",
                r.ppl, r.tokens, r.windows, r.seqlen
            ));
            ctx.write_json(
                "metrics.json",
                &serde_json::to_value(&r).expect("serializable"),
            )?;
            Ok(StageOutput {
                content: None,
                meta: json!({
                    "task": "perplexity",
                    "dataset": dataset,
                    "weights": weights.meta.content(),
                    "model_bytes": weights.stored_bytes(),
                    "metrics": {
                        "ppl": r.ppl,
                        "nll": r.nll,
                        "tokens": r.tokens,
                        "windows": r.windows,
                        "seqlen": r.seqlen,
                    },
                    "log_base": "e",
                }),
            })
        }
    }
}
