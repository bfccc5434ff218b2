//! The GPT-2 family (`GPT2LMHeadModel`): `transformer.wte` and `transformer.wpe`, blocks
//! `transformer.h.N` of `ln_1`, `attn.c_attn` (q, k and v fused), `attn.c_proj`, `ln_2`,
//! `mlp.c_fc`, `mlp.c_proj`, then `transformer.ln_f` and `lm_head` (tied to `wte`).
//!
//! Every linear layer of a block is a `Conv1D`: its weight is stored `in × out`. The fused
//! `c_attn` is one matrix of the `attention` group, as SparseGPT's and Wanda's own GPT-2 code
//! treat it: masks and statistics are per output row of its `3·hidden × hidden` nn.Linear view.

use crate::model::config::ConfigFile;
use std::path::Path;

use serde::Deserialize;

use super::Architecture;
use crate::model::config::{token_ids, Activation, Family, ModelConfig, TokenIds};
use crate::model::decoder::{ln_family_methods, LnLayout};
use crate::model::error::Result;
use crate::model::parts::Proj;

/// The GPT-2 family.
pub struct Gpt2Family;

pub const GPT2: Gpt2Family = Gpt2Family;

const EMBED: &str = "transformer.wte.weight";
const LM_HEAD: &str = "lm_head.weight";
const PREFIX: &str = "transformer.";

static LAYOUT: LnLayout = LnLayout {
    arch: &GPT2,
    positions: "transformer.wpe.weight",
    position_offset: 0,
    final_norm: "transformer.ln_f",
    norms: |l| {
        [
            format!("transformer.h.{l}.ln_1"),
            format!("transformer.h.{l}.ln_2"),
        ]
    },
    prescale_q: false,
    projections: None,
};

/// A block's linear layers in run order, with their module paths under `transformer.h.N`.
const LINEARS: [(Proj, &str); 4] = [
    (Proj::Qkv, "attn.c_attn"),
    (Proj::O, "attn.c_proj"),
    (Proj::Up, "mlp.c_fc"),
    (Proj::Down, "mlp.c_proj"),
];

impl Architecture for Gpt2Family {
    fn name(&self) -> &'static str {
        "gpt2"
    }

    fn conv1d(&self, name: &str) -> bool {
        name.starts_with("transformer.h.")
            && name.ends_with(".weight")
            && LINEARS
                .iter()
                .any(|(_, m)| name.ends_with(&format!(".{m}.weight")))
    }

    fn checkpoint_alias(&self, name: &str) -> Option<String> {
        name.strip_prefix(PREFIX).map(str::to_string)
    }

    ln_family_methods!(EMBED, LM_HEAD, LINEARS, LAYOUT, "transformer.h");
}

/// The serde mirror of a GPT-2 `config.json` (transformers' `GPT2Config`); absent keys take
/// that class's defaults.
#[derive(Debug, Deserialize)]
struct RawGpt2Config {
    vocab_size: Option<usize>,
    n_positions: Option<usize>,
    #[serde(alias = "hidden_size")]
    n_embd: Option<usize>,
    #[serde(alias = "num_hidden_layers")]
    n_layer: Option<usize>,
    #[serde(alias = "num_attention_heads")]
    n_head: Option<usize>,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    add_cross_attention: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
}

/// A GPT-2 `config.json` resolved; `path` is only for messages.
pub(crate) fn resolve(json: &str, path: &Path) -> Result<ModelConfig> {
    let file = ConfigFile(path);
    let raw: RawGpt2Config = file.parse(json)?;
    let hidden = file.positive("n_embd", raw.n_embd.unwrap_or(768))?;
    let heads = file.positive("n_head", raw.n_head.unwrap_or(12))?;
    if hidden % heads != 0 {
        return Err(file.err(
            "n_head",
            format!("{heads} does not divide n_embd = {hidden}"),
        ));
    }
    let vocab_size = file.positive("vocab_size", raw.vocab_size.unwrap_or(50257))?;
    let activation = Activation::parse(raw.activation_function.as_deref().unwrap_or("gelu_new"))
        .map_err(|m| file.err("activation_function", m))?;
    if raw.scale_attn_weights == Some(false) {
        return Err(file.err(
            "scale_attn_weights",
            "unscaled attention is not supported; it must be true".into(),
        ));
    }
    if raw.scale_attn_by_inverse_layer_idx == Some(true) {
        return Err(file.err(
            "scale_attn_by_inverse_layer_idx",
            "per-layer attention scaling is not supported; it must be false".into(),
        ));
    }
    if raw.add_cross_attention == Some(true) {
        return Err(file.err(
            "add_cross_attention",
            "cross-attention is not supported; it must be false".into(),
        ));
    }
    let eps = raw.layer_norm_epsilon.unwrap_or(1e-5);
    if !(eps.is_finite() && eps > 0.0) {
        return Err(file.err("layer_norm_epsilon", format!("{eps} must be > 0")));
    }
    let (bos_token_id, eos_token_ids) = token_ids(
        raw.bos_token_id.or(Some(TokenIds::One(50256))),
        raw.eos_token_id.or(Some(TokenIds::One(50256))),
        vocab_size,
        path,
    )?;
    Ok(ModelConfig {
        family: Family::Gpt2,
        hidden_size: hidden,
        intermediate_size: file.positive("n_inner", raw.n_inner.unwrap_or(4 * hidden))?,
        num_layers: file.positive("n_layer", raw.n_layer.unwrap_or(12))?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim: hidden / heads,
        vocab_size,
        rms_norm_eps: eps,
        layer_norm_eps: eps,
        activation,
        rope_theta: 10_000.0,
        rope_scaling: None,
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        bos_token_id,
        eos_token_ids,
        max_position_embeddings: file.positive("n_positions", raw.n_positions.unwrap_or(1024))?,
        sliding_window: None,
        post_norm: false,
        word_embed_dim: None,
        t5: None,
        encoder: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::{as_linear, is_conv1d, ModuleGroup};

    fn cfg() -> ModelConfig {
        ModelConfig::from_json(
            r#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 8,
                "n_layer": 2, "n_head": 2, "n_positions": 16, "vocab_size": 10,
                "bos_token_id": 0, "eos_token_id": 0}"#,
        )
        .unwrap()
    }

    #[test]
    fn config_takes_gpt2_keys_and_defaults() {
        let c = cfg();
        assert_eq!(c.family, Family::Gpt2);
        assert_eq!((c.hidden_size, c.intermediate_size, c.head_dim), (8, 32, 4));
        assert_eq!(c.activation, Activation::GeluTanh);
        assert!(c.tie_word_embeddings && c.qkv_bias && c.mlp_bias);
        assert_eq!(c.max_position_embeddings, 16);
        let e = ModelConfig::from_json(
            r#"{"model_type": "gpt2", "n_embd": 8, "n_head": 3, "vocab_size": 60000}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("n_head"), "{e}");
        let e = ModelConfig::from_json(
            r#"{"model_type": "gpt2", "n_embd": 8, "n_head": 2, "vocab_size": 60000,
                "activation_function": "swish"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("activation_function") && e.contains("swish"),
            "{e}"
        );
    }

    #[test]
    fn linears_are_conv1d_named_and_grouped() {
        let c = cfg();
        let layers = GPT2.linears(&c);
        let names: Vec<&str> = layers[..4].iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "transformer.h.0.attn.c_attn.weight",
                "transformer.h.0.attn.c_proj.weight",
                "transformer.h.0.mlp.c_fc.weight",
                "transformer.h.0.mlp.c_proj.weight",
            ]
        );
        use ModuleGroup::{Attention as A, LmHead, Mlp as M};
        let groups: Vec<ModuleGroup> = layers.iter().map(|l| l.group).collect();
        assert_eq!(groups, [A, A, M, M, A, A, M, M, LmHead]);
        for l in &layers[..8] {
            assert!(GPT2.conv1d(&l.name) && is_conv1d(&l.name), "{}", l.name);
            assert_eq!(GPT2.linear_id(&c, &l.name), l.block);
        }
        assert!(!is_conv1d(LM_HEAD) && !is_conv1d("transformer.h.0.attn.c_attn.bias"));
        // Stored in × out: c_attn is hidden × 3·hidden, c_fc hidden × 4·hidden.
        let shapes: std::collections::BTreeMap<String, Vec<usize>> =
            GPT2.tensors(&c).into_iter().collect();
        assert_eq!(shapes["transformer.h.1.attn.c_attn.weight"], [8, 24]);
        assert_eq!(shapes["transformer.h.1.attn.c_attn.bias"], [24]);
        assert_eq!(shapes["transformer.h.1.mlp.c_proj.weight"], [32, 8]);
        assert_eq!(shapes["transformer.wpe.weight"], [16, 8]);
        assert!(!shapes.contains_key(LM_HEAD));
        // The nn.Linear view is the transpose.
        let t = candle_core::Tensor::arange(0f32, 6., &candle_core::Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let lin = as_linear("transformer.h.0.mlp.c_fc.weight", &t).unwrap();
        assert_eq!(
            lin.to_vec2::<f32>().unwrap(),
            [[0., 3.], [1., 4.], [2., 5.]]
        );
        assert_eq!(GPT2.checkpoint_alias(EMBED).as_deref(), Some("wte.weight"));
    }
}
