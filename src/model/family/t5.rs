//! The T5 family (`T5ForConditionalGeneration`): an encoder-decoder, built by
//! [`crate::model::T5`].
//!
//! Tensors: `shared.weight` (the token embedding of both stacks), encoder blocks
//! `encoder.block.N.layer.0` (`layer_norm`, `SelfAttention.{q,k,v,o}`) and `layer.1`
//! (`layer_norm`, `DenseReluDense.*`), decoder blocks `decoder.block.N.layer.0` (self-attention),
//! `layer.1` (`layer_norm`, `EncDecAttention.{q,k,v,o}`) and `layer.2` (feed-forward), block 0 of
//! each stack holding its `SelfAttention.relative_attention_bias.weight` (shared by the stack's
//! blocks), `encoder.final_layer_norm.weight`, `decoder.final_layer_norm.weight`, and
//! `lm_head.weight` when the head is untied.
//!
//! Supported configs (`feed_forward_proj`):
//! - T5 v1.0: `relu` — `DenseReluDense.wi` then `wo`; head tied to `shared`;
//! - T5 v1.1 / Flan-T5: `gated-gelu` — `wo(gelu_new(wi_0 x) · wi_1 x)`; untied `lm_head`;
//! - also `gelu`, `gelu_new`, `silu` and their `gated-` forms.
//!
//! As transformers reads the config, the decoder's output is scaled by `d_model^-0.5` before the
//! head exactly when `tie_word_embeddings` is not `false` (v1.0 yes, v1.1 no). Norms are T5's RMS
//! LayerNorm (no mean, no bias); attention is not scaled by `d_kv^-0.5`; linear layers have no
//! bias.
//!
//! Tasks: knowledge probes (sentinel style), divergence (teacher-forced decoder distributions),
//! generation (the prompt as the source, the answer the decoder's greedy output) and multiple
//! choice (the context as the source, each choice scored as the decoder's output); the
//! evaluators' modules say how. Perplexity asks for a causal model and refuses a T5 with
//! [`crate::model::ModelError::WrongObjective`]: T5 has no left-to-right likelihood of a text.
//!
//! Blocks are numbered encoder first, then decoder: `num_layers` is `num_layers +
//! num_decoder_layers` of the config, and block `num_layers(encoder) + j` is decoder block `j`.
//! Roles: self-attention q, k, v, o are [`Proj::Q`] … [`Proj::O`], cross-attention
//! [`Proj::CrossQ`] … [`Proj::CrossO`], `wi` (or gated `wi_1`) [`Proj::Up`], gated `wi_0`
//! [`Proj::Gate`], `wo` [`Proj::Down`]. Groups: `attention` holds q, k, v and o (output
//! projection) of self- and cross-attention; `mlp` holds `wi` / `wi_0` / `wi_1` / `wo`; `all` is
//! both; `lm_head` is the head (untied from `shared` once changed).

use crate::model::config::ConfigFile;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Architecture;
use crate::model::config::{token_ids, Activation, Family, ModelConfig, TokenIds};
use crate::model::error::Result;
use crate::model::parts::{LinearId, Proj};

/// What a T5 config says beyond [`ModelConfig`]'s common fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct T5Shape {
    /// Encoder blocks (the config's `num_layers`).
    pub encoder_layers: usize,
    /// Decoder blocks (`num_decoder_layers`, default `num_layers`).
    pub decoder_layers: usize,
    /// `relative_attention_num_buckets`.
    pub num_buckets: usize,
    /// `relative_attention_max_distance`.
    pub max_distance: usize,
    /// A gated feed-forward (`wi_0`, `wi_1`) rather than `wi`.
    pub gated: bool,
    /// `decoder_start_token_id`: every decoder input starts with it.
    pub decoder_start: u32,
}

/// The T5 family. Its tensor names depend on the config's block layout ([`T5Layout`]).
#[derive(Debug)]
pub struct T5Family;

pub const T5: T5Family = T5Family;

const EMBED: &str = "shared.weight";
const LM_HEAD: &str = "lm_head.weight";

/// Where a T5 config's modules are: blocks below `encoder_layers` are the encoder's, the rest the
/// decoder's; a gated feed-forward has `wi_0` and `wi_1` rather than `wi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct T5Layout {
    encoder_layers: usize,
    gated: bool,
}

impl T5Layout {
    /// The layout of `cfg` (a T5 config; any other has no T5 blocks).
    pub(crate) fn of(cfg: &ModelConfig) -> Self {
        cfg.t5.map_or(
            T5Layout {
                encoder_layers: 0,
                gated: false,
            },
            |s| T5Layout {
                encoder_layers: s.encoder_layers,
                gated: s.gated,
            },
        )
    }

    fn is_encoder(&self, layer: usize) -> bool {
        layer < self.encoder_layers
    }

    /// Block `layer`'s module path: `encoder.block.N` or `decoder.block.N`.
    pub(crate) fn block_path(&self, layer: usize) -> String {
        if self.is_encoder(layer) {
            format!("encoder.block.{layer}")
        } else {
            format!("decoder.block.{}", layer - self.encoder_layers)
        }
    }

    /// The index of the feed-forward sublayer (`layer.1` in the encoder, `layer.2` in the
    /// decoder).
    fn ff_index(&self, layer: usize) -> usize {
        if self.is_encoder(layer) {
            1
        } else {
            2
        }
    }

    /// Block `layer`'s norm weights, in the order the block runs them.
    pub(crate) fn norm_names(&self, layer: usize) -> Vec<String> {
        let path = self.block_path(layer);
        (0..=self.ff_index(layer))
            .map(|i| format!("{path}.layer.{i}.layer_norm.weight"))
            .collect()
    }

    /// The relative attention bias of the stack block `layer` belongs to (held by its block 0).
    pub(crate) fn relative_bias_name(&self, encoder: bool) -> &'static str {
        if encoder {
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        } else {
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        }
    }

    /// The linear layers of block `layer`, in the order the block runs them.
    pub(crate) fn block_linears(&self, layer: usize) -> Vec<LinearId> {
        let mut roles = vec![Proj::Q, Proj::K, Proj::V, Proj::O];
        if !self.is_encoder(layer) {
            roles.extend([Proj::CrossQ, Proj::CrossK, Proj::CrossV, Proj::CrossO]);
        }
        if self.gated {
            roles.push(Proj::Gate);
        }
        roles.extend([Proj::Up, Proj::Down]);
        roles.into_iter().map(|p| LinearId::new(layer, p)).collect()
    }

    /// The weight name of a block's linear layer.
    pub(crate) fn weight_name(&self, id: LinearId) -> String {
        let ff = self.ff_index(id.layer);
        let module = match id.proj {
            Proj::Q => "layer.0.SelfAttention.q".to_string(),
            Proj::K => "layer.0.SelfAttention.k".to_string(),
            Proj::V => "layer.0.SelfAttention.v".to_string(),
            Proj::O => "layer.0.SelfAttention.o".to_string(),
            Proj::CrossQ => "layer.1.EncDecAttention.q".to_string(),
            Proj::CrossK => "layer.1.EncDecAttention.k".to_string(),
            Proj::CrossV => "layer.1.EncDecAttention.v".to_string(),
            Proj::CrossO => "layer.1.EncDecAttention.o".to_string(),
            Proj::Gate => format!("layer.{ff}.DenseReluDense.wi_0"),
            Proj::Up if self.gated => format!("layer.{ff}.DenseReluDense.wi_1"),
            Proj::Up => format!("layer.{ff}.DenseReluDense.wi"),
            Proj::Down => format!("layer.{ff}.DenseReluDense.wo"),
            Proj::Qkv => "?".to_string(),
        };
        format!("{}.{module}.weight", self.block_path(id.layer))
    }
}

/// A linear layer's shape (out, in) in `cfg`.
fn linear_shape(cfg: &ModelConfig, p: Proj) -> (usize, usize) {
    let (d, ff, inner) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim());
    match p {
        Proj::Q | Proj::K | Proj::V | Proj::CrossQ | Proj::CrossK | Proj::CrossV => (inner, d),
        Proj::O | Proj::CrossO => (d, inner),
        Proj::Gate | Proj::Up => (ff, d),
        Proj::Down => (d, ff),
        // T5 has no fused projection; never among its block linears.
        Proj::Qkv => (3 * inner, d),
    }
}

impl Architecture for T5Family {
    fn name(&self) -> &'static str {
        "t5"
    }

    fn objective(&self) -> crate::model::lm::Objective {
        crate::model::lm::Objective::Seq2Seq
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

    fn block_linears(&self, cfg: &ModelConfig, layer: usize) -> Vec<LinearId> {
        T5Layout::of(cfg).block_linears(layer)
    }

    fn weight_name(&self, cfg: &ModelConfig, id: LinearId) -> String {
        T5Layout::of(cfg).weight_name(id)
    }

    fn tensors(&self, cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        let (d, layout) = (cfg.hidden_size, T5Layout::of(cfg));
        let mut out = vec![(EMBED.to_string(), vec![cfg.vocab_size, d])];
        let buckets = cfg.t5.map_or(0, |s| s.num_buckets);
        for layer in 0..cfg.num_layers {
            if layer == 0 || layer == layout.encoder_layers {
                out.push((
                    layout
                        .relative_bias_name(layout.is_encoder(layer))
                        .to_string(),
                    vec![buckets, cfg.num_heads],
                ));
            }
            for id in layout.block_linears(layer) {
                let (rows, cols) = linear_shape(cfg, id.proj);
                out.push((layout.weight_name(id), vec![rows, cols]));
            }
            for norm in layout.norm_names(layer) {
                out.push((norm, vec![d]));
            }
        }
        out.push(("encoder.final_layer_norm.weight".to_string(), vec![d]));
        out.push(("decoder.final_layer_norm.weight".to_string(), vec![d]));
        if !cfg.tie_word_embeddings {
            out.push((LM_HEAD.to_string(), vec![cfg.vocab_size, d]));
        }
        out
    }

    fn tied_head_scale(&self, cfg: &ModelConfig) -> Option<f64> {
        cfg.tie_word_embeddings
            .then(|| (cfg.hidden_size as f64).powf(-0.5))
    }

    fn gguf_name(&self, _hf: &str) -> Option<String> {
        None
    }

    fn build(
        &self,
        cfg: &ModelConfig,
        weights: &crate::model::weights::TensorMap,
        int8: Vec<(String, crate::compress::dynint8::Int8Weight)>,
    ) -> Result<crate::model::lm::LanguageModel> {
        let mut model = crate::model::t5::T5::new(cfg, weights)?;
        for (name, weight) in int8 {
            model = model.with_dynamic_int8(&name, weight)?;
        }
        Ok(crate::model::lm::LanguageModel::Seq2Seq(Box::new(model)))
    }

    fn build_streamed(
        &self,
        cfg: &ModelConfig,
        source: std::sync::Arc<dyn crate::model::TensorSource>,
    ) -> Result<crate::model::lm::LanguageModel> {
        let model = crate::model::t5::T5::streamed(cfg, source)?;
        Ok(crate::model::lm::LanguageModel::Seq2Seq(Box::new(model)))
    }
}

/// The serde mirror of a T5 `config.json` (transformers' `T5Config`); absent keys take that
/// class's defaults.
#[derive(Debug, Deserialize)]
struct RawT5Config {
    vocab_size: Option<usize>,
    d_model: Option<usize>,
    d_kv: Option<usize>,
    d_ff: Option<usize>,
    num_layers: Option<usize>,
    num_decoder_layers: Option<usize>,
    num_heads: Option<usize>,
    relative_attention_num_buckets: Option<usize>,
    relative_attention_max_distance: Option<usize>,
    feed_forward_proj: Option<String>,
    tie_word_embeddings: Option<bool>,
    layer_norm_epsilon: Option<f64>,
    decoder_start_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    n_positions: Option<usize>,
    is_encoder_decoder: Option<bool>,
}

/// `feed_forward_proj` → (gated, activation), as transformers reads it (`gated-gelu` is
/// `gelu_new`, the tanh approximation).
fn feed_forward(name: &str) -> std::result::Result<(bool, Activation), String> {
    let (gated, act) = match name.split_once('-') {
        Some(("gated", act)) => (true, act),
        None => (false, name),
        Some(_) => return Err(format!("`{name}` is not `gated-<act>` or `<act>`")),
    };
    let activation = match (gated, act) {
        (true, "gelu") => Activation::GeluTanh,
        (_, "relu") => Activation::Relu,
        (_, "gelu") => Activation::GeluErf,
        (_, "gelu_new" | "gelu_pytorch_tanh") => Activation::GeluTanh,
        (_, "silu") => Activation::Silu,
        (_, other) => {
            return Err(format!(
                "activation `{other}` is not supported; expected relu, gelu, gelu_new or silu"
            ))
        }
    };
    Ok((gated, activation))
}

/// A T5 `config.json` resolved; `path` is only for messages.
pub(crate) fn resolve(json: &str, path: &Path) -> Result<ModelConfig> {
    let file = ConfigFile(path);
    let raw: RawT5Config = file.parse(json)?;
    if raw.is_encoder_decoder == Some(false) {
        return Err(file.err(
            "is_encoder_decoder",
            "an encoder-only T5 (T5EncoderModel) is not supported; it must be true".into(),
        ));
    }
    let d_model = file.positive("d_model", raw.d_model.unwrap_or(512))?;
    let encoder_layers = file.positive("num_layers", raw.num_layers.unwrap_or(6))?;
    let decoder_layers = file.positive(
        "num_decoder_layers",
        raw.num_decoder_layers.unwrap_or(encoder_layers),
    )?;
    let vocab_size = file.positive("vocab_size", raw.vocab_size.unwrap_or(32128))?;
    let (gated, activation) = feed_forward(raw.feed_forward_proj.as_deref().unwrap_or("relu"))
        .map_err(|m| file.err("feed_forward_proj", m))?;
    let eps = raw.layer_norm_epsilon.unwrap_or(1e-6);
    if !(eps.is_finite() && eps > 0.0) {
        return Err(file.err("layer_norm_epsilon", format!("{eps} must be > 0")));
    }
    let pad = raw.pad_token_id.unwrap_or(0);
    let decoder_start = raw.decoder_start_token_id.unwrap_or(pad);
    if decoder_start as usize >= vocab_size {
        return Err(file.err(
            "decoder_start_token_id",
            format!("id {decoder_start} is outside the vocabulary (vocab_size = {vocab_size})"),
        ));
    }
    let (bos_token_id, eos_token_ids) = token_ids(
        None,
        raw.eos_token_id.or(Some(TokenIds::One(1))),
        vocab_size,
        path,
    )?;
    let heads = file.positive("num_heads", raw.num_heads.unwrap_or(8))?;
    Ok(ModelConfig {
        family: Family::T5,
        hidden_size: d_model,
        intermediate_size: file.positive("d_ff", raw.d_ff.unwrap_or(2048))?,
        num_layers: encoder_layers + decoder_layers,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim: file.positive("d_kv", raw.d_kv.unwrap_or(64))?,
        vocab_size,
        rms_norm_eps: eps,
        layer_norm_eps: eps,
        activation,
        rope_theta: 10_000.0,
        rope_scaling: None,
        // transformers ties (and scales the decoder's output) unless this is explicitly false.
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        bos_token_id,
        eos_token_ids,
        // T5 has no position limit of its own (relative positions); this is the configured
        // `n_positions`, which sizes nothing in the model.
        max_position_embeddings: file.positive("n_positions", raw.n_positions.unwrap_or(512))?,
        sliding_window: None,
        post_norm: false,
        word_embed_dim: None,
        encoder: None,
        t5: Some(T5Shape {
            encoder_layers,
            decoder_layers,
            num_buckets: file.positive(
                "relative_attention_num_buckets",
                raw.relative_attention_num_buckets.unwrap_or(32),
            )?,
            max_distance: file.positive(
                "relative_attention_max_distance",
                raw.relative_attention_max_distance.unwrap_or(128),
            )?,
            gated,
            decoder_start,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::ModuleGroup;

    fn cfg(extra: &str) -> Result<ModelConfig> {
        ModelConfig::from_json(&format!(
            r#"{{"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
                "d_model": 8, "d_kv": 2, "d_ff": 16, "num_layers": 2, "num_decoder_layers": 1,
                "num_heads": 3, "vocab_size": 10, "relative_attention_num_buckets": 4{extra}}}"#
        ))
    }

    #[test]
    fn linears_are_named_in_run_order_and_grouped() {
        let c =
            cfg(r#", "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false"#).unwrap();
        assert_eq!(c.num_layers, 3);
        assert_eq!(c.activation, Activation::GeluTanh);
        let arch = c.architecture();
        let layers = arch.linears(&c);
        // 2 encoder blocks × 7, 1 decoder block × 11, the head.
        assert_eq!(layers.len(), 2 * 7 + 11 + 1);
        assert_eq!(
            layers[4].name,
            "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
        );
        assert_eq!(
            layers[5].name,
            "encoder.block.0.layer.1.DenseReluDense.wi_1.weight"
        );
        assert_eq!(
            layers[14 + 5].name,
            "decoder.block.0.layer.1.EncDecAttention.k.weight"
        );
        assert_eq!(
            layers[14 + 10].name,
            "decoder.block.0.layer.2.DenseReluDense.wo.weight"
        );
        assert_eq!(layers[25].name, "lm_head.weight");
        use ModuleGroup::{Attention as A, Mlp as M};
        let groups: Vec<ModuleGroup> = layers[14..25].iter().map(|l| l.group).collect();
        assert_eq!(groups, [A, A, A, A, A, A, A, A, M, M, M]);
        let shapes: std::collections::BTreeMap<String, Vec<usize>> =
            arch.tensors(&c).into_iter().collect();
        // q is heads·d_kv = 6 wide, which need not be d_model.
        assert_eq!(
            shapes["encoder.block.1.layer.0.SelfAttention.q.weight"],
            [6, 8]
        );
        assert_eq!(
            shapes["decoder.block.0.layer.1.EncDecAttention.o.weight"],
            [8, 6]
        );
        assert_eq!(
            shapes["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
            [4, 3]
        );
        assert!(!shapes
            .contains_key("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"));
        assert!(shapes.contains_key("decoder.block.0.layer.2.layer_norm.weight"));
        assert!(shapes.contains_key("lm_head.weight"));
        // Every name is one the family resolves back to its id.
        for l in layers.iter().filter(|l| l.block.is_some()) {
            assert_eq!(arch.linear_id(&c, &l.name), l.block);
        }
    }

    #[test]
    fn v1_0_is_relu_tied_and_ungated() {
        let c = cfg("").unwrap();
        assert_eq!(c.activation, Activation::Relu);
        assert!(c.tie_word_embeddings);
        let names: Vec<String> = c
            .architecture()
            .linears(&c)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert!(names.contains(&"encoder.block.1.layer.1.DenseReluDense.wi.weight".to_string()));
        assert!(!names.iter().any(|n| n.contains("wi_0")));
        assert!(!c
            .architecture()
            .tensors(&c)
            .iter()
            .any(|(n, _)| n == "lm_head.weight"));
    }

    #[test]
    fn bad_configs_name_their_key() {
        for (extra, key) in [
            (
                r#", "feed_forward_proj": "gated-swish""#,
                "feed_forward_proj",
            ),
            (r#", "feed_forward_proj": "a-b-c""#, "feed_forward_proj"),
            (
                r#", "decoder_start_token_id": 99"#,
                "decoder_start_token_id",
            ),
            (r#", "is_encoder_decoder": false"#, "is_encoder_decoder"),
            (r#", "num_heads": 0"#, "num_heads"),
        ] {
            let e = cfg(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }
}
