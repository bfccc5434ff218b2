//! Generation task files: how to prompt for a record, where its references are, when to stop.
//!
//! ```yaml
//! name: squad
//! description: "SQuAD v1.1: extractive QA as free generation"   # optional
//! prompt: "Context: {{context}}\nQuestion: {{question}}\nAnswer:"
//! references: answers        # a field holding a string or a list of strings
//! stop: ["\n"]               # optional; cut the prediction before the first of these
//! max_new_tokens: 32
//! add_special_tokens: true   # optional (default true): encode the prompt as HF does, BOS included
//! ```
//!
//! A task whose records come in several shapes lists prompt forms instead of one `prompt`:
//!
//! ```yaml
//! prompts:
//!   - when: input            # used when the record's `input` is a non-blank string
//!     template: "...{{instruction}}...{{input}}..."
//!   - template: "...{{instruction}}..."   # the fallback: no `when`, last
//! ```
//!
//! The first form whose `when` field holds a string with something other than whitespace is used;
//! a form without `when` always applies. Fields are read with [`Template`](crate::eval::template)'s
//! dotted paths.

use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::eval::task_file::{self, Checks, TaskFileError};
use crate::eval::template::{lookup, Template};

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    prompts: Option<Vec<RawPrompt>>,
    references: String,
    #[serde(default)]
    stop: Vec<String>,
    max_new_tokens: usize,
    #[serde(default = "default_true")]
    add_special_tokens: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrompt {
    #[serde(default)]
    when: Option<String>,
    template: String,
}

/// One way of prompting: used when `when` (a field path) holds a non-blank string, or always.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromptForm {
    pub when: Option<String>,
    #[serde(serialize_with = "template_source")]
    pub template: Template,
}

fn template_source<S: Serializer>(t: &Template, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.source())
}

/// A validated generation task. Serializes to its resolved definition (template sources, every
/// default filled), which is what a cache key should hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationTask {
    pub name: String,
    pub description: Option<String>,
    /// Tried in order; the first that applies to a record is used.
    pub prompts: Vec<PromptForm>,
    /// The field path of the references: a string or a list of strings.
    pub references: String,
    pub stop: Vec<String>,
    pub max_new_tokens: usize,
    pub add_special_tokens: bool,
    /// Where the task came from (a path, or a name given to [`GenerationTask::from_yaml_str`]).
    #[serde(skip)]
    pub origin: String,
}

impl GenerationTask {
    pub fn from_file(path: &Path) -> Result<Self, TaskFileError> {
        let (text, origin) = task_file::read(path)?;
        Self::from_yaml_str(&text, &origin)
    }

    /// Parses a task held in memory; `origin` names it in errors.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self, TaskFileError> {
        let raw: RawTask = task_file::parse(text, origin)?;
        let checks = Checks { origin };
        let invalid = |key: &str, message: &str| checks.invalid(key, message);
        let template = |key: String, source: &str| checks.template(key, source);
        if raw.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let prompts =
            match (raw.prompt, raw.prompts) {
                (Some(_), Some(_)) => return Err(invalid(
                    "prompts",
                    "give either `prompt` (one template) or `prompts` (a list of forms), not both",
                )),
                (None, None) => {
                    return Err(invalid(
                        "prompt",
                        "missing: give `prompt` (one template) or `prompts` (a list of forms)",
                    ))
                }
                (Some(p), None) => vec![PromptForm {
                    when: None,
                    template: template("prompt".into(), &p)?,
                }],
                (None, Some(forms)) => {
                    if forms.is_empty() {
                        return Err(invalid("prompts", "the list is empty"));
                    }
                    let mut out = Vec::with_capacity(forms.len());
                    for (i, f) in forms.into_iter().enumerate() {
                        if out.last().is_some_and(|p: &PromptForm| p.when.is_none()) {
                            return Err(invalid(
                                &format!("prompts[{i}]"),
                                "follows a form without `when`, which always applies: this one \
                             would never be used (put the fallback last)",
                            ));
                        }
                        if f.when.as_deref().is_some_and(|w| w.trim().is_empty()) {
                            return Err(invalid(
                                &format!("prompts[{i}].when"),
                                "empty field name; leave `when` out for a form that always applies",
                            ));
                        }
                        out.push(PromptForm {
                            when: f.when,
                            template: template(format!("prompts[{i}].template"), &f.template)?,
                        });
                    }
                    out
                }
            };
        if raw.references.trim().is_empty() {
            return Err(invalid(
                "references",
                "must name the field holding the references",
            ));
        }
        if let Some(i) = raw.stop.iter().position(String::is_empty) {
            return Err(invalid(
                &format!("stop[{i}]"),
                "an empty stop string would end every generation at once",
            ));
        }
        if raw.max_new_tokens == 0 {
            return Err(invalid("max_new_tokens", "must be at least 1"));
        }
        Ok(GenerationTask {
            name: raw.name,
            description: raw.description,
            prompts,
            references: raw.references,
            stop: raw.stop,
            max_new_tokens: raw.max_new_tokens,
            add_special_tokens: raw.add_special_tokens,
            origin: origin.to_string(),
        })
    }

    /// The first prompt form that applies to `record`.
    pub fn prompt_for(&self, record: &Value) -> Option<&PromptForm> {
        self.prompts.iter().find(|p| match &p.when {
            None => true,
            Some(path) => {
                matches!(lookup(record, path), Some(Value::String(s)) if !s.trim().is_empty())
            }
        })
    }

    /// The references of `record`: its `references` field, a string or a non-empty list of
    /// strings. The error says what was found instead.
    pub fn references_of(&self, record: &Value) -> Result<Vec<String>, String> {
        match lookup(record, &self.references) {
            None | Some(Value::Null) => Err("is missing from the record".into()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) if items.is_empty() => Err("is an empty list".into()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(format!("item {i} is {}, not a string", kind(other))),
                })
                .collect(),
            Some(other) => Err(format!(
                "is {}, not a string or a list of strings",
                kind(other)
            )),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SQUAD: &str = r#"
name: squad
prompt: "Context: {{context}}\nQuestion: {{question}}\nAnswer:"
references: answers
stop: ["\n"]
max_new_tokens: 32
"#;

    #[test]
    fn a_single_prompt_task() {
        let t = GenerationTask::from_yaml_str(SQUAD, "squad.yaml").unwrap();
        assert_eq!(t.name, "squad");
        assert_eq!((t.max_new_tokens, t.add_special_tokens), (32, true));
        assert_eq!(t.stop, ["\n"]);
        let r = json!({"context": "C", "question": "Q?", "answers": ["a", "b"]});
        let p = t.prompt_for(&r).unwrap();
        assert_eq!(
            p.template.render(&r).unwrap(),
            "Context: C\nQuestion: Q?\nAnswer:"
        );
        assert_eq!(t.references_of(&r).unwrap(), ["a", "b"]);
        // The resolved definition, as a cache key would hash it.
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            v["prompts"][0]["template"],
            json!(t.prompts[0].template.source())
        );
        assert_eq!(v["add_special_tokens"], json!(true));
        assert!(v.get("origin").is_none());
    }

    #[test]
    fn prompt_forms_are_chosen_by_their_when_field() {
        let t = GenerationTask::from_yaml_str(
            r#"
name: alpaca
prompts:
  - when: input
    template: "I: {{instruction}} / {{input}}"
  - template: "I: {{instruction}}"
references: output
max_new_tokens: 8
add_special_tokens: false
"#,
            "alpaca.yaml",
        )
        .unwrap();
        let render = |r: &Value| t.prompt_for(r).unwrap().template.render(r).unwrap();
        assert_eq!(
            render(&json!({"instruction": "x", "input": "y"})),
            "I: x / y"
        );
        assert_eq!(render(&json!({"instruction": "x", "input": ""})), "I: x");
        assert_eq!(render(&json!({"instruction": "x", "input": " \n"})), "I: x");
        assert_eq!(render(&json!({"instruction": "x"})), "I: x");
        assert!(!t.add_special_tokens);
        // Without a fallback, a record may match nothing.
        let only = GenerationTask::from_yaml_str(
            "name: t\nprompts: [{when: a, template: '{{a}}'}]\nreferences: r\nmax_new_tokens: 1",
            "t",
        )
        .unwrap();
        assert!(only.prompt_for(&json!({"a": ""})).is_none());
    }

    #[test]
    fn references_must_be_strings() {
        let t = GenerationTask::from_yaml_str(SQUAD, "s").unwrap();
        assert_eq!(t.references_of(&json!({"answers": "x"})).unwrap(), ["x"]);
        for (r, says) in [
            (json!({}), "missing"),
            (json!({"answers": []}), "empty list"),
            (json!({"answers": ["a", 3]}), "item 1 is a number"),
            (json!({"answers": {"text": "a"}}), "an object"),
        ] {
            let e = t.references_of(&r).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cases = [
            (
                SQUAD.replace("max_new_tokens", "max_tokens"),
                "unknown field `max_tokens`",
            ),
            (
                SQUAD.replace("references: answers\n", ""),
                "missing field `references`",
            ),
            (SQUAD.replace("32", "0"), "key `max_new_tokens`"),
            (SQUAD.replace(r#"["\n"]"#, r#"["\n", ""]"#), "key `stop[1]`"),
            (SQUAD.replace("{{question}}", "{{question"), "key `prompt`"),
            (SQUAD.replace("name: squad", "name: ''"), "key `name`"),
            (format!("{SQUAD}prompts: [{{template: x}}]\n"), "not both"),
            (SQUAD.replace("prompt:", "#"), "key `prompt`: missing"),
            (
                SQUAD.replace(
                    "prompt: \"Context",
                    "prompts: [{template: a}, {when: b, template: b}]\n#",
                ),
                "key `prompts[1]`",
            ),
            (
                SQUAD.replace("prompt: \"Context", "prompts: [{when: '', template: a}]\n#"),
                "key `prompts[0].when`",
            ),
            (
                SQUAD.replace("prompt: \"Context", "prompts: [{when: a, tmpl: a}]\n#"),
                "unknown field `tmpl`",
            ),
        ];
        for (text, says) in cases {
            let e = GenerationTask::from_yaml_str(&text, "tasks/x.yaml")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("task file tasks/x.yaml"), "{e}");
            assert!(e.contains(says), "{says:?} not in {e:?}\n{text}");
        }
        let e = GenerationTask::from_file(Path::new("/nonexistent/t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/t.yaml"), "{e}");
    }
}
