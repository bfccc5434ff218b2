//! Datasets: reading a dataset file into documents or records, as the pipeline's `datasets:`
//! entry says.

use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct DatasetSource {
    pub name: String,
    /// A file, or a directory for [`DatasetFormat::Lama`].
    pub path: PathBuf,
    pub format: DatasetFormat,
    /// One label per line, merged into record i as its field `label` (PIQA's and SIQA's
    /// releases keep the labels in a file of their own).
    pub labels: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DatasetFormat {
    /// Plain text, cut into documents as `documents` says.
    Text { documents: TextDocuments },
    /// JSON Lines: one record per line; as documents, each record's `field`.
    Jsonl { field: String },
    /// A JSON array of records (Alpaca's release); as documents, each record's `field`.
    Json { field: String },
    /// The SQuAD v1.1 JSON release: one record per question (`id`, `title`, `context`,
    /// `question`, `answers` as a list of strings).
    Squad,
    /// A LAMA directory: `relations.jsonl` with `TREx/`, `Google_RE/` and `Squad/` beside it.
    Lama,
}

impl DatasetFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            DatasetFormat::Text { .. } => "text",
            DatasetFormat::Jsonl { .. } => "jsonl",
            DatasetFormat::Json { .. } => "json",
            DatasetFormat::Squad => "squad",
            DatasetFormat::Lama => "lama",
        }
    }

    /// Whether the dataset reads as a list of text documents (perplexity, calibration).
    pub fn has_documents(&self) -> bool {
        matches!(
            self,
            DatasetFormat::Text { .. } | DatasetFormat::Jsonl { .. } | DatasetFormat::Json { .. }
        )
    }

    /// Whether the dataset reads as JSON records (multiple-choice and generation tasks).
    pub fn has_records(&self) -> bool {
        matches!(
            self,
            DatasetFormat::Jsonl { .. } | DatasetFormat::Json { .. } | DatasetFormat::Squad
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TextDocuments {
    /// The whole file is one document.
    Whole,
    /// One document per line, as Hugging Face's `text` loader gives them (the newline kept, blank
    /// lines as empty documents): the rows WikiText's perplexity protocol joins with "\n\n".
    Lines,
    /// Split on a separator string; each piece trimmed, empty pieces dropped.
    Separator(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read dataset `{name}` from {path}: {source}")]
    Read {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dataset `{name}` ({path}) line {line}: {message}")]
    Line {
        name: String,
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("dataset `{name}` ({path}): {message}")]
    Invalid {
        name: String,
        path: PathBuf,
        message: String,
    },
}

impl DataError {
    fn invalid(ds: &DatasetSource, path: &Path, message: impl Into<String>) -> Self {
        DataError::Invalid {
            name: ds.name.clone(),
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// The documents of a dataset, in file order; an error if there is no text at all.
pub fn read_documents(ds: &DatasetSource) -> Result<Vec<String>, DataError> {
    let docs = documents(ds)?;
    if docs.iter().all(|d| d.trim().is_empty()) {
        let what = if docs.is_empty() {
            "holds no documents"
        } else {
            "holds only blank documents"
        };
        return Err(DataError::invalid(
            ds,
            &ds.path,
            format!("{what}: the file is empty or has no text where `documents:`/`field:` look"),
        ));
    }
    Ok(docs)
}

fn documents(ds: &DatasetSource) -> Result<Vec<String>, DataError> {
    match &ds.format {
        DatasetFormat::Text { documents } => Ok(split_text(&read(ds, &ds.path)?, documents)),
        DatasetFormat::Jsonl { field } | DatasetFormat::Json { field } => read_records(ds)?
            .iter()
            .enumerate()
            .map(|(i, r)| match r.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(record_error(
                    ds,
                    i,
                    format!("field `{field}` is not a string (found {other})"),
                )),
                None => Err(record_error(
                    ds,
                    i,
                    format!(
                        "no field `{field}`: set `field:` on the dataset to the key holding the text"
                    ),
                )),
            })
            .collect(),
        DatasetFormat::Squad | DatasetFormat::Lama => Err(DataError::invalid(
            ds,
            &ds.path,
            format!(
                "a `{}` dataset holds no text documents",
                ds.format.as_str()
            ),
        )),
    }
}

/// The records of a JSON Lines, JSON-array or SQuAD dataset, each an object, with the `labels`
/// file merged in.
pub fn read_records(ds: &DatasetSource) -> Result<Vec<Value>, DataError> {
    let text = read(ds, &ds.path)?;
    let mut records = match &ds.format {
        DatasetFormat::Jsonl { .. } => parse_jsonl(ds, &text)?,
        DatasetFormat::Json { .. } => match serde_json::from_str(&text) {
            Ok(Value::Array(items)) => items,
            Ok(_) => return Err(DataError::invalid(ds, &ds.path, "expected a JSON array")),
            Err(e) => {
                return Err(DataError::invalid(
                    ds,
                    &ds.path,
                    format!("not valid JSON: {e}"),
                ))
            }
        },
        DatasetFormat::Squad => match serde_json::from_str(&text) {
            Ok(doc) => flatten_squad(&doc).map_err(|m| DataError::invalid(ds, &ds.path, m))?,
            Err(e) => {
                return Err(DataError::invalid(
                    ds,
                    &ds.path,
                    format!("not valid JSON: {e}"),
                ))
            }
        },
        DatasetFormat::Text { .. } | DatasetFormat::Lama => {
            return Err(DataError::invalid(
                ds,
                &ds.path,
                format!("a `{}` dataset holds no records", ds.format.as_str()),
            ))
        }
    };
    if let Some(i) = records.iter().position(|r| !r.is_object()) {
        return Err(record_error(ds, i, "a record is not a JSON object".into()));
    }
    if let Some(path) = &ds.labels {
        merge_labels(ds, path, &read(ds, path)?, &mut records)?;
    }
    Ok(records)
}

fn read(ds: &DatasetSource, path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|source| DataError::Read {
        name: ds.name.clone(),
        path: path.to_path_buf(),
        source,
    })
}

/// Record `i` (0-based) as a line of a JSON Lines file or an item of an array.
fn record_error(ds: &DatasetSource, i: usize, message: String) -> DataError {
    match ds.format {
        DatasetFormat::Jsonl { .. } => DataError::Line {
            name: ds.name.clone(),
            path: ds.path.clone(),
            line: i + 1,
            message,
        },
        _ => DataError::invalid(ds, &ds.path, format!("record {i}: {message}")),
    }
}

/// Label `i` of a one-label-per-line file becomes record i's field `label` (an integer when it
/// reads as one).
fn merge_labels(
    ds: &DatasetSource,
    path: &Path,
    text: &str,
    records: &mut [Value],
) -> Result<(), DataError> {
    let labels: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if labels.len() != records.len() {
        return Err(DataError::invalid(
            ds,
            path,
            format!(
                "{} labels for {} records: the labels file must have one line per record",
                labels.len(),
                records.len()
            ),
        ));
    }
    for (r, l) in records.iter_mut().zip(labels) {
        let v = l
            .parse::<i64>()
            .map_or_else(|_| Value::from(l), Value::from);
        r.as_object_mut()
            .expect("records were checked to be objects")
            .insert("label".into(), v);
    }
    Ok(())
}

/// SQuAD v1.1 (`data[].paragraphs[].qas[]`) as one record per question: `id`, `title`,
/// `context`, `question`, and `answers` as the list of answer texts.
pub fn flatten_squad(doc: &Value) -> Result<Vec<Value>, String> {
    let articles = doc
        .get("data")
        .and_then(Value::as_array)
        .ok_or("expected SQuAD's layout: an object with a `data` array")?;
    let mut out = Vec::new();
    for (a, article) in articles.iter().enumerate() {
        let title = article.get("title").cloned().unwrap_or(Value::Null);
        let paragraphs = article
            .get("paragraphs")
            .and_then(Value::as_array)
            .ok_or(format!("data[{a}] has no `paragraphs` array"))?;
        for (p, para) in paragraphs.iter().enumerate() {
            let at = format!("data[{a}].paragraphs[{p}]");
            let context = para
                .get("context")
                .and_then(Value::as_str)
                .ok_or(format!("{at} has no `context` string"))?;
            let qas = para
                .get("qas")
                .and_then(Value::as_array)
                .ok_or(format!("{at} has no `qas` array"))?;
            for (q, qa) in qas.iter().enumerate() {
                let question = qa
                    .get("question")
                    .and_then(Value::as_str)
                    .ok_or(format!("{at}.qas[{q}] has no `question` string"))?;
                let answers: Vec<Value> = qa
                    .get("answers")
                    .and_then(Value::as_array)
                    .map(|xs| xs.iter().filter_map(|x| x.get("text").cloned()).collect())
                    .unwrap_or_default();
                out.push(serde_json::json!({
                    "id": qa.get("id").cloned().unwrap_or(Value::Null),
                    "title": title,
                    "context": context,
                    "question": question,
                    "answers": answers,
                }));
            }
        }
    }
    Ok(out)
}

fn split_text(text: &str, how: &TextDocuments) -> Vec<String> {
    match how {
        TextDocuments::Whole => vec![text.to_string()],
        TextDocuments::Lines => hf_text_rows(text),
        TextDocuments::Separator(sep) => text
            .split(sep.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    }
}

/// Rows as Hugging Face's `text` loader yields them for a raw file: each line keeps its newline,
/// a blank line becomes an empty row, `\r\n` reads as `\n`.
fn hf_text_rows(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    let mut rows = Vec::new();
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() {
            rows.push(String::new());
        } else {
            rows.push(line.to_string());
        }
    }
    rows
}

fn parse_jsonl(ds: &DatasetSource, text: &str) -> Result<Vec<Value>, DataError> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| DataError::Line {
            name: ds.name.clone(),
            path: ds.path.clone(),
            line: i + 1,
            message: format!("not valid JSON: {e}"),
        })?;
        records.push(value);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_rows_keep_newlines_and_blank_rows() {
        let rows = hf_text_rows(" = Title = \n\n Some text .\r\nlast");
        assert_eq!(rows, vec![" = Title = \n", "", " Some text .\n", "last"]);
        // WikiText's protocol joins the rows with "\n\n".
        assert_eq!(
            rows.join("\n\n"),
            " = Title = \n\n\n\n\n Some text .\n\n\nlast"
        );
    }

    #[test]
    fn separator_trims_and_drops_empty() {
        let docs = split_text(
            "a b\n<|endoftext|>\n c <|endoftext|>",
            &TextDocuments::Separator("<|endoftext|>".into()),
        );
        assert_eq!(docs, vec!["a b", "c"]);
    }

    fn source(format: DatasetFormat, path: &Path, labels: Option<PathBuf>) -> DatasetSource {
        DatasetSource {
            name: "d".into(),
            path: path.to_path_buf(),
            format,
            labels,
        }
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let jsonl = DatasetFormat::Jsonl {
            field: "text".into(),
        };
        std::fs::write(&path, "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n").unwrap();
        let docs = read_documents(&source(jsonl.clone(), &path, None)).unwrap();
        assert_eq!(docs, vec!["a", "b"]);
        std::fs::write(&path, "{\"text\": \"a\"}\n{\"body\": 1}\n").unwrap();
        let err = read_documents(&source(jsonl.clone(), &path, None)).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("no field `text`"), "{err}");
        std::fs::write(&path, "{\"text\": \"a\"}\n{oops\n").unwrap();
        let err = read_records(&source(jsonl, &path, None)).unwrap_err();
        assert!(err.to_string().contains("line 2: not valid JSON"), "{err}");
    }

    #[test]
    fn labels_merge_by_position_and_must_match_in_number() {
        let dir = tempfile::tempdir().unwrap();
        let (data, labels) = (dir.path().join("v.jsonl"), dir.path().join("l.lst"));
        std::fs::write(&data, "{\"goal\": \"g0\"}\n{\"goal\": \"g1\"}\n").unwrap();
        std::fs::write(&labels, "1\n0\n").unwrap();
        let jsonl = DatasetFormat::Jsonl {
            field: "text".into(),
        };
        let recs = read_records(&source(jsonl.clone(), &data, Some(labels.clone()))).unwrap();
        assert_eq!(recs[0]["label"], 1);
        assert_eq!(recs[1]["label"], 0);
        std::fs::write(&labels, "1\n").unwrap();
        let err = read_records(&source(jsonl, &data, Some(labels))).unwrap_err();
        assert!(err.to_string().contains("1 labels for 2 records"), "{err}");
    }

    #[test]
    fn squad_flattens_to_one_record_per_question() {
        let doc = serde_json::json!({"data": [{"title": "T", "paragraphs": [
            {"context": "C1", "qas": [
                {"id": "q1", "question": "Q1?", "answers": [{"text": "a", "answer_start": 0},
                                                            {"text": "b", "answer_start": 1}]},
                {"id": "q2", "question": "Q2?", "answers": []}]},
            {"context": "C2", "qas": [{"id": "q3", "question": "Q3?",
                                       "answers": [{"text": "c", "answer_start": 0}]}]}]}]});
        let recs = flatten_squad(&doc).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(
            recs[0],
            serde_json::json!({"id": "q1", "title": "T", "context": "C1", "question": "Q1?",
                               "answers": ["a", "b"]})
        );
        assert_eq!(recs[2]["context"], "C2");
        let err = flatten_squad(&serde_json::json!({"data": [{"paragraphs": [{}]}]})).unwrap_err();
        assert_eq!(err, "data[0].paragraphs[0] has no `context` string");
    }
}
