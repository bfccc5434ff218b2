//! Where a report's numbers come from: the pipeline file, the engine, the model's weights, the
//! data, the evaluation settings and devices, and how many points are still missing. Every table
//! and plot carries it.

use serde::Serialize;

use crate::cache::Digest;
use crate::pipeline::spec::Pipeline;

/// Version of `provenance.json`.
pub const PROVENANCE_SCHEMA: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Provenance {
    pub schema: u32,
    pub pipeline: PipelineId,
    pub engine_version: String,
    /// Each base model (a `load` stage's model, or a `train` stage by its name) and the content
    /// digest of its weights; `None` while that stage is not in the cache.
    pub models: Vec<ModelId>,
    /// Every dataset the reported stages read (calibration included), with its file's blake3.
    pub datasets: Vec<DatasetId>,
    /// Sequence lengths of the evaluations.
    pub seqlen: Vec<u64>,
    /// Devices that computed the evaluations.
    pub devices: Vec<String>,
    /// How calibrate stages summed their statistics, when not the default (`exact`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accumulation: Vec<String>,
    pub points: Points,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PipelineId {
    pub name: String,
    /// The file's name (not its path: reports travel between machines).
    pub file: String,
    pub blake3: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelId {
    pub name: String,
    pub weights: Option<String>,
    /// Which reading of `tokenizer.json` made the token ids: `tokenizers` or `transformers`.
    pub tokenizer_semantics: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetId {
    pub name: String,
    pub blake3: String,
}

/// How many input instances the report has, and how many have no result yet.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Points {
    pub total: usize,
    pub pending: usize,
    pub failed: usize,
}

impl Points {
    pub fn missing(&self) -> usize {
        self.pending + self.failed
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

impl Provenance {
    pub fn new(p: &Pipeline) -> Self {
        Provenance {
            schema: PROVENANCE_SCHEMA,
            pipeline: PipelineId {
                name: p.name.clone(),
                file: p
                    .path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                blake3: p.source_digest.hex(),
            },
            engine_version: crate::ENGINE_VERSION.to_string(),
            models: Vec::new(),
            datasets: Vec::new(),
            seqlen: Vec::new(),
            devices: Vec::new(),
            accumulation: Vec::new(),
            points: Points::default(),
        }
    }

    pub fn add_accumulation(&mut self, a: &str) {
        if !self.accumulation.iter().any(|x| x == a) {
            self.accumulation.push(a.to_string());
        }
    }

    pub fn add_model(
        &mut self,
        name: &str,
        weights: Option<Digest>,
        tokenizer_semantics: crate::model::TokenizerSemantics,
    ) {
        let weights = weights.map(|d| d.hex());
        let tokenizer_semantics = tokenizer_semantics.as_str().to_string();
        if !self.models.iter().any(|m| {
            m.name == name && m.weights == weights && m.tokenizer_semantics == tokenizer_semantics
        }) {
            self.models.push(ModelId {
                name: name.to_string(),
                weights,
                tokenizer_semantics,
            });
        }
    }

    pub fn add_dataset(&mut self, name: &str, digest: Digest) {
        if !self.datasets.iter().any(|d| d.name == name) {
            self.datasets.push(DatasetId {
                name: name.to_string(),
                blake3: digest.hex(),
            });
        }
    }

    pub fn add_seqlen(&mut self, s: u64) {
        if !self.seqlen.contains(&s) {
            self.seqlen.push(s);
        }
    }

    pub fn add_device(&mut self, d: &str) {
        if !self.devices.iter().any(|x| x == d) {
            self.devices.push(d.to_string());
        }
    }

    /// A canonical order, so that equal inputs give byte-equal files.
    pub fn sort(&mut self) {
        self.models.sort_by(|a, b| {
            (&a.name, &a.weights, &a.tokenizer_semantics).cmp(&(
                &b.name,
                &b.weights,
                &b.tokenizer_semantics,
            ))
        });
        self.datasets.sort_by(|a, b| a.name.cmp(&b.name));
        self.seqlen.sort_unstable();
        self.devices.sort();
        self.accumulation.sort();
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("provenance serializes") + "\n"
    }

    /// The facts as short phrases; `code` wraps digests (e.g. in Markdown backticks).
    fn parts(&self, code: &dyn Fn(&str) -> String) -> Vec<String> {
        let mut parts = vec![
            format!(
                "pipeline {} {}",
                self.pipeline.file,
                code(short(&self.pipeline.blake3))
            ),
            format!("whittle {}", self.engine_version),
        ];
        for m in &self.models {
            let w = m
                .weights
                .as_deref()
                .map_or("pending".into(), |w| code(short(w)));
            parts.push(format!(
                "model {} {w} ({} semantics)",
                m.name, m.tokenizer_semantics
            ));
        }
        if !self.datasets.is_empty() {
            let d: Vec<String> = self
                .datasets
                .iter()
                .map(|d| format!("{} {}", d.name, code(short(&d.blake3))))
                .collect();
            parts.push(format!("data {}", d.join(", ")));
        }
        if !self.seqlen.is_empty() {
            let s: Vec<String> = self.seqlen.iter().map(u64::to_string).collect();
            parts.push(format!("seqlen {}", s.join(", ")));
        }
        if !self.devices.is_empty() {
            let n = if self.devices.len() > 1 {
                "devices"
            } else {
                "device"
            };
            parts.push(format!("{n} {}", self.devices.join(", ")));
        }
        if !self.accumulation.is_empty() {
            let a = self.accumulation.join(", ");
            parts.push(format!("calibration accumulation {a}"));
        }
        parts
    }

    /// One line for terminals and plot captions.
    pub fn line(&self) -> String {
        self.parts(&|s| s.to_string()).join(" · ")
    }

    /// The line split in two (pipeline, engine, model | data, settings), for narrow plots.
    pub fn lines(&self) -> Vec<String> {
        let parts = self.parts(&|s| s.to_string());
        let split = 2 + self.models.len();
        let (a, b) = parts.split_at(split.min(parts.len()));
        [a, b]
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.join(" · "))
            .collect()
    }

    /// `2 of 14 points missing: 1 pending, 1 failed`; `None` when nothing is missing.
    pub fn missing_note(&self) -> Option<String> {
        let p = &self.points;
        if p.missing() == 0 {
            return None;
        }
        let mut why = Vec::new();
        if p.pending > 0 {
            why.push(format!("{} pending", p.pending));
        }
        if p.failed > 0 {
            why.push(format!("{} failed", p.failed));
        }
        Some(format!(
            "{} of {} points missing: {}",
            p.missing(),
            p.total,
            why.join(", ")
        ))
    }

    /// A Markdown paragraph to put under a table.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "*Provenance:* {}.",
            self.parts(&|s| format!("`{s}`")).join(" · ")
        );
        if let Some(m) = self.missing_note() {
            out.push_str(&format!(" **{m}.**"));
        }
        out.push('\n');
        out
    }

    /// LaTeX comment lines with the full digests.
    pub fn latex_comment(&self) -> String {
        let mut out = format!(
            "% pipeline: {} ({}), blake3 {}\n% engine: whittle {}\n",
            self.pipeline.name, self.pipeline.file, self.pipeline.blake3, self.engine_version
        );
        for m in &self.models {
            out.push_str(&format!(
                "% model: {}, weights {}, tokenizer semantics {}\n",
                m.name,
                m.weights.as_deref().unwrap_or("pending"),
                m.tokenizer_semantics
            ));
        }
        for d in &self.datasets {
            out.push_str(&format!("% dataset: {}, blake3 {}\n", d.name, d.blake3));
        }
        let seq: Vec<String> = self.seqlen.iter().map(u64::to_string).collect();
        out.push_str(&format!(
            "% seqlen: {}; devices: {}\n",
            seq.join(", "),
            self.devices.join(", ")
        ));
        if !self.accumulation.is_empty() {
            let a = self.accumulation.join(", ");
            out.push_str(&format!("% calibration accumulation: {a}\n"));
        }
        if let Some(m) = self.missing_note() {
            out.push_str(&format!("% {m}\n"));
        }
        out
    }

    /// The caption text (LaTeX-escaped).
    pub fn latex_caption(&self) -> String {
        let mut s = format!("{}.", self.line());
        if let Some(m) = self.missing_note() {
            s.push_str(&format!(" {m}."));
        }
        crate::table::latex_escape(&s).replace('·', "\\textperiodcentered{}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Provenance {
        Provenance {
            schema: PROVENANCE_SCHEMA,
            pipeline: PipelineId {
                name: "p".into(),
                file: "p.yaml".into(),
                blake3: "0123456789abcdef".repeat(4),
            },
            engine_version: "9.9.9".into(),
            models: vec![ModelId {
                name: "m".into(),
                weights: None,
                tokenizer_semantics: "transformers".into(),
            }],
            datasets: vec![DatasetId {
                name: "d".into(),
                blake3: "f".repeat(64),
            }],
            seqlen: vec![128, 256],
            devices: vec!["cpu".into(), "cuda:0".into()],
            accumulation: Vec::new(),
            points: Points::default(),
        }
    }

    #[test]
    fn a_reference_accumulation_is_named_and_the_default_is_not() {
        let mut p = sample();
        assert!(!p.to_json().contains("accumulation"));
        assert!(!p.line().contains("accumulation"));
        p.add_accumulation("reference");
        p.add_accumulation("reference");
        assert_eq!(p.accumulation, ["reference"]);
        assert!(p
            .to_json()
            .contains("\"accumulation\": [\n    \"reference\"\n  ]"));
        assert!(p.line().ends_with(" · calibration accumulation reference"));
        assert!(p
            .latex_comment()
            .contains("% calibration accumulation: reference\n"));
    }

    #[test]
    fn the_line_splits_before_the_data_and_says_what_is_pending() {
        let p = sample();
        assert_eq!(
            p.lines(),
            [
                "pipeline p.yaml 0123456789ab · whittle 9.9.9 · model m pending (transformers semantics)",
                "data d ffffffffffff · seqlen 128, 256 · devices cpu, cuda:0"
            ]
        );
        assert_eq!(p.missing_note(), None);
    }

    #[test]
    fn missing_points_are_counted_by_cause() {
        let mut p = sample();
        p.points = Points {
            total: 10,
            pending: 0,
            failed: 3,
        };
        assert_eq!(
            p.missing_note().as_deref(),
            Some("3 of 10 points missing: 3 failed")
        );
        assert!(p
            .latex_comment()
            .ends_with("% 3 of 10 points missing: 3 failed\n"));
    }
}
