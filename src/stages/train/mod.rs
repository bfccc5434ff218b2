//! `train`: a small LLaMA, GPT-2, OPT or T5 (`architecture: t5`, span corruption) model trained
//! from scratch (the quickstart's embedded default model is a LLaMA).

mod read;
mod run;

pub use run::MODEL_DIR;

use super::{Kind, ModelSize, StageCtx, StageError, StageOutput};
use crate::cache::key::{CacheKey, KeyWriter, ParamValue};
use crate::pipeline::fields::Fields;
use crate::pipeline::spec::Pipeline;
use crate::train::TrainConfig;

#[derive(Clone, Debug, PartialEq)]
pub struct TrainSpec {
    /// The training documents.
    pub dataset: String,
    /// Another dataset whose words join the vocabulary (held-out text), if any.
    pub vocabulary: Option<String>,
    pub config: TrainConfig,
}

impl CacheKey for TrainSpec {
    fn cache_key(&self, key: &mut KeyWriter) {
        // Every setting, as the trainer serializes it: nothing that changes the model can stay
        // out of the key.
        let c = serde_json::to_value(&self.config).expect("the config serializes");
        for (k, v) in c.as_object().expect("a struct") {
            let v = match v {
                serde_json::Value::Bool(b) => ParamValue::Bool(*b),
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                    ParamValue::Int(n.as_i64().unwrap_or(i64::MAX))
                }
                serde_json::Value::Number(n) => ParamValue::Float(n.as_f64().unwrap_or(0.0)),
                other => ParamValue::Str(other.to_string()),
            };
            key.put(k.clone(), v);
        }
    }
}

impl Kind for TrainSpec {
    const NAME: &'static str = "train";
    const VERSION: u32 = 1;
    const KEYS: &'static [&'static str] = &[
        "dataset",
        "vocabulary",
        "architecture",
        "dim",
        "layers",
        "heads",
        "kv_heads",
        "hidden",
        "seqlen",
        "batch",
        "steps",
        "lr",
        "warmup",
        "weight_decay",
        "seed",
    ];

    fn read(f: &mut Fields) -> Option<Self> {
        read::read(f)
    }

    fn datasets(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![("dataset", self.dataset.as_str())];
        if let Some(d) = &self.vocabulary {
            v.push(("vocabulary", d.as_str()));
        }
        v
    }

    fn source_model(&self, _: &Pipeline) -> Option<ModelSize> {
        // A small model; its vocabulary is the corpus's words.
        Some(ModelSize::new(64 << 20, 64 << 20, 1, 8_192))
    }

    fn memory(&self, model: ModelSize) -> u64 {
        model.bytes * 2
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError> {
        run::run(ctx, self)
    }
}
