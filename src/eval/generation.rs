//! Free generation scored against references: greedy decoding, then Exact Match, token F1 and
//! ROUGE-1 ([`text_metrics`](super::text_metrics)).
//!
//! For each record the task ([`GenerationTask`]) picks a prompt form and renders it; the prompt
//! is encoded, cut from the left if it does not fit, and extended greedily with the KV cache until
//! an end-of-sequence token, `max_new_tokens` tokens, or a stop string. The prediction is the
//! decoded continuation (special tokens left out) cut before the first stop string.
//!
//! - **EOS**: the ids of `config.json`'s `eos_token_id` (all of them when it is a list).
//!   `tokenizer_config.json`'s `eos_token` is not read: it is outside the tokenizer's content
//!   digest, so a result cached under that digest could not account for it (for the shipped
//!   models both name the same token).
//! - **Context**: the prompt keeps at most `max_position_embeddings − max_new_tokens` tokens, the
//!   last ones; the sample records how many were dropped.
//! - **One prompt at a time**: prompts have different lengths and the model takes no padding
//!   mask, so a batch would need left padding that changes attention; decoding one sequence with
//!   its cache gives exactly the tokens of the uncached computation.
//!
//! - **Encoder-decoders** (T5, [`Generator::Seq2Seq`]): the rendered prompt is the encoder's
//!   source (its last `max_position_embeddings` tokens, T5's `n_positions`, with the tokenizer's
//!   special tokens as the task asks), and the answer is the decoder's greedy output from its
//!   start token ([`crate::model::greedy_seq2seq_until`]); the same EOS ids and stop strings.
//!
//! Metrics are means over samples, as fractions in [0, 1].

mod task;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use task::{GenerationTask, PromptForm};

use super::template::{scalar_text, TemplateError};
use super::text_metrics::{exact_match, rouge1_f, token_f1};
use crate::model::{
    greedy_seq2seq_until, greedy_until, CausalLm, Finish, ModelConfig, ModelError, Seq2SeqLm,
    Tokenizer,
};

/// The model that generates: a causal LM continues the prompt, an encoder-decoder answers it.
#[derive(Clone, Copy)]
pub enum Generator<'a> {
    Causal(&'a dyn CausalLm),
    Seq2Seq(&'a dyn Seq2SeqLm),
}

impl Generator<'_> {
    fn config(&self) -> &ModelConfig {
        match self {
            Generator::Causal(m) => m.config(),
            Generator::Seq2Seq(m) => m.config(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("task `{task}`: record {index} (0-based): {source}")]
    Template {
        task: String,
        index: usize,
        #[source]
        source: TemplateError,
    },
    #[error(
        "task `{task}`: record {index} (0-based): no prompt form applies (every form has a \
         `when` field that is blank or absent here); add a form without `when` as a fallback"
    )]
    NoPrompt { task: String, index: usize },
    #[error("task `{task}`: record {index} (0-based): references field `{path}` {problem}")]
    References {
        task: String,
        index: usize,
        path: String,
        problem: String,
    },
    #[error("task `{task}`: record {index} (0-based): the prompt encodes to no tokens")]
    EmptyPrompt { task: String, index: usize },
    #[error(
        "task `{task}`: max_new_tokens = {max_new_tokens} leaves no room for a prompt in the \
         model's context of {context} tokens; lower max_new_tokens"
    )]
    NoRoom {
        task: String,
        max_new_tokens: usize,
        context: usize,
    },
    #[error("task `{task}`: no records to evaluate")]
    NoRecords { task: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One record's generation and scores: one JSON line per sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenSample {
    /// The record's position in the input (0-based).
    pub index: usize,
    /// The record's `id` field, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The rendered prompt, whole (see `truncated_tokens`).
    pub input: String,
    pub prediction: String,
    pub references: Vec<String>,
    pub em: f64,
    pub f1: f64,
    pub rouge1: f64,
    /// Prompt tokens the model read.
    pub prompt_tokens: usize,
    /// Prompt tokens dropped from the left to fit the context (0 when it fitted).
    pub truncated_tokens: usize,
    /// Tokens generated, those of a stop string included, an EOS token not.
    pub generated_tokens: usize,
    pub finish: Finish,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationMetrics {
    /// Mean Exact Match over samples, in [0, 1].
    pub em: f64,
    /// Mean token F1 over samples, in [0, 1].
    pub f1: f64,
    /// Mean ROUGE-1 F-measure over samples, in [0, 1].
    pub rouge1: f64,
    pub samples: usize,
    /// Tokens generated over all samples.
    pub generated_tokens: usize,
    /// Samples whose prompt was cut to fit the context.
    pub truncated_prompts: usize,
}

/// Generates for every record and scores the predictions. `max_new_tokens_override` replaces the
/// task's limit; `tick` is called with 1 after each sample (its error aborts the run).
pub fn evaluate_generation(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    task: &GenerationTask,
    records: &[Value],
    max_new_tokens_override: Option<usize>,
    tick: crate::cancel::Tick,
) -> Result<(GenerationMetrics, Vec<GenSample>), GenerationError> {
    evaluate_generation_with(
        Generator::Causal(model),
        tokenizer,
        task,
        records,
        max_new_tokens_override,
        tick,
    )
}

/// [`evaluate_generation`] with a model of either kind.
pub fn evaluate_generation_with(
    model: Generator<'_>,
    tokenizer: &Tokenizer,
    task: &GenerationTask,
    records: &[Value],
    max_new_tokens_override: Option<usize>,
    tick: crate::cancel::Tick,
) -> Result<(GenerationMetrics, Vec<GenSample>), GenerationError> {
    if records.is_empty() {
        return Err(GenerationError::NoRecords {
            task: task.name.clone(),
        });
    }
    let max_new_tokens = max_new_tokens_override.unwrap_or(task.max_new_tokens);
    let context = model.config().max_position_embeddings;
    // An encoder-decoder's answer does not share the source's positions.
    let room = match model {
        Generator::Causal(_) => context.saturating_sub(max_new_tokens),
        Generator::Seq2Seq(_) => context,
    };
    if room == 0 {
        return Err(GenerationError::NoRoom {
            task: task.name.clone(),
            max_new_tokens,
            context,
        });
    }
    let limits = Limits {
        max_new_tokens,
        room,
        eos: model.config().eos_token_ids.clone(),
    };
    let mut samples = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        samples.push(generate_one(
            model, tokenizer, task, &limits, index, record,
        )?);
        tick(1).map_err(ModelError::from)?;
    }
    let n = samples.len() as f64;
    let mean = |f: fn(&GenSample) -> f64| samples.iter().map(f).sum::<f64>() / n;
    let metrics = GenerationMetrics {
        em: mean(|s| s.em),
        f1: mean(|s| s.f1),
        rouge1: mean(|s| s.rouge1),
        samples: samples.len(),
        generated_tokens: samples.iter().map(|s| s.generated_tokens).sum(),
        truncated_prompts: samples.iter().filter(|s| s.truncated_tokens > 0).count(),
    };
    Ok((metrics, samples))
}

/// What ends a generation, resolved once per run.
struct Limits {
    max_new_tokens: usize,
    /// Prompt tokens that fit beside `max_new_tokens` in the context.
    room: usize,
    eos: Vec<u32>,
}

fn generate_one(
    model: Generator<'_>,
    tokenizer: &Tokenizer,
    task: &GenerationTask,
    limits: &Limits,
    index: usize,
    record: &Value,
) -> Result<GenSample, GenerationError> {
    let name = || task.name.clone();
    let form = task
        .prompt_for(record)
        .ok_or_else(|| GenerationError::NoPrompt {
            task: name(),
            index,
        })?;
    let input = form
        .template
        .render(record)
        .map_err(|source| GenerationError::Template {
            task: name(),
            index,
            source,
        })?;
    let references = task
        .references_of(record)
        .map_err(|problem| GenerationError::References {
            task: name(),
            index,
            path: task.references.clone(),
            problem,
        })?;
    let ids = tokenizer.encode(&input, task.add_special_tokens)?;
    if ids.is_empty() {
        return Err(GenerationError::EmptyPrompt {
            task: name(),
            index,
        });
    }
    let truncated_tokens = ids.len().saturating_sub(limits.room);
    let prompt = &ids[truncated_tokens..];

    let mut stop = |new: &[u32]| -> crate::model::Result<bool> {
        if task.stop.is_empty() {
            return Ok(false);
        }
        let text = tokenizer.decode_skip_special(new)?;
        Ok(first_stop(&text, &task.stop).is_some())
    };
    let decoded = match model {
        Generator::Causal(m) => {
            greedy_until(m, prompt, limits.max_new_tokens, &limits.eos, &mut stop)?
        }
        Generator::Seq2Seq(m) => {
            greedy_seq2seq_until(m, prompt, limits.max_new_tokens, &limits.eos, &mut stop)?
        }
    };
    let text = tokenizer.decode_skip_special(&decoded.tokens)?;
    let prediction = match first_stop(&text, &task.stop) {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    let id = match record.get("id") {
        Some(Value::String(_) | Value::Number(_)) => scalar_text(record, "id").ok(),
        _ => None,
    };
    Ok(GenSample {
        index,
        id,
        em: exact_match(&prediction, &references),
        f1: token_f1(&prediction, &references),
        rouge1: rouge1_f(&prediction, &references),
        input,
        prediction,
        references,
        prompt_tokens: prompt.len(),
        truncated_tokens,
        generated_tokens: decoded.tokens.len(),
        finish: decoded.finish,
    })
}

/// The byte offset of the earliest occurrence of any stop string in `text`.
pub fn first_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_stop_string_wins() {
        let stop = vec!["\n".to_string(), "###".to_string()];
        assert_eq!(first_stop("ab###c\nd", &stop), Some(2));
        assert_eq!(first_stop("ab\n###", &stop), Some(2));
        assert_eq!(first_stop("abc", &stop), None);
        assert_eq!(first_stop("abc", &[]), None);
        // Earliest position, not first in the list.
        assert_eq!(first_stop("x\ny###", &stop[1..]), Some(3));
    }
}
