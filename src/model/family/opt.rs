//! The OPT family (`OPTForCausalLM`): `model.decoder.embed_tokens` and `embed_positions`
//! (learned, position p at row p + 2), blocks `model.decoder.layers.N` of
//! `self_attn_layer_norm`, `self_attn.{q,k,v,out}_proj`, `final_layer_norm`, `fc1`, `fc2`, then
//! `model.decoder.final_layer_norm` and `lm_head` (tied to `embed_tokens`).
//!
//! Every published OPT: LayerNorm before each sublayer and a final LayerNorm (OPT-125m, 1.3b and
//! up), or, as OPT-350m is built, LayerNorm after each residual sum and none at the end
//! (`do_layer_norm_before: false`), with embeddings of `word_embed_proj_dim` (512) mapped to and
//! from the blocks' width by `model.decoder.project_in` / `project_out` (bias-free linear layers
//! outside the blocks: no module group selects them, and they stay dense).

use crate::model::config::ConfigFile;
use std::path::Path;

use serde::Deserialize;

use super::Architecture;
use crate::model::config::{token_ids, Activation, Family, ModelConfig, TokenIds};
use crate::model::decoder::{ln_family_methods, LnLayout};
use crate::model::error::Result;
use crate::model::parts::Proj;

/// The OPT family.
pub struct OptFamily;

pub const OPT: OptFamily = OptFamily;

const EMBED: &str = "model.decoder.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";

static LAYOUT: LnLayout = LnLayout {
    arch: &OPT,
    positions: "model.decoder.embed_positions.weight",
    position_offset: 2,
    final_norm: "model.decoder.final_layer_norm",
    norms: |l| {
        [
            format!("model.decoder.layers.{l}.self_attn_layer_norm"),
            format!("model.decoder.layers.{l}.final_layer_norm"),
        ]
    },
    prescale_q: true,
    projections: Some(("model.decoder.project_in", "model.decoder.project_out")),
};

/// A block's linear layers in run order, with their module paths under
/// `model.decoder.layers.N`.
const LINEARS: [(Proj, &str); 6] = [
    (Proj::Q, "self_attn.q_proj"),
    (Proj::K, "self_attn.k_proj"),
    (Proj::V, "self_attn.v_proj"),
    (Proj::O, "self_attn.out_proj"),
    (Proj::Up, "fc1"),
    (Proj::Down, "fc2"),
];

impl Architecture for OptFamily {
    fn name(&self) -> &'static str {
        "opt"
    }

    fn checkpoint_alias(&self, name: &str) -> Option<String> {
        // An `OPTModel` checkpoint names its tensors `decoder.…`.
        name.strip_prefix("model.").map(str::to_string)
    }

    ln_family_methods!(EMBED, LM_HEAD, LINEARS, LAYOUT, "model.decoder.layers");
}

/// The serde mirror of an OPT `config.json` (transformers' `OPTConfig`); absent keys take that
/// class's defaults.
#[derive(Debug, Deserialize)]
struct RawOptConfig {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    ffn_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    do_layer_norm_before: Option<bool>,
    #[serde(rename = "_remove_final_layer_norm")]
    remove_final_layer_norm: Option<bool>,
    word_embed_proj_dim: Option<usize>,
    num_attention_heads: Option<usize>,
    activation_function: Option<String>,
    layer_norm_elementwise_affine: Option<bool>,
    enable_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
}

/// An OPT `config.json` resolved; `path` is only for messages.
pub(crate) fn resolve(json: &str, path: &Path) -> Result<ModelConfig> {
    let file = ConfigFile(path);
    let raw: RawOptConfig = file.parse(json)?;
    let hidden = file.positive("hidden_size", raw.hidden_size.unwrap_or(768))?;
    let heads = file.positive("num_attention_heads", raw.num_attention_heads.unwrap_or(12))?;
    if hidden % heads != 0 {
        return Err(file.err(
            "num_attention_heads",
            format!("{heads} does not divide hidden_size = {hidden}"),
        ));
    }
    let post_norm = raw.do_layer_norm_before == Some(false);
    // transformers builds the final LayerNorm only for a pre-LayerNorm decoder that keeps it.
    if raw.remove_final_layer_norm == Some(true) && !post_norm {
        return Err(file.err(
            "_remove_final_layer_norm",
            "a pre-LayerNorm decoder without its final LayerNorm is not supported".into(),
        ));
    }
    let word_embed_dim = match raw.word_embed_proj_dim {
        Some(d) if d != hidden => Some(file.positive("word_embed_proj_dim", d)?),
        _ => None,
    };
    if raw.layer_norm_elementwise_affine == Some(false) {
        return Err(file.err(
            "layer_norm_elementwise_affine",
            "LayerNorms without weight and bias are not supported; it must be true".into(),
        ));
    }
    let vocab_size = file.positive("vocab_size", raw.vocab_size.unwrap_or(50272))?;
    let activation = Activation::parse(raw.activation_function.as_deref().unwrap_or("relu"))
        .map_err(|m| file.err("activation_function", m))?;
    let bias = raw.enable_bias.unwrap_or(true);
    let (bos_token_id, eos_token_ids) = token_ids(
        raw.bos_token_id.or(Some(TokenIds::One(2))),
        raw.eos_token_id.or(Some(TokenIds::One(2))),
        vocab_size,
        path,
    )?;
    // nn.LayerNorm's default epsilon: OPT's config has no key for it.
    let eps = 1e-5;
    Ok(ModelConfig {
        family: Family::Opt,
        hidden_size: hidden,
        intermediate_size: file.positive("ffn_dim", raw.ffn_dim.unwrap_or(3072))?,
        num_layers: file.positive("num_hidden_layers", raw.num_hidden_layers.unwrap_or(12))?,
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
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: bias,
        bos_token_id,
        eos_token_ids,
        max_position_embeddings: file.positive(
            "max_position_embeddings",
            raw.max_position_embeddings.unwrap_or(2048),
        )?,
        sliding_window: None,
        post_norm,
        word_embed_dim,
        t5: None,
        encoder: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::{is_conv1d, ModuleGroup};

    fn cfg(extra: &str) -> Result<ModelConfig> {
        ModelConfig::from_json(&format!(
            r#"{{"model_type": "opt", "architectures": ["OPTForCausalLM"], "hidden_size": 8,
                "num_hidden_layers": 2, "num_attention_heads": 2, "ffn_dim": 16,
                "max_position_embeddings": 16, "vocab_size": 10, "bos_token_id": 0,
                "eos_token_id": 0, "word_embed_proj_dim": 8{extra}}}"#
        ))
    }

    #[test]
    fn linears_are_named_grouped_and_stored_as_linear() {
        let c = cfg("").unwrap();
        assert_eq!(c.activation, Activation::Relu);
        let layers = OPT.linears(&c);
        assert_eq!(layers.len(), 2 * 6 + 1);
        assert_eq!(
            layers[3].name,
            "model.decoder.layers.0.self_attn.out_proj.weight"
        );
        assert_eq!(layers[11].name, "model.decoder.layers.1.fc2.weight");
        use ModuleGroup::{Attention as A, Mlp as M};
        let groups: Vec<ModuleGroup> = layers[..6].iter().map(|l| l.group).collect();
        assert_eq!(groups, [A, A, A, A, M, M]);
        assert!(layers.iter().all(|l| !is_conv1d(&l.name)));
        let shapes: std::collections::BTreeMap<String, Vec<usize>> =
            OPT.tensors(&c).into_iter().collect();
        assert_eq!(shapes["model.decoder.embed_positions.weight"], [18, 8]);
        assert_eq!(shapes["model.decoder.layers.0.fc1.weight"], [16, 8]);
        assert_eq!(shapes["model.decoder.layers.0.fc1.bias"], [16]);
        assert!(shapes.contains_key("model.decoder.layers.1.final_layer_norm.bias"));
        assert!(shapes.contains_key("model.decoder.final_layer_norm.weight"));
        // 2 blocks × (4·(64+8) + 2·(128+…)) and so on: the count is the shapes' sum.
        let total: u64 = shapes
            .values()
            .map(|s| s.iter().product::<usize>() as u64)
            .sum();
        assert_eq!(OPT.parameter_count(&c), total);
    }

    #[test]
    fn unsupported_variants_name_their_key() {
        for (extra, key) in [
            (
                r#", "_remove_final_layer_norm": true"#,
                "_remove_final_layer_norm",
            ),
            (
                r#", "layer_norm_elementwise_affine": false"#,
                "layer_norm_elementwise_affine",
            ),
        ] {
            let e = cfg(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let c = cfg(r#", "enable_bias": false"#).unwrap();
        assert!(!c.qkv_bias && !c.mlp_bias);
        assert!(!OPT.tensors(&c).iter().any(|(n, _)| n.ends_with("fc1.bias")));
    }

    #[test]
    fn opt_350m_has_projections_and_no_final_norm() {
        let c = ModelConfig::from_json(
            r#"{"model_type": "opt", "hidden_size": 8, "num_attention_heads": 2, "ffn_dim": 16,
                "num_hidden_layers": 2, "max_position_embeddings": 16,
                "do_layer_norm_before": false, "word_embed_proj_dim": 4, "vocab_size": 10,
                "bos_token_id": 0, "eos_token_id": 0}"#,
        )
        .unwrap();
        assert!(c.post_norm);
        assert_eq!(c.word_embed_dim, Some(4));
        let shapes: std::collections::BTreeMap<_, _> = OPT.tensors(&c).into_iter().collect();
        assert_eq!(shapes["model.decoder.embed_tokens.weight"], [10, 4]);
        assert_eq!(shapes["model.decoder.project_in.weight"], [8, 4]);
        assert_eq!(shapes["model.decoder.project_out.weight"], [4, 8]);
        assert!(!shapes.contains_key("model.decoder.final_layer_norm.weight"));
        // The blocks' linear layers and the head; the projections are in no group.
        let names: Vec<String> = OPT.linears(&c).into_iter().map(|l| l.name).collect();
        assert_eq!(names.len(), 2 * 6 + 1);
        assert!(!names.iter().any(|n| n.contains("project")));
    }
}
