//! The LLaMA family's layout (LLaMA 1/2/3, Mistral, Qwen2, SmolLM): `model.embed_tokens`,
//! decoder blocks of seven linear layers under `model.layers.N`, `model.norm` and `lm_head`.

use super::Architecture;
use crate::compress::dynint8::Int8Weight;
use crate::model::config::ModelConfig;
use crate::model::error::Result;
use crate::model::llama::Llama;
use crate::model::lm::LanguageModel;
use crate::model::parts::{LinearId, Proj};
use crate::model::weights::TensorMap;

/// The LLaMA family.
pub struct LlamaFamily;

pub const LLAMA: LlamaFamily = LlamaFamily;

pub(crate) const EMBED: &str = "model.embed_tokens.weight";
pub(crate) const NORM: &str = "model.norm.weight";
pub(crate) const LM_HEAD: &str = "lm_head.weight";

impl Architecture for LlamaFamily {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn embed_name(&self) -> &'static str {
        EMBED
    }

    fn head_name(&self) -> &'static str {
        LM_HEAD
    }

    fn tied(&self, cfg: &ModelConfig) -> bool {
        cfg.tie_word_embeddings
    }

    fn block_linears(&self, _cfg: &ModelConfig, layer: usize) -> Vec<LinearId> {
        Proj::ALL.map(|p| LinearId::new(layer, p)).to_vec()
    }

    fn weight_name(&self, _cfg: &ModelConfig, id: LinearId) -> String {
        id.weight_name()
    }

    fn linear_id(&self, _cfg: &ModelConfig, name: &str) -> Option<LinearId> {
        LinearId::from_weight_name(name)
    }

    fn tensors(&self, cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
        let mut out = vec![(EMBED.to_string(), vec![cfg.vocab_size, h])];
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));
            for (proj, rows, cols, bias) in [
                ("q_proj", q, h, cfg.qkv_bias),
                ("k_proj", kv, h, cfg.qkv_bias),
                ("v_proj", kv, h, cfg.qkv_bias),
                ("o_proj", h, q, cfg.o_bias),
            ] {
                push(format!("{p}.self_attn.{proj}.weight"), vec![rows, cols]);
                if bias {
                    push(format!("{p}.self_attn.{proj}.bias"), vec![rows]);
                }
            }
            for (proj, rows, cols) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)]
            {
                push(format!("{p}.mlp.{proj}.weight"), vec![rows, cols]);
                if cfg.mlp_bias {
                    push(format!("{p}.mlp.{proj}.bias"), vec![rows]);
                }
            }
            push(format!("{p}.input_layernorm.weight"), vec![h]);
            push(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        }
        out.push((NORM.to_string(), vec![h]));
        if !self.tied(cfg) {
            out.push((LM_HEAD.to_string(), vec![cfg.vocab_size, h]));
        }
        out
    }

    fn gguf_name(&self, hf: &str) -> Option<String> {
        match hf {
            EMBED => return Some("token_embd.weight".into()),
            NORM => return Some("output_norm.weight".into()),
            LM_HEAD => return Some("output.weight".into()),
            _ => {}
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (module, kind) = rest.rsplit_once('.')?;
        let short = match module {
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            _ => return None,
        };
        Some(format!("blk.{layer}.{short}.{kind}"))
    }

    fn build(
        &self,
        cfg: &ModelConfig,
        weights: &TensorMap,
        int8: Vec<(String, Int8Weight)>,
    ) -> Result<LanguageModel> {
        let mut model = Llama::new(cfg, weights)?;
        for (name, weight) in int8 {
            model = model.with_dynamic_int8(&name, weight)?;
        }
        Ok(LanguageModel::Causal(Box::new(model)))
    }

    fn build_streamed(
        &self,
        cfg: &ModelConfig,
        source: std::sync::Arc<dyn crate::model::TensorSource>,
    ) -> Result<LanguageModel> {
        Ok(LanguageModel::Causal(Box::new(Llama::streamed(
            cfg, source,
        )?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::{tensor_or_tied, ModuleGroup};
    use crate::model::{load_weights, Checkpoint};

    fn cfg(tied: bool) -> ModelConfig {
        ModelConfig::from_json(&format!(
            r#"{{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                "vocab_size": 10, "tie_word_embeddings": {tied}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn linears_are_named_and_grouped_block_by_block_then_the_head() {
        let layers = LLAMA.linears(&cfg(false));
        assert_eq!(layers.len(), 2 * 7 + 1);
        let names: Vec<&str> = layers[..7].iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.k_proj.weight",
                "model.layers.0.self_attn.v_proj.weight",
                "model.layers.0.self_attn.o_proj.weight",
                "model.layers.0.mlp.gate_proj.weight",
                "model.layers.0.mlp.up_proj.weight",
                "model.layers.0.mlp.down_proj.weight",
            ]
        );
        let groups: Vec<ModuleGroup> = layers[7..].iter().map(|l| l.group).collect();
        use ModuleGroup::{Attention as A, LmHead, Mlp as M};
        assert_eq!(groups, [A, A, A, A, M, M, M, LmHead]);
        let head = layers.last().unwrap();
        assert_eq!((head.name.as_str(), head.block), ("lm_head.weight", None));
        assert_eq!(layers[8].block, Some(LinearId::new(1, Proj::K)));
        // Every block linear is a tensor of the model; the head is one unless tied.
        let tensors: Vec<String> = LLAMA.tensors(&cfg(true)).into_iter().map(|t| t.0).collect();
        for l in &layers[..14] {
            assert!(tensors.contains(&l.name), "{}", l.name);
        }
        assert!(!tensors.contains(&LM_HEAD.to_string()));
        assert_eq!(LLAMA.embed_name(), "model.embed_tokens.weight");
    }

    #[test]
    fn selectors_take_their_groups() {
        use ModuleGroup::*;
        assert!(All.selects(Attention) && All.selects(Mlp) && !All.selects(LmHead));
        assert!(Mlp.selects(Mlp) && !Mlp.selects(Attention));
        assert!(LmHead.selects(LmHead) && !Attention.selects(LmHead));
    }

    #[test]
    fn parameter_count_counts_every_tensor_once() {
        // Per block: q 8×8, k and v 4×8, o 8×8, gate/up/down 16×8, two norms of 8.
        let block = 64 + 32 + 32 + 64 + 3 * 128 + 16;
        let (embed, norm) = (10 * 8, 8);
        assert_eq!(LLAMA.parameter_count(&cfg(true)), 2 * block + embed + norm);
        assert_eq!(
            LLAMA.parameter_count(&cfg(false)),
            2 * block + 2 * embed + norm
        );
    }

    /// The count from the config equals the elements of the checkpoint's tensors, summed from
    /// the safetensors header's shapes.
    #[test]
    fn parameter_count_of_stories260k_is_its_checkpoints() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K");
        let ckpt = Checkpoint::resolve(&dir).unwrap();
        let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
        let crate::model::WeightFiles::Safetensors(file) = &ckpt.weights else {
            panic!("stories260K ships safetensors");
        };
        let bytes = std::fs::read(file).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
        let elements: u64 = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(name, _)| *name != "__metadata__")
            .map(|(_, entry)| {
                let shape = entry["shape"].as_array().unwrap();
                shape.iter().map(|d| d.as_u64().unwrap()).product::<u64>()
            })
            .sum();
        assert_eq!(LLAMA.parameter_count(&cfg), elements);
        // And the tied head reads as the embedding.
        let weights = load_weights(
            &ckpt,
            &cfg,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let head = tensor_or_tied(&weights, LLAMA.head_name()).unwrap();
        assert_eq!(head.dims(), weights[EMBED].dims());
    }
}
