//! The LAMA probe's data (Petroni et al., 2019) read from its directory layout into relations of
//! cloze facts.
//!
//! ```text
//! DIR/relations.jsonl                      relation, template ("[X] was born in [Y] ."), label
//! DIR/TREx/P19.jsonl ...                   sub_label, obj_label (a relation's file may be absent)
//! DIR/Google_RE/place_of_birth_test.jsonl  sub_label, obj_label, masked_sentences, judgments
//! DIR/Google_RE/date_of_birth_test.jsonl
//! DIR/Google_RE/place_of_death_test.jsonl
//! DIR/Squad/test.jsonl                     masked_sentences (with [MASK]), obj_label
//! ```
//!
//! Every fact becomes a cloze `left [MASK] right`, as LAMA's own runs build them:
//! - T-REx: the relation's template (trimmed) with `[X]` replaced by the subject (trimmed) and
//!   `[Y]` the mask;
//! - Google-RE: by default the templates LAMA's `run_experiments.py` gives these relations
//!   (place_of_birth `"[X] was born in [Y] ."`, date_of_birth `"[X] (born [Y])."`, place_of_death
//!   `"[X] died in [Y] ."`), or with [`GoogleRePrompts::MaskedSentences`] the evidence sentences;
//! - SQuAD: the masked sentence.
//!
//! Masked sentences of one fact are joined with a space; the cloze is cut at the first `[MASK]`.
//!
//! As LAMA's `batch_eval_KB_completion.py` does, a template keeps one fact per distinct
//! (subject, object) pair, and Google-RE facts whose raters said "no" more often than "yes" are
//! left out; both are counted in [`Relation::excluded`]. LAMA also drops objects that are not a
//! single token of the model's vocabulary; that depends on the model, so the probe records each
//! object's token count instead.
//!
//! A directory with only `relations.jsonl` and `TREx/<relation>.jsonl` loads too (split `trex`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum LamaError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}:{line}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}:{line}: key `{key}`: {message}", path.display())]
    Field {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },

    #[error("{} not found: {hint}", path.display())]
    Missing { path: PathBuf, hint: String },

    #[error("relation `{name}` is not among the selected splits' relations ({known})")]
    UnknownRelation { name: String, known: String },

    #[error(
        "relation `{name}` appears twice (in {first} and {second}); relation ids must be unique"
    )]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

/// A part of LAMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Trex,
    GoogleRe,
    Squad,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Trex, Split::GoogleRe, Split::Squad];

    pub fn as_str(self) -> &'static str {
        self.name()
    }

    pub fn name(self) -> &'static str {
        match self {
            Split::Trex => "trex",
            Split::GoogleRe => "google_re",
            Split::Squad => "squad",
        }
    }
}

/// Where Google-RE prompts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoogleRePrompts {
    /// LAMA's templates for the three relations (what `run_experiments.py` evaluates).
    #[default]
    Template,
    /// The evidence sentences in `masked_sentences`.
    MaskedSentences,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LamaOptions {
    pub splits: Vec<Split>,
    /// Only these relations (ids as in [`Relation::id`]); all when `None`.
    pub relations: Option<Vec<String>>,
    /// At most this many facts per relation: the first ones in file order.
    pub limit: Option<usize>,
    pub google_re_prompts: GoogleRePrompts,
}

impl Default for LamaOptions {
    fn default() -> Self {
        LamaOptions {
            splits: vec![Split::Trex],
            relations: None,
            limit: None,
            google_re_prompts: GoogleRePrompts::Template,
        }
    }
}

/// One fact as a cloze: `left [MASK] right`, the object in place of the mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact {
    pub subject: String,
    pub object: String,
    pub left: String,
    pub right: String,
}

impl Fact {
    pub fn cloze(&self) -> String {
        format!("{}[MASK]{}", self.left, self.right)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Relation {
    /// `P19` for T-REx, `place_of_birth` for Google-RE, `squad` for SQuAD.
    pub id: String,
    pub split: Split,
    pub label: String,
    /// The template the clozes were built from, when they were.
    pub template: Option<String>,
    pub facts: Vec<Fact>,
    /// Facts left out as LAMA leaves them out (repeated pairs, negative Google-RE judgments).
    pub excluded: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LamaSet {
    pub relations: Vec<Relation>,
    /// Relations of `relations.jsonl` with no facts file (skipped, as LAMA skips them).
    pub missing: Vec<String>,
}

impl LamaSet {
    pub fn num_facts(&self) -> usize {
        self.relations.iter().map(|r| r.facts.len()).sum()
    }
}

const GOOGLE_RE: [(&str, &str, &str); 3] = [
    ("place_of_birth", "place of birth", "[X] was born in [Y] ."),
    ("date_of_birth", "date of birth", "[X] (born [Y])."),
    ("place_of_death", "place of death", "[X] died in [Y] ."),
];

/// Reads the selected splits of the LAMA directory `dir`.
pub fn load_lama(dir: &Path, opts: &LamaOptions) -> Result<LamaSet, LamaError> {
    let mut set = LamaSet {
        relations: Vec::new(),
        missing: Vec::new(),
    };
    let mut splits = opts.splits.clone();
    splits.sort();
    splits.dedup();
    // Every relation id the splits offer, for the error on an unknown one.
    let mut known = Vec::new();
    for split in splits {
        match split {
            Split::Trex => load_trex(dir, opts, &mut set, &mut known)?,
            Split::GoogleRe => load_google_re(dir, opts, &mut set, &mut known)?,
            Split::Squad => {
                known.push("squad".to_string());
                if opts
                    .relations
                    .as_ref()
                    .is_some_and(|w| !w.iter().any(|n| n == "squad"))
                {
                    continue;
                }
                let path = dir.join("Squad").join("test.jsonl");
                require(
                    &path,
                    "select the split `squad` only where LAMA's Squad/ exists",
                )?;
                set.relations.push(masked_relation(
                    &path,
                    "squad",
                    "SQuAD",
                    Split::Squad,
                    opts,
                )?);
            }
        }
    }
    let mut seen: Vec<(&str, Split)> = Vec::new();
    for r in &set.relations {
        if let Some((_, first)) = seen.iter().find(|(id, _)| *id == r.id) {
            return Err(LamaError::Duplicate {
                name: r.id.clone(),
                first: first.name().into(),
                second: r.split.name().into(),
            });
        }
        seen.push((&r.id, r.split));
    }
    if let Some(wanted) = &opts.relations {
        for name in wanted {
            if set.relations.iter().any(|r| &r.id == name) {
                continue;
            }
            if set.missing.contains(name) {
                return Err(LamaError::Missing {
                    path: dir.join("TREx").join(format!("{name}.jsonl")),
                    hint: format!("relation `{name}` is in relations.jsonl but has no facts file"),
                });
            }
            return Err(LamaError::UnknownRelation {
                name: name.clone(),
                known: known.join(", "),
            });
        }
    }
    Ok(set)
}

fn require(path: &Path, hint: &str) -> Result<(), LamaError> {
    if path.exists() {
        Ok(())
    } else {
        Err(LamaError::Missing {
            path: path.to_path_buf(),
            hint: hint.to_string(),
        })
    }
}

/// Non-empty lines of a JSONL file, parsed, with their 1-based line numbers.
fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>, LamaError> {
    let text = std::fs::read_to_string(path).map_err(|source| LamaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|source| LamaError::Json {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                })
        })
        .collect()
}

fn string_field(path: &Path, line: usize, v: &Value, key: &str) -> Result<String, LamaError> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        other => Err(LamaError::Field {
            path: path.to_path_buf(),
            line,
            key: key.to_string(),
            message: match other {
                None => "missing".into(),
                Some(v) => format!("expected a string, found {v}"),
            },
        }),
    }
}

fn load_trex(
    dir: &Path,
    opts: &LamaOptions,
    set: &mut LamaSet,
    known: &mut Vec<String>,
) -> Result<(), LamaError> {
    let rel_path = dir.join("relations.jsonl");
    require(
        &rel_path,
        "a LAMA directory holds relations.jsonl and TREx/",
    )?;
    for (line, v) in read_jsonl(&rel_path)? {
        let id = string_field(&rel_path, line, &v, "relation")?;
        let template = string_field(&rel_path, line, &v, "template")?;
        if !template.contains("[Y]") {
            return Err(LamaError::Field {
                path: rel_path.clone(),
                line,
                key: "template".into(),
                message: format!("{template:?} has no `[Y]` for the object"),
            });
        }
        let label = match v.get("label") {
            Some(Value::String(s)) => s.clone(),
            _ => id.clone(),
        };
        let path = dir.join("TREx").join(format!("{id}.jsonl"));
        if path.exists() {
            known.push(id.clone());
        }
        if opts.relations.as_ref().is_some_and(|w| !w.contains(&id)) {
            continue;
        }
        if !path.exists() {
            set.missing.push(id);
            continue;
        }
        set.relations.push(template_relation(
            &path,
            &id,
            &label,
            &template,
            Split::Trex,
            opts,
        )?);
    }
    Ok(())
}

fn load_google_re(
    dir: &Path,
    opts: &LamaOptions,
    set: &mut LamaSet,
    known: &mut Vec<String>,
) -> Result<(), LamaError> {
    for (id, label, template) in GOOGLE_RE {
        known.push(id.to_string());
        if opts
            .relations
            .as_ref()
            .is_some_and(|w| !w.iter().any(|n| n == id))
        {
            continue;
        }
        let path = dir.join("Google_RE").join(format!("{id}_test.jsonl"));
        require(
            &path,
            "select the split `google_re` only where LAMA's Google_RE/ exists",
        )?;
        set.relations.push(match opts.google_re_prompts {
            GoogleRePrompts::Template => {
                template_relation(&path, id, label, template, Split::GoogleRe, opts)?
            }
            GoogleRePrompts::MaskedSentences => {
                masked_relation(&path, id, label, Split::GoogleRe, opts)?
            }
        });
    }
    Ok(())
}

/// More raters said "no" than "yes" (Google-RE's `judgments`; absent elsewhere).
fn negative_judgment(v: &Value) -> bool {
    let Some(Value::Array(js)) = v.get("judgments") else {
        return false;
    };
    let yes = js
        .iter()
        .filter(|j| j.get("judgment").and_then(Value::as_str) == Some("yes"))
        .count();
    js.len() - yes > yes
}

fn template_relation(
    path: &Path,
    id: &str,
    label: &str,
    template: &str,
    split: Split,
    opts: &LamaOptions,
) -> Result<Relation, LamaError> {
    let template = template.trim();
    let (left_t, right_t) = template.split_once("[Y]").expect("checked by the caller");
    let mut rel = Relation {
        id: id.to_string(),
        split,
        label: label.to_string(),
        template: Some(template.to_string()),
        facts: Vec::new(),
        excluded: 0,
    };
    let mut seen = HashSet::new();
    for (line, v) in read_jsonl(path)? {
        let subject = string_field(path, line, &v, "sub_label")?;
        let object = string_field(path, line, &v, "obj_label")?;
        if negative_judgment(&v) || !seen.insert((subject.clone(), object.clone())) {
            rel.excluded += 1;
            continue;
        }
        if opts.limit.is_some_and(|n| rel.facts.len() >= n) {
            continue;
        }
        let sub = subject.trim();
        rel.facts.push(Fact {
            left: left_t.replace("[X]", sub),
            right: right_t.replace("[X]", sub),
            subject,
            object,
        });
    }
    Ok(rel)
}

fn masked_relation(
    path: &Path,
    id: &str,
    label: &str,
    split: Split,
    opts: &LamaOptions,
) -> Result<Relation, LamaError> {
    let mut rel = Relation {
        id: id.to_string(),
        split,
        label: label.to_string(),
        template: None,
        facts: Vec::new(),
        excluded: 0,
    };
    for (line, v) in read_jsonl(path)? {
        let object = string_field(path, line, &v, "obj_label")?;
        let subject = match v.get("sub_label") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let sentences: Vec<&str> = match v.get("masked_sentences") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let text = sentences.join(" ");
        let Some((left, right)) = text.split_once("[MASK]") else {
            return Err(LamaError::Field {
                path: path.to_path_buf(),
                line,
                key: "masked_sentences".into(),
                message: "no sentence holds a `[MASK]`".into(),
            });
        };
        if negative_judgment(&v) {
            rel.excluded += 1;
            continue;
        }
        if opts.limit.is_some_and(|n| rel.facts.len() >= n) {
            continue;
        }
        rel.facts.push(Fact {
            subject,
            object,
            left: left.to_string(),
            right: right.to_string(),
        });
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn templates_dedup_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "relations.jsonl",
            "{\"relation\": \"P1\", \"template\": \" [X] lives in [Y] . \"}\n\
             {\"relation\": \"P2\", \"template\": \"[Y] likes [X] .\", \"label\": \"likes\"}\n\
             {\"relation\": \"P3\", \"template\": \"[X] is [Y]\"}\n",
        );
        write(
            d,
            "TREx/P1.jsonl",
            "{\"sub_label\": \" Ann \", \"obj_label\": \"Rome\"}\n\n\
             {\"sub_label\": \" Ann \", \"obj_label\": \"Rome\"}\n\
             {\"sub_label\": \"Bob\", \"obj_label\": \"Oslo\"}\n\
             {\"sub_label\": \"Cy\", \"obj_label\": \"Bern\"}\n",
        );
        write(
            d,
            "TREx/P2.jsonl",
            "{\"sub_label\": \"tea\", \"obj_label\": \"Ann\"}\n",
        );
        let set = load_lama(d, &LamaOptions::default()).unwrap();
        assert_eq!(set.missing, ["P3"]);
        let p1 = &set.relations[0];
        assert_eq!((p1.id.as_str(), p1.label.as_str()), ("P1", "P1"));
        assert_eq!(p1.template.as_deref(), Some("[X] lives in [Y] ."));
        assert_eq!(p1.facts.len(), 3);
        assert_eq!(p1.excluded, 1);
        assert_eq!(p1.facts[0].left, "Ann lives in ");
        assert_eq!(p1.facts[0].right, " .");
        assert_eq!(p1.facts[0].cloze(), "Ann lives in [MASK] .");
        assert_eq!(set.relations[1].facts[0].left, "");
        assert_eq!(set.relations[1].facts[0].right, " likes tea .");

        let opts = LamaOptions {
            relations: Some(vec!["P1".into()]),
            limit: Some(2),
            ..LamaOptions::default()
        };
        let set = load_lama(d, &opts).unwrap();
        assert_eq!(set.relations.len(), 1);
        let objects: Vec<_> = set.relations[0].facts.iter().map(|f| &f.object).collect();
        assert_eq!(objects, ["Rome", "Oslo"]);
        assert!(set.missing.is_empty());
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = load_lama(d, &LamaOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("relations.jsonl"), "{e}");
        write(
            d,
            "relations.jsonl",
            "{\"relation\": \"P1\", \"template\": \"[X] is\"}\n",
        );
        let e = load_lama(d, &LamaOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("relations.jsonl:1") && e.contains("[Y]"), "{e}");
        write(
            d,
            "relations.jsonl",
            "{\"relation\": \"P1\", \"template\": \"[X] is [Y]\"}\n",
        );
        write(
            d,
            "TREx/P1.jsonl",
            "{\"sub_label\": \"a\", \"obj_label\": \"b\"}\n{\"sub_label\": 3}\n",
        );
        let e = load_lama(d, &LamaOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("P1.jsonl:2") && e.contains("sub_label"), "{e}");
        write(
            d,
            "TREx/P1.jsonl",
            "{\"sub_label\": \"a\", \"obj_label\": \"b\"}\n",
        );
        let opts = LamaOptions {
            relations: Some(vec!["P9".into()]),
            ..LamaOptions::default()
        };
        let e = load_lama(d, &opts).unwrap_err().to_string();
        assert!(e.contains("P9") && e.contains("P1"), "{e}");
        let opts = LamaOptions {
            splits: vec![Split::Squad],
            ..LamaOptions::default()
        };
        let e = load_lama(d, &opts).unwrap_err().to_string();
        assert!(e.contains("test.jsonl") && e.contains("squad"), "{e}");
    }

    #[test]
    fn masked_sentences_and_judgments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let row = |sub: &str, no: usize| {
            let js: Vec<String> = (0..3)
                .map(|i| {
                    let j = if i < no { "no" } else { "yes" };
                    format!("{{\"judgment\": \"{j}\"}}")
                })
                .collect();
            format!(
                "{{\"sub_label\": \"{sub}\", \"obj_label\": \"1900\", \"masked_sentences\": \
                 [\"First.\", \"{sub} (born [MASK]) was, [MASK] x.\"], \"judgments\": [{}]}}\n",
                js.join(", ")
            )
        };
        for (id, _, _) in GOOGLE_RE {
            write(
                d,
                &format!("Google_RE/{id}_test.jsonl"),
                &format!("{}{}{}", row("Ann", 1), row("Bob", 2), row("Ann", 0)),
            );
        }
        let opts = LamaOptions {
            splits: vec![Split::GoogleRe],
            ..LamaOptions::default()
        };
        let set = load_lama(d, &opts).unwrap();
        let ids: Vec<_> = set.relations.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["place_of_birth", "date_of_birth", "place_of_death"]);
        // Bob is judged "no" 2:1; the second Ann repeats a (subject, object) pair.
        let dob = &set.relations[1];
        assert_eq!((dob.facts.len(), dob.excluded), (1, 2));
        assert_eq!(dob.facts[0].cloze(), "Ann (born [MASK]).");
        let opts = LamaOptions {
            google_re_prompts: GoogleRePrompts::MaskedSentences,
            ..opts
        };
        let set = load_lama(d, &opts).unwrap();
        let dob = &set.relations[1];
        assert_eq!((dob.facts.len(), dob.excluded), (2, 1));
        assert_eq!(dob.facts[0].left, "First. Ann (born ");
        assert_eq!(dob.facts[0].right, ") was, [MASK] x.");
        assert_eq!(dob.template, None);
    }
}
