//! Datasets: reading a dataset file into documents, as the pipeline's `datasets:` entry says.

use std::path::PathBuf;

use crate::pipeline::spec::{DatasetFormat, DatasetSource, TextDocuments};

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
}

/// The documents of a dataset, in file order.
pub fn read_documents(ds: &DatasetSource) -> Result<Vec<String>, DataError> {
    let text = std::fs::read_to_string(&ds.path).map_err(|source| DataError::Read {
        name: ds.name.clone(),
        path: ds.path.clone(),
        source,
    })?;
    match &ds.format {
        DatasetFormat::Text { documents } => Ok(split_text(&text, documents)),
        DatasetFormat::Jsonl { field } => parse_jsonl(ds, &text, field),
    }
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

fn parse_jsonl(ds: &DatasetSource, text: &str, field: &str) -> Result<Vec<String>, DataError> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| DataError::Line {
            name: ds.name.clone(),
            path: ds.path.clone(),
            line: i + 1,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(format!("not valid JSON: {e}")))?;
        match value.get(field) {
            Some(serde_json::Value::String(s)) => docs.push(s.clone()),
            Some(other) => {
                return Err(err(format!(
                    "field `{field}` is not a string (found {other})"
                )))
            }
            None => {
                return Err(err(format!(
                    "no field `{field}`: set `field:` on the dataset to the key holding the text"
                )))
            }
        }
    }
    Ok(docs)
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

    #[test]
    fn jsonl_errors_name_the_line() {
        let ds = DatasetSource {
            name: "c4".into(),
            path: "x.jsonl".into(),
            format: DatasetFormat::Jsonl {
                field: "text".into(),
            },
        };
        let docs = parse_jsonl(&ds, "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n", "text").unwrap();
        assert_eq!(docs, vec!["a", "b"]);
        let err = parse_jsonl(&ds, "{\"text\": \"a\"}\n{\"body\": 1}\n", "text").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("no field `text`"), "{err}");
    }
}
