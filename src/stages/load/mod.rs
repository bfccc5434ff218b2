//! `load`: a Hugging Face checkpoint from `models:`, its tensors' digests recorded.

mod read;
mod run;

pub(crate) use run::digests;

use super::{Kind, ModelSize, StageCtx, StageError, StageOutput};
use crate::cache::key::{CacheKey, KeyWriter};
use crate::key_value_as_str;
use crate::model::{ModelConfig, TokenizerSemantics};
use crate::pipeline::fields::Fields;
use crate::pipeline::spec::Pipeline;

#[derive(Clone, Debug, PartialEq)]
pub struct LoadSpec {
    /// Name of the entry in `models`.
    pub model: String,
    pub dtype: DType,
    /// How text becomes token ids for every stage that reads this model.
    pub tokenizer_semantics: TokenizerSemantics,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    Bf16,
}

impl DType {
    pub const NAMES: [&'static str; 3] = ["f32", "f16", "bf16"];

    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }
}

key_value_as_str!(DType, TokenizerSemantics);

impl CacheKey for LoadSpec {
    fn cache_key(&self, key: &mut KeyWriter) {
        key.put("dtype", self.dtype);
        // The default stays out, so keys from before the setting still hold.
        if !self.tokenizer_semantics.is_default() {
            key.put("tokenizer_semantics", self.tokenizer_semantics);
        }
    }
}

impl Kind for LoadSpec {
    const NAME: &'static str = "load";
    const VERSION: u32 = 1;
    const KEYS: &'static [&'static str] = &["model", "dtype", "tokenizer_semantics"];

    fn read(f: &mut Fields) -> Option<Self> {
        read::read(f)
    }

    fn models(&self) -> Vec<(&str, &'static [&'static str])> {
        // The files a non-default tokenizer reading also reads change the token ids.
        vec![(&self.model, self.tokenizer_semantics.extra_files())]
    }

    fn source_model(&self, pipeline: &Pipeline) -> Option<ModelSize> {
        let config = pipeline.models[&self.model].dir.join("config.json");
        Some(match ModelConfig::from_file(config) {
            Ok(c) => {
                let arch = c.architecture();
                let tensors = arch.tensors(&c);
                let block0 = || {
                    tensors
                        .iter()
                        .filter(|(n, _)| n.starts_with("model.layers.0."))
                };
                let block: u64 = block0()
                    .map(|(_, s)| s.iter().product::<usize>() as u64 * 4)
                    .sum();
                // Each matrix's input as if it had its own Hessian: q, k and v share one, which
                // this counts three times; an upper bound.
                let block_hessians = block0()
                    .filter_map(|(_, s)| match s[..] {
                        [_, cols] => Some(cols as u64 * cols as u64 * 4),
                        _ => None,
                    })
                    .sum();
                ModelSize {
                    width: c.hidden_size as u64,
                    block_hessians,
                    ..ModelSize::new(
                        arch.parameter_count(&c) * 4,
                        block,
                        c.num_layers as u64,
                        c.vocab_size as u64,
                    )
                }
            }
            // Unreadable configs fail the stage; until then, assume a large model.
            Err(_) => ModelSize::new(1 << 30, 1 << 30, 1, 32_000),
        })
    }

    fn memory(&self, model: ModelSize) -> u64 {
        // Tensor by tensor: the largest is at most a block's, or the embedding.
        model.block.max(model.bytes - model.block * model.layers) * 2
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError> {
        run::run(ctx, self)
    }
}
