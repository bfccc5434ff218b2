//! Multiple-choice tasks scored as lm-evaluation-harness scores `multiple_choice` tasks, each
//! described by a YAML task file.
//!
//! Every choice becomes a (context, continuation) pair scored by its summed log-likelihood
//! ([`crate::eval::loglik`]): a decoder reads the pair as one sequence; an encoder-decoder (T5)
//! reads the context as its source and scores the continuation as the decoder's output, with
//! the harness's seq2seq rules ([`crate::eval::loglik::seq2seq`]: `</s>` closes the source and
//! is not scored after the choice). The metrics below do not depend on which. A masked
//! (encoder-only) model gives no log-likelihood of a continuation and is refused, as the harness
//! has no `loglikelihood` for masked LMs. `acc`: the choice with the highest log-likelihood is the prediction.
//! `acc_norm`: the highest log-likelihood divided by the UTF-8 byte length of the choice's text
//! (the harness divides by `len(choice)`, which counts characters and, like here, leaves the
//! `target_delimiter` out; the two agree on ASCII text). Ties go to the first maximum and a NaN
//! wins, as `numpy.argmax` decides.
//!
//! # Task files
//!
//! ```yaml
//! # Mirrors the harness's `piqa`. Needs `goal`, `sol1`, `sol2`, `label` (0 or 1).
//! name: piqa                              # optional; defaults to the file's stem
//! context: "Question: {{goal}}\nAnswer:"
//! choices: ["{{sol1}}", "{{sol2}}"]
//! gold: {field: label}
//! ```
//!
//! Templates are [`Template`]s: `{{field}}` with dotted paths (`{{question.stem}}`), every other
//! character copied verbatim. The keys:
//!
//! - `context` — the text every choice continues, with one of
//!   - `choices` — a list of templates, one per choice, or
//!   - `choices_from: {list: PATH, text: PATH}` — one choice per item of the list at `list`, its
//!     text the field `text` of the item (ARC: `{list: question.choices, text: text}`);
//! - or `contexts` + `continuation` — one context template per choice and one shared
//!   continuation, the harness's `multiple_inputs` (WinoGrande's partial scoring). `acc_norm`
//!   then equals `acc`: every choice is normalised by the same continuation, so it is reported
//!   as the same number rather than left out.
//! - `target_delimiter` (default `" "`, as in the harness) — put before every continuation; so
//!   choices are written without their leading space, as the harness's `doc_to_choice` lists them.
//! - `split: {field: PATH, on: TEXT}` — cuts the field at the first `on` and adds
//!   `{{split.before}}` (the text before it, verbatim) and `{{split.after}}` (the text after it,
//!   whitespace trimmed at both ends as the harness's WinoGrande `partial_target` strips it).
//! - `gold` — the correct choice:
//!   - `{field: PATH}` — the field is the 0-based index (a number, or a string of digits);
//!   - `{field: PATH, values: [V0, V1, ...]}` — the index of the value the field equals
//!     (compared as text: `true` matches `true`, `"1"` and `1` both match `1`);
//!   - `{field: PATH, match: PATH}` — with `choices_from`: the index of the list item whose field
//!     `match` equals the field (ARC: `{field: answerKey, match: label}`).
//!
//! Unknown keys are errors, and every error names the file and the key.

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::eval::loglik::{EvalError, Scorer};
use crate::eval::task_file::{self, Checks, TaskFileError};
use crate::eval::template::{lookup, scalar_text, Template, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// The task file itself is wrong: it cannot be read, or a key does not hold what it should.
    #[error(transparent)]
    File(Box<TaskFileError>),

    /// A template of the task cannot be rendered on a record.
    #[error("key `{key}`: {source}")]
    Render {
        key: String,
        #[source]
        source: TemplateError,
    },

    /// A record's field does not hold what the task's `key` expects of it.
    #[error("key `{key}`: field `{field}` {message}")]
    Field {
        key: String,
        field: String,
        message: String,
    },
}

// Boxed: a task-file error carries paths and messages that would bloat every `ChoiceError`.
impl From<TaskFileError> for ChoiceError {
    fn from(e: TaskFileError) -> Self {
        ChoiceError::File(Box::new(e))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Option<String>,
    context: Option<String>,
    contexts: Option<Vec<String>>,
    choices: Option<Vec<String>>,
    choices_from: Option<RawChoicesFrom>,
    continuation: Option<String>,
    #[serde(default = "default_delimiter")]
    target_delimiter: String,
    split: Option<SplitSpec>,
    gold: RawGold,
}

fn default_delimiter() -> String {
    " ".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChoicesFrom {
    list: String,
    text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitSpec {
    field: String,
    on: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGold {
    field: String,
    values: Option<Vec<serde_yaml::Value>>,
    #[serde(rename = "match")]
    match_: Option<String>,
}

/// A multiple-choice task: how records become contexts, continuations and a gold index.
#[derive(Debug, Clone)]
pub struct ChoiceTask {
    name: String,
    layout: Layout,
    delimiter: String,
    split: Option<SplitSpec>,
    gold: Gold,
}

#[derive(Debug, Clone)]
enum Layout {
    /// One context, one continuation per choice.
    Continuations { context: Template, choices: Choices },
    /// One context per choice, one shared continuation.
    Contexts {
        contexts: Vec<Template>,
        continuation: Template,
    },
}

#[derive(Debug, Clone)]
enum Choices {
    Listed(Vec<Template>),
    From { list: String, text: String },
}

#[derive(Debug, Clone)]
enum Gold {
    Index { field: String },
    Values { field: String, values: Vec<String> },
    Match { field: String, key: String },
}

/// One record turned into the texts to score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChoiceItem {
    /// One context, or one per choice when the continuation is shared.
    pub contexts: Vec<String>,
    /// One continuation per choice (the delimiter included), or one shared by all.
    pub continuations: Vec<String>,
    /// Per choice, the UTF-8 length that `acc_norm` divides by (the choice text, no delimiter).
    pub norm_bytes: Vec<usize>,
    pub gold: usize,
}

impl ChoiceItem {
    pub fn num_choices(&self) -> usize {
        self.norm_bytes.len()
    }

    /// The continuation is shared and the contexts differ (WinoGrande).
    pub fn shared_continuation(&self) -> bool {
        self.contexts.len() > 1
    }

    /// The (context, continuation) text of choice `i`.
    pub fn pair(&self, i: usize) -> (&str, &str) {
        let pick = |v: &'_ [String]| -> usize {
            if v.len() == 1 {
                0
            } else {
                i
            }
        };
        (
            &self.contexts[pick(&self.contexts)],
            &self.continuations[pick(&self.continuations)],
        )
    }
}

impl ChoiceTask {
    pub fn from_file(path: impl AsRef<Path>) -> Result<ChoiceTask, ChoiceError> {
        let (text, origin) = task_file::read(path.as_ref())?;
        ChoiceTask::from_yaml_str(&text, &origin)
    }

    /// Parses a task file's text; `origin` (a path or a label) names it in errors and gives
    /// the task its default name.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<ChoiceTask, ChoiceError> {
        let raw: RawTask = task_file::parse(text, origin)?;
        let checks = Checks { origin };
        let invalid = |key: &str, message: String| ChoiceError::from(checks.invalid(key, message));
        let template =
            |key: String, source: &str| checks.template(key, source).map_err(ChoiceError::from);
        let templates = |key: &str, list: &[String]| -> Result<Vec<Template>, ChoiceError> {
            if list.is_empty() {
                return Err(invalid(key, "the list is empty".into()));
            }
            list.iter()
                .enumerate()
                .map(|(i, s)| template(format!("{key}[{i}]"), s))
                .collect()
        };
        let layout =
            match (&raw.context, &raw.contexts) {
                (Some(_), Some(_)) => return Err(invalid(
                    "contexts",
                    "give either `context` (one for all choices) or `contexts` (one per choice), \
                     not both"
                        .into(),
                )),
                (None, None) => return Err(invalid(
                    "context",
                    "missing: give `context` with `choices`/`choices_from`, or `contexts` with \
                     `continuation`"
                        .into(),
                )),
                (Some(context), None) => {
                    if raw.continuation.is_some() {
                        return Err(invalid(
                        "continuation",
                        "a shared continuation goes with `contexts`; with `context`, each choice \
                         is its continuation"
                            .into(),
                    ));
                    }
                    let choices = match (&raw.choices, &raw.choices_from) {
                        (Some(_), Some(_)) => {
                            return Err(invalid(
                                "choices_from",
                                "give either `choices` or `choices_from`, not both".into(),
                            ))
                        }
                        (None, None) => {
                            return Err(invalid(
                                "choices",
                                "missing: list the choices, or read them with `choices_from`"
                                    .into(),
                            ))
                        }
                        (Some(list), None) => Choices::Listed(templates("choices", list)?),
                        (None, Some(from)) => Choices::From {
                            list: from.list.clone(),
                            text: from.text.clone(),
                        },
                    };
                    Layout::Continuations {
                        context: template("context".into(), context)?,
                        choices,
                    }
                }
                (None, Some(contexts)) => {
                    if raw.choices.is_some() || raw.choices_from.is_some() {
                        return Err(invalid(
                            "choices",
                            "with `contexts` the choices are the contexts; give a shared \
                         `continuation` instead"
                                .into(),
                        ));
                    }
                    let Some(continuation) = &raw.continuation else {
                        return Err(invalid(
                            "continuation",
                            "missing: `contexts` needs the shared continuation they are scored on"
                                .into(),
                        ));
                    };
                    Layout::Contexts {
                        contexts: templates("contexts", contexts)?,
                        continuation: template("continuation".into(), continuation)?,
                    }
                }
            };
        let g = &raw.gold;
        let gold = match (&g.values, &g.match_) {
            (Some(_), Some(_)) => {
                return Err(invalid("gold", "give `values` or `match`, not both".into()))
            }
            (Some(values), None) => Gold::Values {
                field: g.field.clone(),
                values: values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        yaml_scalar_text(v).ok_or_else(|| {
                            invalid(
                                &format!("gold.values[{i}]"),
                                "must be a string, number or boolean".into(),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            (None, Some(key)) => {
                if !matches!(
                    layout,
                    Layout::Continuations {
                        choices: Choices::From { .. },
                        ..
                    }
                ) {
                    return Err(invalid(
                        "gold.match",
                        "matches a field of the items of `choices_from`, which this task does \
                         not use"
                            .into(),
                    ));
                }
                Gold::Match {
                    field: g.field.clone(),
                    key: key.clone(),
                }
            }
            (None, None) => Gold::Index {
                field: g.field.clone(),
            },
        };
        if let Some(s) = &raw.split {
            if s.on.is_empty() {
                return Err(invalid("split.on", "must not be empty".into()));
            }
        }
        let name = raw.name.clone().unwrap_or_else(|| {
            Path::new(origin)
                .file_stem()
                .map_or(origin.to_string(), |s| s.to_string_lossy().into_owned())
        });
        Ok(ChoiceTask {
            name,
            layout,
            delimiter: raw.target_delimiter,
            split: raw.split,
            gold,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The texts to score for one record.
    pub fn requests(&self, record: &Value) -> Result<ChoiceItem, ChoiceError> {
        let with_split;
        let record = match &self.split {
            Some(s) => {
                with_split = add_split(record, s)?;
                &with_split
            }
            None => record,
        };
        let render = |key: String, t: &Template| {
            t.render(record)
                .map_err(|source| ChoiceError::Render { key, source })
        };
        let item = match &self.layout {
            Layout::Continuations { context, choices } => {
                let texts: Vec<String> = match choices {
                    Choices::Listed(list) => list
                        .iter()
                        .enumerate()
                        .map(|(i, t)| render(format!("choices[{i}]"), t))
                        .collect::<Result<_, _>>()?,
                    Choices::From { list, text } => choice_items(record, list)?
                        .iter()
                        .map(|item| {
                            scalar_text(item, text).map_err(|source| ChoiceError::Render {
                                key: "choices_from.text".into(),
                                source,
                            })
                        })
                        .collect::<Result<_, _>>()?,
                };
                ChoiceItem {
                    contexts: vec![render("context".into(), context)?],
                    continuations: texts
                        .iter()
                        .map(|t| format!("{}{t}", self.delimiter))
                        .collect(),
                    norm_bytes: texts.iter().map(|t| t.len()).collect(),
                    gold: 0,
                }
            }
            Layout::Contexts {
                contexts,
                continuation,
            } => {
                let cont = render("continuation".into(), continuation)?;
                ChoiceItem {
                    contexts: contexts
                        .iter()
                        .enumerate()
                        .map(|(i, t)| render(format!("contexts[{i}]"), t))
                        .collect::<Result<_, _>>()?,
                    continuations: vec![format!("{}{cont}", self.delimiter)],
                    norm_bytes: vec![cont.len(); contexts.len()],
                    gold: 0,
                }
            }
        };
        let gold = self.gold_index(record)?;
        if gold >= item.num_choices() {
            return Err(ChoiceError::Field {
                key: "gold".into(),
                field: self.gold_field().to_string(),
                message: format!(
                    "gives choice {gold}, but the record has {} choices (0-based)",
                    item.num_choices()
                ),
            });
        }
        Ok(ChoiceItem { gold, ..item })
    }

    /// Every record's [`ChoiceItem`]; errors name the record.
    pub fn prepare(&self, records: &[Value]) -> Result<Vec<ChoiceItem>, EvalError> {
        records
            .iter()
            .enumerate()
            .map(|(index, r)| {
                self.requests(r).map_err(|source| EvalError::Record {
                    task: self.name.clone(),
                    index,
                    source,
                })
            })
            .collect()
    }

    fn gold_field(&self) -> &str {
        match &self.gold {
            Gold::Index { field } | Gold::Values { field, .. } | Gold::Match { field, .. } => field,
        }
    }

    fn gold_index(&self, record: &Value) -> Result<usize, ChoiceError> {
        let field = self.gold_field();
        let text = scalar_text(record, field).map_err(|source| ChoiceError::Render {
            key: "gold.field".into(),
            source,
        })?;
        let not_found = |what: String| ChoiceError::Field {
            key: "gold".into(),
            field: field.to_string(),
            message: what,
        };
        match &self.gold {
            Gold::Index { .. } => text.trim().parse::<usize>().map_err(|_| {
                not_found(format!(
                    "is {text:?}, not a choice index (add `values` to map it to one)"
                ))
            }),
            Gold::Values { values, .. } => values
                .iter()
                .position(|v| *v == text)
                .ok_or_else(|| not_found(format!("is {text:?}, none of `values` {values:?}"))),
            Gold::Match { key, .. } => {
                let Layout::Continuations {
                    choices: Choices::From { list, .. },
                    ..
                } = &self.layout
                else {
                    unreachable!("checked when the task file was read")
                };
                let items = choice_items(record, list)?;
                for (i, item) in items.iter().enumerate() {
                    let label = scalar_text(item, key).map_err(|source| ChoiceError::Render {
                        key: "gold.match".into(),
                        source,
                    })?;
                    if label == text {
                        return Ok(i);
                    }
                }
                Err(not_found(format!(
                    "is {text:?}, which no item of `{list}` has as its `{key}`"
                )))
            }
        }
    }
}

fn choice_items<'r>(record: &'r Value, list: &str) -> Result<&'r Vec<Value>, ChoiceError> {
    match lookup(record, list) {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items),
        Some(Value::Array(_)) => Err(ChoiceError::Field {
            key: "choices_from.list".into(),
            field: list.to_string(),
            message: "is an empty list".into(),
        }),
        Some(_) => Err(ChoiceError::Field {
            key: "choices_from.list".into(),
            field: list.to_string(),
            message: "is not a list".into(),
        }),
        None => Err(ChoiceError::Render {
            key: "choices_from.list".into(),
            source: TemplateError::Missing {
                path: list.to_string(),
            },
        }),
    }
}

/// The record with `split.before` / `split.after` added.
fn add_split(record: &Value, s: &SplitSpec) -> Result<Value, ChoiceError> {
    let text = scalar_text(record, &s.field).map_err(|source| ChoiceError::Render {
        key: "split.field".into(),
        source,
    })?;
    let Some(at) = text.find(&s.on) else {
        return Err(ChoiceError::Field {
            key: "split.on".into(),
            field: s.field.clone(),
            message: format!("does not contain {:?}", s.on),
        });
    };
    let Value::Object(map) = record else {
        return Err(ChoiceError::Field {
            key: "split".into(),
            field: s.field.clone(),
            message: "belongs to a record that is not a JSON object".into(),
        });
    };
    if map.contains_key("split") {
        return Err(ChoiceError::Field {
            key: "split".into(),
            field: "split".into(),
            message: "already exists in the record, and `split` would hide it".into(),
        });
    }
    let mut map = map.clone();
    map.insert(
        "split".into(),
        serde_json::json!({
            "before": &text[..at],
            "after": text[at + s.on.len()..].trim(),
        }),
    );
    Ok(Value::Object(map))
}

fn yaml_scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The index of the largest value, the first on ties; a NaN wins (`numpy.argmax`).
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            return i;
        }
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// (`acc` prediction, `acc_norm` prediction) from each choice's log-likelihood. With a shared
/// continuation the normalised scores keep the raw order, so both predictions are the same.
pub fn predict(loglik: &[f64], norm_bytes: &[usize], shared_continuation: bool) -> (usize, usize) {
    let pred = argmax(loglik);
    if shared_continuation {
        return (pred, pred);
    }
    // An empty choice text would divide by zero; it counts as one byte.
    let normed: Vec<f64> = loglik
        .iter()
        .zip(norm_bytes)
        .map(|(&ll, &n)| ll / n.max(1) as f64)
        .collect();
    (pred, argmax(&normed))
}

/// One scored record, as a per-sample JSONL line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceSample {
    /// Position of the record in the evaluated list.
    pub index: usize,
    pub contexts: Vec<String>,
    pub continuations: Vec<String>,
    /// Σ log P(continuation | context), per choice.
    pub loglik: Vec<f64>,
    /// Per choice: every continuation token was the model's top next token.
    pub greedy: Vec<bool>,
    pub norm_bytes: Vec<usize>,
    pub pred: usize,
    pub pred_norm: usize,
    pub gold: usize,
    pub correct: bool,
    pub correct_norm: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceMetrics {
    pub acc: f64,
    pub acc_norm: f64,
    /// Standard error of the mean, as the harness reports it: sample std (n − 1) / √n.
    pub acc_stderr: f64,
    pub acc_norm_stderr: f64,
    pub samples: usize,
}

/// `acc`, `acc_norm` and their standard errors over scored records.
pub fn choice_metrics(samples: &[ChoiceSample]) -> ChoiceMetrics {
    let n = samples.len();
    let mean_stderr = |hits: usize| -> (f64, f64) {
        let p = hits as f64 / n as f64;
        let se = if n > 1 {
            (p * (1.0 - p) / (n - 1) as f64).sqrt()
        } else {
            f64::NAN
        };
        (p, se)
    };
    let (acc, acc_stderr) = mean_stderr(samples.iter().filter(|s| s.correct).count());
    let (acc_norm, acc_norm_stderr) =
        mean_stderr(samples.iter().filter(|s| s.correct_norm).count());
    ChoiceMetrics {
        acc,
        acc_norm,
        acc_stderr,
        acc_norm_stderr,
        samples: n,
    }
}

/// Scores prepared items: every choice of every item, `batch_size` pairs per forward pass, by
/// `scorer` (a decoder, or an encoder-decoder reading the context as its source: the metrics
/// are the same either way). `tick` receives the number of (context, continuation) pairs
/// scored; an item with n choices counts n (see [`ChoiceItem::num_choices`]).
pub fn evaluate_items(
    scorer: Scorer<'_>,
    items: &[ChoiceItem],
    batch_size: usize,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<(ChoiceMetrics, Vec<ChoiceSample>), EvalError> {
    if items.is_empty() {
        return Err(EvalError::Invalid("no records to score".into()));
    }
    let mut requests = Vec::new();
    for item in items {
        for i in 0..item.num_choices() {
            let (ctx, cont) = item.pair(i);
            requests.push(scorer.encode_pair(ctx, cont)?);
        }
    }
    let scores = scorer.loglikelihood(&requests, batch_size, device, tick)?;
    let mut at = 0;
    let mut samples = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let s = &scores[at..at + item.num_choices()];
        at += item.num_choices();
        let loglik: Vec<f64> = s.iter().map(|x| x.logprob).collect();
        let (pred, pred_norm) = predict(&loglik, &item.norm_bytes, item.shared_continuation());
        samples.push(ChoiceSample {
            index,
            contexts: item.contexts.clone(),
            continuations: item.continuations.clone(),
            greedy: s.iter().map(|x| x.greedy).collect(),
            loglik,
            norm_bytes: item.norm_bytes.clone(),
            pred,
            pred_norm,
            gold: item.gold,
            correct: pred == item.gold,
            correct_norm: pred_norm == item.gold,
        });
    }
    Ok((choice_metrics(&samples), samples))
}

/// [`ChoiceTask::prepare`] then [`evaluate_items`].
pub fn evaluate_choices(
    scorer: Scorer<'_>,
    task: &ChoiceTask,
    records: &[Value],
    batch_size: usize,
    device: &Device,
    tick: crate::cancel::Tick,
) -> Result<(ChoiceMetrics, Vec<ChoiceSample>), EvalError> {
    let items = task.prepare(records)?;
    evaluate_items(scorer, &items, batch_size, device, tick)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(yaml: &str) -> ChoiceTask {
        ChoiceTask::from_yaml_str(yaml, "t.yaml").unwrap()
    }

    fn err(yaml: &str) -> String {
        ChoiceTask::from_yaml_str(yaml, "tasks/x.yaml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_nan_wins() {
        assert_eq!(argmax(&[-2.0, -1.0, -1.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
        assert_eq!(argmax(&[-3.0, f64::NAN, 0.0, f64::NAN]), 1);
        assert_eq!(argmax(&[f64::NEG_INFINITY, f64::NEG_INFINITY]), 0);
    }

    #[test]
    fn acc_and_acc_norm_can_disagree() {
        // Choice 0: -6 over 2 bytes = -3/byte; choice 1: -8 over 16 bytes = -0.5/byte.
        let (pred, pred_norm) = predict(&[-6.0, -8.0], &[2, 16], false);
        assert_eq!((pred, pred_norm), (0, 1));
        // Shared continuation: the same number by construction.
        assert_eq!(predict(&[-6.0, -8.0], &[2, 2], true), (0, 0));
        // Empty choice text counts as one byte instead of dividing by zero.
        assert_eq!(predict(&[-1.0, -3.0], &[0, 6], false), (0, 1));
    }

    fn sample(correct: bool, correct_norm: bool) -> ChoiceSample {
        ChoiceSample {
            index: 0,
            contexts: vec![],
            continuations: vec![],
            loglik: vec![],
            greedy: vec![],
            norm_bytes: vec![],
            pred: 0,
            pred_norm: 0,
            gold: 0,
            correct,
            correct_norm,
        }
    }

    #[test]
    fn metrics_and_stderr_by_hand() {
        let s = [
            sample(true, false),
            sample(true, true),
            sample(false, true),
            sample(true, true),
        ];
        let m = choice_metrics(&s);
        assert_eq!((m.acc, m.acc_norm, m.samples), (0.75, 0.75, 4));
        // Values 1,1,0,1: mean 0.75, sample variance (3·0.0625 + 0.5625)/3 = 0.25, /4 → 0.0625.
        assert!((m.acc_stderr - 0.25).abs() < 1e-12, "{}", m.acc_stderr);
    }

    #[test]
    fn boolq_style_context_choices_and_boolean_gold() {
        let t = task(
            "context: \"{{passage}}\\nQuestion: {{question}}?\\nAnswer:\"\n\
             choices: [\"no\", \"yes\"]\n\
             gold: {field: answer, values: [false, true]}\n",
        );
        assert_eq!(t.name(), "t");
        let item = t
            .requests(&json!({"passage": "P", "question": "q", "answer": true}))
            .unwrap();
        assert_eq!(item.contexts, ["P\nQuestion: q?\nAnswer:"]);
        assert_eq!(item.continuations, [" no", " yes"]);
        assert_eq!(item.norm_bytes, [2, 3]);
        assert_eq!(item.gold, 1);
        assert_eq!(item.pair(1), ("P\nQuestion: q?\nAnswer:", " yes"));
        assert!(!item.shared_continuation());
    }

    #[test]
    fn index_gold_accepts_numbers_and_digit_strings() {
        let t = task("context: c\nchoices: [\"{{a}}\", \"{{b}}\"]\ngold: {field: label}\n");
        let r = json!({"a": "x", "b": "y", "label": 1});
        assert_eq!(t.requests(&r).unwrap().gold, 1);
        let r = json!({"a": "x", "b": "y", "label": "0"});
        assert_eq!(t.requests(&r).unwrap().gold, 0);
        let r = json!({"a": "x", "b": "y", "label": 2});
        let e = t.requests(&r).unwrap_err().to_string();
        assert!(e.contains("label") && e.contains("2 choices"), "{e}");
        let r = json!({"a": "x", "b": "y", "label": "B"});
        assert!(t.requests(&r).unwrap_err().to_string().contains("\"B\""));
        let e = t.requests(&json!({"a": "x", "label": 0})).unwrap_err();
        assert!(e.to_string().contains("choices[1]") && e.to_string().contains("`b`"));
    }

    #[test]
    fn winogrande_style_split_contexts_and_shared_continuation() {
        let t = task(
            "split: {field: sentence, on: _}\n\
             contexts: [\"{{split.before}}{{option1}}\", \"{{split.before}}{{option2}}\"]\n\
             continuation: \"{{split.after}}\"\n\
             gold: {field: answer, values: [\"1\", \"2\"]}\n",
        );
        let r = json!({"sentence": "A beat B so _ won  .", "option1": "A", "option2": "B",
                       "answer": "2"});
        let item = t.requests(&r).unwrap();
        assert_eq!(item.contexts, ["A beat B so A", "A beat B so B"]);
        assert_eq!(item.continuations, [" won  ."]);
        assert_eq!(item.pair(1), ("A beat B so B", " won  ."));
        assert_eq!(item.gold, 1);
        assert!(item.shared_continuation());
        let e = t
            .requests(
                &json!({"sentence": "no blank", "option1": "A", "option2": "B",
                              "answer": "1"}),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("split.on") && e.contains("sentence"), "{e}");
        let e = t
            .requests(
                &json!({"sentence": "_", "split": 1, "option1": "A", "option2": "B",
                              "answer": "1"}),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists"), "{e}");
    }

    #[test]
    fn arc_style_choices_from_a_list_and_gold_by_label() {
        let t = task(
            "context: \"Question: {{question.stem}}\\nAnswer:\"\n\
             choices_from: {list: question.choices, text: text}\n\
             gold: {field: answerKey, match: label}\n",
        );
        let r = json!({"question": {"stem": "Why?", "choices": [
            {"text": "one", "label": "A"}, {"text": "two", "label": "B"},
            {"text": "three", "label": "C"}]}, "answerKey": "C"});
        let item = t.requests(&r).unwrap();
        assert_eq!(item.continuations, [" one", " two", " three"]);
        assert_eq!(item.gold, 2);
        let mut bad = r.clone();
        bad["answerKey"] = json!("E");
        let e = t.requests(&bad).unwrap_err().to_string();
        assert!(e.contains("answerKey") && e.contains("\"E\""), "{e}");
    }

    #[test]
    fn custom_delimiter_and_numeric_values() {
        let t = task(
            "context: \"Q: {{q}}\\nA:\"\ntarget_delimiter: \"\"\n\
             choices: [\" {{a}}\", \" {{b}}\", \" {{c}}\"]\n\
             gold: {field: label, values: [1, 2, 3]}\n",
        );
        let r = json!({"q": "?", "a": "x", "b": "y", "c": "zz", "label": "3"});
        let item = t.requests(&r).unwrap();
        assert_eq!(item.continuations, [" x", " y", " zz"]);
        // With an empty delimiter the leading space is part of the choice text.
        assert_eq!(item.norm_bytes, [2, 2, 3]);
        assert_eq!(item.gold, 2);
    }

    #[test]
    fn task_file_errors_name_the_file_and_key() {
        let e = err("context: c\nchoices: [a]\ngold: {field: l}\nchoises: [b]\n");
        assert!(e.contains("tasks/x.yaml") && e.contains("choises"), "{e}");
        let e = err("context: c\ncontexts: [a]\ngold: {field: l}\n");
        assert!(e.contains("`contexts`"), "{e}");
        let e = err("choices: [a]\ngold: {field: l}\n");
        assert!(e.contains("`context`"), "{e}");
        let e = err("context: c\ngold: {field: l}\n");
        assert!(e.contains("`choices`"), "{e}");
        let e = err("context: c\nchoices: []\ngold: {field: l}\n");
        assert!(e.contains("`choices`") && e.contains("empty"), "{e}");
        let e = err("context: c\nchoices: [\"{{a\"]\ngold: {field: l}\n");
        assert!(
            e.contains("`choices[0]`") && e.contains("never closed"),
            "{e}"
        );
        let e = err("contexts: [a]\ngold: {field: l}\n");
        assert!(e.contains("`continuation`"), "{e}");
        let e = err("context: c\nchoices: [a]\ngold: {field: l, match: label}\n");
        assert!(e.contains("`gold.match`"), "{e}");
        let e = err("context: c\nchoices: [a]\ngold: {field: l, values: [[1]]}\n");
        assert!(e.contains("`gold.values[0]`"), "{e}");
        let e = err("context: c\nchoices: [a]\ngold: {field: l, valuez: [1]}\n");
        assert!(e.contains("valuez"), "{e}");
        let e = err("context: c\nchoices: [a]\n");
        assert!(e.contains("gold"), "{e}");
    }
}
