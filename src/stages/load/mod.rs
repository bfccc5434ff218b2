//! `load`: a Hugging Face checkpoint from `models:`, its tensors' digests recorded.

mod read;
mod run;

pub(crate) use run::digests;

use super::{Kind, ModelSize, StageCtx, StageError, StageOutput};
use crate::cache::key::{CacheKey, KeyWriter};
use crate::key_value_as_str;
use crate::model::{Architecture, ModelConfig, Objective, TokenizerSemantics};
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
            Ok(c) => model_size(&c),
            // Unreadable configs fail the stage; until then, assume a large model.
            Err(_) => ModelSize::new(1 << 30, 1 << 30, 1, 32_000),
        })
    }

    fn memory(&self, model: ModelSize) -> u64 {
        // Tensor by tensor: the largest is at most a block's, or the embedding.
        model.block.max(model.outside) * 2
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError> {
        run::run(ctx, self)
    }
}

/// The name prefix of block `layer`'s tensors: the longest common prefix of its linear layers'
/// weight names, up to and with its last `.` (`model.layers.3.`, `transformer.h.3.`,
/// `bert.encoder.layer.3.`, `distilbert.transformer.layer.3.`, `encoder.block.3.layer.`,
/// `decoder.block.1.layer.`). It ends after the block's number, so block 1's does not match
/// block 10's tensors.
fn block_prefix(arch: &dyn Architecture, c: &ModelConfig, layer: usize) -> Option<String> {
    let names: Vec<String> = arch
        .block_linears(c, layer)
        .into_iter()
        .map(|id| arch.weight_name(c, id))
        .collect();
    let first = names.first()?;
    let common = names.iter().skip(1).fold(first.len(), |n, name| {
        first
            .bytes()
            .zip(name.bytes())
            .take(n)
            .take_while(|(a, b)| a == b)
            .count()
    });
    let cut = first[..common].rfind('.')? + 1;
    Some(first[..cut].to_string())
}

/// The sizes the memory estimates read, from what the config implies: every family's blocks are
/// found by their tensors' names ([`block_prefix`]), each linear layer's Hessian is columns² f32
/// (q, k and v share one input, which this counts three times: an upper bound), and an
/// encoder-decoder's calibration tokens carry two hidden states ([`ModelSize::width`]).
pub(crate) fn model_size(c: &ModelConfig) -> ModelSize {
    let arch = c.architecture();
    let tensors = arch.tensors(c);
    let mut blocks = Vec::with_capacity(c.num_layers);
    let mut hessians = Vec::with_capacity(c.num_layers);
    for layer in 0..c.num_layers {
        let prefix = block_prefix(arch, c, layer).unwrap_or_default();
        let in_block = tensors
            .iter()
            .filter(|(n, _)| !prefix.is_empty() && n.starts_with(&prefix));
        blocks.push(
            in_block
                .map(|(_, s)| s.iter().product::<usize>() as u64 * 4)
                .sum::<u64>(),
        );
        hessians.push(
            arch.block_linears(c, layer)
                .into_iter()
                .filter_map(|id| {
                    let name = arch.weight_name(c, id);
                    let (_, shape) = tensors.iter().find(|(n, _)| *n == name)?;
                    // A Conv1D weight is stored in × out; nn.Linear's is out × in.
                    let cols = if arch.conv1d(&name) {
                        shape[0]
                    } else {
                        shape[1]
                    };
                    Some(cols as u64 * cols as u64 * 4)
                })
                .sum::<u64>(),
        );
    }
    let bytes = arch.parameter_count(c) * 4;
    let block = blocks.iter().copied().max().unwrap_or(0);
    let streams = match arch.objective() {
        Objective::Seq2Seq => 2,
        Objective::Causal | Objective::Masked => 1,
    };
    ModelSize {
        outside: bytes.saturating_sub(blocks.iter().sum()),
        width: c.hidden_size as u64 * streams,
        block_hessians: hessians.iter().copied().max().unwrap_or(0),
        hessians: hessians.iter().sum(),
        ..ModelSize::new(bytes, block, c.num_layers as u64, c.vocab_size as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &str) -> ModelConfig {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        ModelConfig::from_file(dir.join(path).join("config.json")).unwrap()
    }

    #[test]
    fn block_prefixes_end_after_the_block_number() {
        let prefix = |path: &str, layer| {
            let c = config(path);
            block_prefix(c.architecture(), &c, layer).unwrap()
        };
        assert_eq!(prefix("encoders/bert", 1), "bert.encoder.layer.1.");
        assert_eq!(prefix("encoders/roberta", 1), "roberta.encoder.layer.1.");
        assert_eq!(
            prefix("encoders/distilbert", 0),
            "distilbert.transformer.layer.0."
        );
        assert_eq!(prefix("t5/v1_1", 1), "encoder.block.1.layer.");
        // Blocks are numbered encoder first: block 2 is decoder block 0.
        assert_eq!(prefix("t5/v1_1", 2), "decoder.block.0.layer.");
    }

    /// The tiny BERT of tests/fixtures/encoders (hidden 32, intermediate 64, 2 layers,
    /// vocabulary 64, 32 positions, 2 token types), by hand.
    #[test]
    fn bert_sizes_by_hand() {
        let m = model_size(&config("encoders/bert"));
        // q, k, v, attention output: 32×32 + 32 each; intermediate 64×32 + 64; output
        // 32×64 + 32; two LayerNorms of 2×32.
        let block = 4 * (32 * 32 + 32) + (64 * 32 + 64) + (32 * 64 + 32) + 2 * 2 * 32;
        assert_eq!(block, 8544);
        assert_eq!(m.block, 8544 * 4);
        assert_eq!(m.layers, 2);
        // q, k, v, o and intermediate read 32 columns, output 64.
        assert_eq!(m.block_hessians, (5 * 32 * 32 + 64 * 64) * 4);
        assert_eq!(m.hessians, 2 * m.block_hessians);
        assert_eq!(m.outside, m.bytes - 2 * 8544 * 4);
        assert_eq!(m.width, 32);
        assert_eq!(m.vocab, 64);
        // Streamed in a budget smaller than twice the model: outside the blocks plus one.
        let s = m.within(m.bytes);
        assert_eq!(s.held, m.outside + m.block);
    }

    /// The tiny T5 v1.0 of tests/fixtures/t5 (d_model 32, 4 heads of 8, d_ff 48, ReLU, 2 encoder
    /// and 3 decoder blocks, 8 buckets, vocabulary 64, tied head), by hand.
    #[test]
    fn t5_sizes_by_hand() {
        let m = model_size(&config("t5/v1_0"));
        let (attn, ff, norm, bias) = (4 * 32 * 32, 2 * 48 * 32, 32, 8 * 4);
        let encoder = attn + ff + 2 * norm;
        let decoder = 2 * attn + ff + 3 * norm;
        assert_eq!((encoder, decoder), (7232, 11360));
        // The largest block: decoder block 0, which holds the decoder's bias table.
        assert_eq!(m.block, (decoder + bias) * 4);
        assert_eq!(m.layers, 5);
        let blocks = 2 * encoder + 3 * decoder + 2 * bias;
        // Outside: the shared embedding and the two final norms (the head is tied).
        assert_eq!(m.outside, (64 * 32 + 2 * 32) * 4);
        assert_eq!(m.bytes, (blocks + 64 * 32 + 2 * 32) * 4);
        // Hessians: encoder q, k, v, o and wi read 32 columns, wo 48; the decoder adds
        // cross-attention's four (32 columns each).
        let enc_h = (5 * 32 * 32 + 48 * 48) * 4;
        let dec_h = (9 * 32 * 32 + 48 * 48) * 4;
        assert_eq!(m.block_hessians, dec_h);
        assert_eq!(m.hessians, 2 * enc_h + 3 * dec_h);
        // A calibration token is an encoder and a decoder position: 2 × 32 f32.
        assert_eq!(m.width, 64);
        let m = ModelSize {
            calib_tokens: 8 * 16,
            ..m.within(1 << 30)
        };
        assert_eq!(m.calib_hidden(), 8 * 16 * 64 * 4);
        // Held whole: far under half the budget.
        assert_eq!(m.held, m.bytes);
    }

    /// Decoders' blocks are found by their names too (GPT-2's `transformer.h.N.`, OPT's
    /// `model.decoder.layers.N.`), all of one size.
    #[test]
    fn decoder_blocks_are_found_too() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut found = 0;
        for family in ["families/gpt2", "families/opt", "families/opt350m"] {
            let path = dir.join(family).join("config.json");
            if !path.exists() {
                continue;
            }
            let m = model_size(&ModelConfig::from_file(path).unwrap());
            assert!(m.block > 0 && m.block_hessians > 0, "{family}: {m:?}");
            assert_eq!(m.outside + m.layers * m.block, m.bytes, "{family}");
            found += 1;
        }
        assert!(found > 0);
    }
}
