//! `{{field}}` templates over JSON records, as task files write prompts and choices.
//!
//! A placeholder names a field of the record, with dots for nested objects and numbers for list
//! items (`{{question.stem}}`, `{{answers.text.0}}`). Strings render as they are, numbers and
//! booleans as JSON writes them. Text outside placeholders is copied verbatim, so the whitespace
//! a task's protocol depends on (`"\nAnswer:"`, a leading space) is kept exactly.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template `{template}`: `{{{{` at byte {at} is never closed by `}}}}`")]
    Unclosed { template: String, at: usize },
    #[error("template `{template}`: empty placeholder `{{{{}}}}`")]
    Empty { template: String },
    #[error("field `{path}` is missing from the record")]
    Missing { path: String },
    #[error("field `{path}` is {found}, not a string, number or boolean")]
    NotScalar { path: String, found: &'static str },
}

/// A parsed template: literal text and field paths, alternating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| TemplateError::Unclosed {
                template: source.to_string(),
                at: offset + open,
            })?;
            let path = after[..close].trim();
            if path.is_empty() {
                return Err(TemplateError::Empty {
                    template: source.to_string(),
                });
            }
            parts.push(Part::Field(path.to_string()));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The field paths the template reads, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Text(_) => None,
        })
    }

    pub fn render(&self, record: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(path) => out.push_str(&scalar_text(record, path)?),
            }
        }
        Ok(out)
    }
}

/// The value at a dotted path (`a.b.0.c`), if present.
pub fn lookup<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(record, |v, step| match v {
        Value::Object(m) => m.get(step),
        Value::Array(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// The text a scalar field renders as.
pub fn scalar_text(record: &Value, path: &str) -> Result<String, TemplateError> {
    match lookup(record, path) {
        None | Some(Value::Null) => Err(TemplateError::Missing {
            path: path.to_string(),
        }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(Value::Array(_)) => Err(TemplateError::NotScalar {
            path: path.to_string(),
            found: "a list",
        }),
        Some(Value::Object(_)) => Err(TemplateError::NotScalar {
            path: path.to_string(),
            found: "an object",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_and_keeps_literal_whitespace() {
        let t = Template::parse("{{passage}}\nQuestion: {{ question }}?\nAnswer:").unwrap();
        let r = json!({"passage": "P", "question": "is it"});
        assert_eq!(t.render(&r).unwrap(), "P\nQuestion: is it?\nAnswer:");
        assert_eq!(t.fields().collect::<Vec<_>>(), ["passage", "question"]);
    }

    #[test]
    fn nested_paths_numbers_and_booleans() {
        let r = json!({"q": {"stem": "Why"}, "a": [{"t": "x"}], "n": 3, "b": true});
        let t = Template::parse("{{q.stem}}|{{a.0.t}}|{{n}}|{{b}}").unwrap();
        assert_eq!(t.render(&r).unwrap(), "Why|x|3|true");
        let t = Template::parse(" {{x}}").unwrap();
        assert_eq!(t.render(&json!({"x": ""})).unwrap(), " ");
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(matches!(
            Template::parse("a {{b"),
            Err(TemplateError::Unclosed { at: 2, .. })
        ));
        assert!(matches!(
            Template::parse("{{ }}"),
            Err(TemplateError::Empty { .. })
        ));
        let t = Template::parse("{{a.b}}").unwrap();
        assert_eq!(
            t.render(&json!({"a": {}})),
            Err(TemplateError::Missing { path: "a.b".into() })
        );
        assert!(matches!(
            t.render(&json!({"a": {"b": [1]}})),
            Err(TemplateError::NotScalar {
                found: "a list",
                ..
            })
        ));
    }
}
