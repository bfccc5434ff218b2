//! BERT-style masked-LM encoders: `BertForMaskedLM`, `RobertaForMaskedLM`,
//! `DistilBertForMaskedLM` and `AlbertForMaskedLM`, run by [`crate::model::encoder::Encoder`].
//!
//! Names, as `save_pretrained` writes them:
//! - BERT: `bert.embeddings.{word,position,token_type}_embeddings`, `bert.embeddings.LayerNorm`,
//!   blocks `bert.encoder.layer.N.` of `attention.self.{query,key,value}`,
//!   `attention.output.dense`, `attention.output.LayerNorm`, `intermediate.dense`,
//!   `output.dense`, `output.LayerNorm`; head `cls.predictions.transform.dense`,
//!   `cls.predictions.transform.LayerNorm`, `cls.predictions.decoder` (tied to the word
//!   embedding) with bias `cls.predictions.bias`;
//! - RoBERTa: the same under `roberta.`, head `lm_head.dense`, `lm_head.layer_norm`,
//!   `lm_head.decoder` with bias `lm_head.bias` (the head's activation is exact GELU whatever
//!   `hidden_act` says); position p reads row `pad_token_id + 1 + p` of the position table, so
//!   `max_position_embeddings` 514 leaves 512 usable positions;
//! - DistilBERT: `distilbert.embeddings.{word,position}_embeddings` (no token types),
//!   `distilbert.embeddings.LayerNorm`, blocks `distilbert.transformer.layer.N.` of
//!   `attention.{q,k,v,out}_lin`, `sa_layer_norm`, `ffn.lin1`, `ffn.lin2`, `output_layer_norm`;
//!   head `vocab_transform`, `vocab_layer_norm`, `vocab_projector` (tied, with its bias); config
//!   keys `dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`; LayerNorm epsilon 1e-12;
//! - ALBERT: `albert.embeddings.*` of width `embedding_size` and their LayerNorm, then
//!   `albert.encoder.embedding_hidden_mapping_in` into the blocks' width (in no group, never
//!   compressed); stored layers `albert.encoder.albert_layer_groups.G.albert_layers.I.` of
//!   `attention.{query,key,value,dense}`, `attention.LayerNorm`, `ffn`, `ffn_output`,
//!   `full_layer_layer_norm`; head `predictions.dense` (hidden → embedding width),
//!   `predictions.LayerNorm`, `predictions.decoder` (tied) with bias `predictions.bias`.
//!
//! ALBERT's layers share weights: `num_hidden_layers` layers each run their group's
//! `inner_group_num` stored layers (layer i runs group `int(i / (layers / groups))`, as
//! transformers computes it), so the model runs `layers × inner` blocks from `groups × inner`
//! stored layers (albert-base-v2: 12 blocks, one stored layer). A shared weight is one linear
//! layer, listed once, at the first block that runs it: pruning or quantizing it changes it in
//! every block that runs it, and the model's sparsity counts it once. Wanda, SparseGPT and GPTQ
//! compress it from its inputs in every block that runs it (statistics summed over them, as a
//! hook on the shared module collects them in PyTorch); `calibration_mode: sequential` is
//! refused, since it would compress a shared weight once per block.
//!
//! Groups: `attention` is query, key and value, as Study K of REFERENCE.md prunes an encoder's
//! attention; the attention output dense (`attention.output.dense`, `out_lin`, ALBERT's
//! `attention.dense`) is its own group, `attention_output` (selectable on its own, and part of
//! `all`); `mlp` is `intermediate.dense` + `output.dense` (`lin1`, `lin2`; ALBERT's `ffn`,
//! `ffn_output`); `lm_head` is the MLM decoder; `all` is every block linear. The head's transform dense layer is in no group (it is
//! neither a block linear nor the decoder) and is never compressed.
//!
//! A checkpoint that spells LayerNorm parameters `gamma` / `beta` (older BERT uploads) is read
//! under `weight` / `bias`. Refused with the key that rules them out: relative position
//! embeddings (`position_embedding_type`), decoder/cross-attention use (`is_decoder`,
//! `add_cross_attention`), DistilBERT's sinusoidal positions (`sinusoidal_pos_embds`). Blocks
//! stream from disk as the decoders' do (a shared layer is read again for each block that runs
//! it unless it is the one held).

use crate::model::config::ConfigFile;
use std::path::Path;

use serde::Deserialize;

use super::{Architecture, ModuleGroup};
use crate::compress::dynint8::Int8Weight;
use crate::model::config::{
    token_ids, Activation, EncoderConfig, Family, LayerSharing, ModelConfig, TokenIds,
};
use crate::model::encoder::{EncLayout, Encoder};
use crate::model::error::Result;
use crate::model::lm::LanguageModel;
use crate::model::parts::{LinearId, Proj};
use crate::model::weights::TensorMap;

const BERT_LINEARS: [(Proj, &str); 6] = [
    (Proj::Q, "attention.self.query"),
    (Proj::K, "attention.self.key"),
    (Proj::V, "attention.self.value"),
    (Proj::O, "attention.output.dense"),
    (Proj::Up, "intermediate.dense"),
    (Proj::Down, "output.dense"),
];

const BERT_NORMS: [&str; 2] = ["attention.output.LayerNorm", "output.LayerNorm"];

/// `BertForMaskedLM`.
pub const BERT: EncLayout = EncLayout {
    name: "bert",
    word: "bert.embeddings.word_embeddings.weight",
    positions: "bert.embeddings.position_embeddings.weight",
    token_types: Some("bert.embeddings.token_type_embeddings.weight"),
    embed_norm: "bert.embeddings.LayerNorm",
    embed_proj: None,
    blocks: "bert.encoder.layer",
    inner: None,
    linears: &BERT_LINEARS,
    norms: BERT_NORMS,
    head_dense: "cls.predictions.transform.dense",
    head_norm: "cls.predictions.transform.LayerNorm",
    head_bias: "cls.predictions.bias",
    decoder: "cls.predictions.decoder.weight",
    head_gelu: false,
    untied_extras: &[("cls.predictions.decoder.bias", "cls.predictions.bias")],
};

/// `RobertaForMaskedLM`.
pub const ROBERTA: EncLayout = EncLayout {
    name: "roberta",
    word: "roberta.embeddings.word_embeddings.weight",
    positions: "roberta.embeddings.position_embeddings.weight",
    token_types: Some("roberta.embeddings.token_type_embeddings.weight"),
    embed_norm: "roberta.embeddings.LayerNorm",
    embed_proj: None,
    blocks: "roberta.encoder.layer",
    inner: None,
    linears: &BERT_LINEARS,
    norms: BERT_NORMS,
    head_dense: "lm_head.dense",
    head_norm: "lm_head.layer_norm",
    head_bias: "lm_head.bias",
    decoder: "lm_head.decoder.weight",
    head_gelu: true,
    untied_extras: &[("lm_head.decoder.bias", "lm_head.bias")],
};

const DISTILBERT_LINEARS: [(Proj, &str); 6] = [
    (Proj::Q, "attention.q_lin"),
    (Proj::K, "attention.k_lin"),
    (Proj::V, "attention.v_lin"),
    (Proj::O, "attention.out_lin"),
    (Proj::Up, "ffn.lin1"),
    (Proj::Down, "ffn.lin2"),
];

/// `DistilBertForMaskedLM`.
pub const DISTILBERT: EncLayout = EncLayout {
    name: "distilbert",
    word: "distilbert.embeddings.word_embeddings.weight",
    positions: "distilbert.embeddings.position_embeddings.weight",
    token_types: None,
    embed_norm: "distilbert.embeddings.LayerNorm",
    embed_proj: None,
    blocks: "distilbert.transformer.layer",
    inner: None,
    linears: &DISTILBERT_LINEARS,
    norms: ["sa_layer_norm", "output_layer_norm"],
    head_dense: "vocab_transform",
    head_norm: "vocab_layer_norm",
    head_bias: "vocab_projector.bias",
    decoder: "vocab_projector.weight",
    head_gelu: false,
    untied_extras: &[],
};

const ALBERT_LINEARS: [(Proj, &str); 6] = [
    (Proj::Q, "attention.query"),
    (Proj::K, "attention.key"),
    (Proj::V, "attention.value"),
    (Proj::O, "attention.dense"),
    (Proj::Up, "ffn"),
    (Proj::Down, "ffn_output"),
];

/// `AlbertForMaskedLM`.
pub const ALBERT: EncLayout = EncLayout {
    name: "albert",
    word: "albert.embeddings.word_embeddings.weight",
    positions: "albert.embeddings.position_embeddings.weight",
    token_types: Some("albert.embeddings.token_type_embeddings.weight"),
    embed_norm: "albert.embeddings.LayerNorm",
    embed_proj: Some("albert.encoder.embedding_hidden_mapping_in"),
    blocks: "albert.encoder.albert_layer_groups",
    inner: Some("albert_layers"),
    linears: &ALBERT_LINEARS,
    norms: ["attention.LayerNorm", "full_layer_layer_norm"],
    head_dense: "predictions.dense",
    head_norm: "predictions.LayerNorm",
    head_bias: "predictions.bias",
    decoder: "predictions.decoder.weight",
    head_gelu: false,
    untied_extras: &[("predictions.decoder.bias", "predictions.bias")],
};

impl Architecture for EncLayout {
    fn name(&self) -> &'static str {
        self.name
    }

    fn objective(&self) -> crate::model::lm::Objective {
        crate::model::lm::Objective::Masked
    }

    fn group(&self, id: LinearId) -> ModuleGroup {
        match id.proj {
            Proj::O => ModuleGroup::AttentionOutput,
            p => p.group(),
        }
    }

    fn checkpoint_alias(&self, name: &str) -> Option<String> {
        // Older BERT uploads spell LayerNorm parameters as TensorFlow did.
        if !name.contains(".LayerNorm.") {
            return None;
        }
        if let Some(m) = name.strip_suffix(".weight") {
            return Some(format!("{m}.gamma"));
        }
        name.strip_suffix(".bias").map(|m| format!("{m}.beta"))
    }

    fn embed_name(&self) -> &'static str {
        self.word
    }

    fn untied_extras(&self) -> &'static [(&'static str, &'static str)] {
        self.untied_extras
    }

    fn head_name(&self) -> &'static str {
        self.decoder
    }

    fn tied(&self, cfg: &ModelConfig) -> bool {
        cfg.tie_word_embeddings
    }

    fn block_linears(&self, _cfg: &ModelConfig, layer: usize) -> Vec<LinearId> {
        self.linears
            .iter()
            .map(|(p, _)| LinearId::new(layer, *p))
            .collect()
    }

    fn weight_name(&self, cfg: &ModelConfig, id: LinearId) -> String {
        self.weight_name_of(cfg, id)
    }

    fn tensors(&self, cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        self.all_tensors(cfg)
    }

    fn gguf_name(&self, _hf: &str) -> Option<String> {
        None
    }

    fn build(
        &self,
        cfg: &ModelConfig,
        weights: &TensorMap,
        int8: Vec<(String, Int8Weight)>,
    ) -> Result<LanguageModel> {
        let mut model = Encoder::new(cfg, self, weights)?;
        for (name, weight) in int8 {
            model = model.with_dynamic_int8(&name, weight)?;
        }
        Ok(LanguageModel::Masked(Box::new(model)))
    }

    fn build_streamed(
        &self,
        cfg: &ModelConfig,
        source: std::sync::Arc<dyn crate::model::TensorSource>,
    ) -> Result<LanguageModel> {
        let model = Encoder::streamed(cfg, self, source)?;
        Ok(LanguageModel::Masked(Box::new(model)))
    }
}

/// The serde mirror of a BERT, RoBERTa, DistilBERT or ALBERT `config.json`; DistilBERT's own
/// key names are aliases. Absent keys take the class's defaults.
#[derive(Debug, Deserialize)]
struct RawEncoderConfig {
    vocab_size: Option<usize>,
    #[serde(alias = "dim")]
    hidden_size: Option<usize>,
    #[serde(alias = "n_layers")]
    num_hidden_layers: Option<usize>,
    #[serde(alias = "n_heads")]
    num_attention_heads: Option<usize>,
    #[serde(alias = "hidden_dim")]
    intermediate_size: Option<usize>,
    #[serde(alias = "activation")]
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    pad_token_id: Option<usize>,
    position_embedding_type: Option<String>,
    is_decoder: Option<bool>,
    add_cross_attention: Option<bool>,
    sinusoidal_pos_embds: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
    embedding_size: Option<usize>,
    num_hidden_groups: Option<usize>,
    inner_group_num: Option<usize>,
}

/// A BERT, RoBERTa, DistilBERT or ALBERT `config.json` resolved; `path` is only for messages.
pub(crate) fn resolve(family: Family, json: &str, path: &Path) -> Result<ModelConfig> {
    let file = ConfigFile(path);
    let raw: RawEncoderConfig = file.parse(json)?;
    let distil = family == Family::DistilBert;
    let albert = family == Family::Albert;
    let key = |bert: &'static str, distil_key: &'static str| if distil { distil_key } else { bert };
    // ALBERT's class defaults are those of albert-xxlarge.
    let (hidden_default, heads_default) = if albert { (4096, 64) } else { (768, 12) };
    let hidden = file.positive(
        key("hidden_size", "dim"),
        raw.hidden_size.unwrap_or(hidden_default),
    )?;
    let heads_key = key("num_attention_heads", "n_heads");
    let heads = file.positive(heads_key, raw.num_attention_heads.unwrap_or(heads_default))?;
    if hidden % heads != 0 {
        return Err(file.err(
            heads_key,
            format!("{heads} does not divide the hidden size {hidden}"),
        ));
    }
    let act_key = key("hidden_act", "activation");
    let act_default = if albert { "gelu_new" } else { "gelu" };
    let activation = Activation::parse(raw.hidden_act.as_deref().unwrap_or(act_default))
        .map_err(|m| file.err(act_key, m))?;
    if let Some(t) = raw
        .position_embedding_type
        .as_deref()
        .filter(|t| *t != "absolute")
    {
        return Err(file.err(
            "position_embedding_type",
            format!("`{t}` is not supported; only `absolute` positions are"),
        ));
    }
    for (k, v) in [
        ("is_decoder", raw.is_decoder),
        ("add_cross_attention", raw.add_cross_attention),
    ] {
        if v == Some(true) {
            return Err(file.err(
                k,
                "an encoder used as a decoder is not supported; it must be false".into(),
            ));
        }
    }
    if distil && raw.sinusoidal_pos_embds == Some(true) {
        return Err(file.err(
            "sinusoidal_pos_embds",
            "sinusoidal positions are not supported; it must be false (learned positions)".into(),
        ));
    }
    let (vocab_default, types_default, pad_default) = match family {
        Family::Roberta => (50265, 2, 1),
        Family::Albert => (30000, 2, 0),
        _ => (30522, 2, 0),
    };
    let vocab_size = file.positive("vocab_size", raw.vocab_size.unwrap_or(vocab_default))?;
    let eps = if distil {
        // DistilBERT's LayerNorms are built with eps 1e-12; its config has no key for it.
        1e-12
    } else {
        raw.layer_norm_eps.unwrap_or(1e-12)
    };
    if !(eps.is_finite() && eps > 0.0) {
        return Err(file.err("layer_norm_eps", format!("{eps} must be > 0")));
    }
    let table = file.positive(
        "max_position_embeddings",
        raw.max_position_embeddings.unwrap_or(512),
    )?;
    let pad = raw.pad_token_id.unwrap_or(pad_default);
    let (padding_idx, usable) = if family == Family::Roberta {
        if table <= pad + 1 {
            return Err(file.err(
                "max_position_embeddings",
                format!(
                    "{table} leaves no position after RoBERTa's offset pad_token_id + 1 = {}",
                    pad + 1
                ),
            ));
        }
        (Some(pad), table - pad - 1)
    } else {
        (None, table)
    };
    let type_vocab_size = if distil {
        0
    } else {
        file.positive(
            "type_vocab_size",
            raw.type_vocab_size.unwrap_or(types_default),
        )?
    };
    let (bos_default, eos_default) = if albert {
        (Some(TokenIds::One(2)), Some(TokenIds::One(3)))
    } else {
        (None, None)
    };
    let (bos_token_id, eos_token_ids) = token_ids(
        raw.bos_token_id.or(bos_default),
        raw.eos_token_id.or(eos_default),
        vocab_size,
        path,
    )?;
    let layers_key = key("num_hidden_layers", "n_layers");
    let layers = file.positive(
        layers_key,
        raw.num_hidden_layers.unwrap_or(if distil { 6 } else { 12 }),
    )?;
    let (embedding_size, sharing) = if albert {
        let sharing = LayerSharing {
            layers,
            groups: file.positive("num_hidden_groups", raw.num_hidden_groups.unwrap_or(1))?,
            inner: file.positive("inner_group_num", raw.inner_group_num.unwrap_or(1))?,
        };
        let e = file.positive("embedding_size", raw.embedding_size.unwrap_or(128))?;
        (Some(e), Some(sharing))
    } else {
        (None, None)
    };
    Ok(ModelConfig {
        family,
        hidden_size: hidden,
        intermediate_size: file.positive(
            key("intermediate_size", "hidden_dim"),
            raw.intermediate_size.unwrap_or(4 * hidden),
        )?,
        // The blocks that run: ALBERT's layers each run their group's inner layers.
        num_layers: sharing.map_or(layers, |s| s.layers * s.inner),
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
        max_position_embeddings: usable,
        sliding_window: None,
        post_norm: false,
        word_embed_dim: None,
        t5: None,
        encoder: Some(EncoderConfig {
            type_vocab_size,
            padding_idx,
            embedding_size,
            sharing,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::ModuleGroup;

    fn cfg(json: &str) -> ModelConfig {
        ModelConfig::from_json(json).unwrap()
    }

    #[test]
    fn configs_take_each_class_keys_and_defaults() {
        let c = cfg(r#"{"architectures": ["BertForMaskedLM"], "model_type": "bert"}"#);
        assert_eq!(c.family, Family::Bert);
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_layers),
            (768, 3072, 12)
        );
        assert_eq!((c.vocab_size, c.max_position_embeddings), (30522, 512));
        assert_eq!(c.activation, Activation::GeluErf);
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert!(c.tie_word_embeddings);
        let c = cfg(r#"{"model_type": "roberta", "max_position_embeddings": 514,
                       "type_vocab_size": 1, "pad_token_id": 1, "layer_norm_eps": 1e-5}"#);
        assert_eq!(c.max_position_embeddings, 512);
        let enc = c.encoder.clone().unwrap();
        assert_eq!((enc.type_vocab_size, enc.padding_idx), (1, Some(1)));
        let shapes: std::collections::BTreeMap<_, _> = ROBERTA.tensors(&c).into_iter().collect();
        assert_eq!(shapes[ROBERTA.positions], [514, 768]);
        assert_eq!(
            shapes["roberta.embeddings.token_type_embeddings.weight"],
            [1, 768]
        );
        let c = cfg(
            r#"{"model_type": "distilbert", "dim": 64, "n_layers": 2, "n_heads": 4,
                       "hidden_dim": 100, "activation": "gelu", "vocab_size": 50}"#,
        );
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_layers),
            (64, 100, 2)
        );
        assert_eq!(c.num_heads, 4);
        assert_eq!(c.encoder.as_ref().unwrap().type_vocab_size, 0);
        assert!(DISTILBERT
            .tensors(&c)
            .iter()
            .all(|(n, _)| !n.contains("token_type")));
    }

    #[test]
    fn albert_maps_layers_to_stored_groups_as_transformers() {
        let c = cfg(r#"{"model_type": "albert"}"#);
        assert_eq!(c.family, Family::Albert);
        assert_eq!((c.hidden_size, c.num_heads, c.num_layers), (4096, 64, 12));
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.clone()),
            (Some(2), vec![3])
        );
        let enc = c.encoder.clone().unwrap();
        assert_eq!(enc.embedding_size, Some(128));
        // One group: every block runs stored layer 0, whose tensors are listed once.
        assert!((0..12).all(|l| enc.stored(l) == 0));
        let shapes: std::collections::BTreeMap<_, _> = ALBERT.tensors(&c).into_iter().collect();
        assert_eq!(shapes[ALBERT.word], [30000, 128]);
        assert_eq!(
            shapes["albert.encoder.embedding_hidden_mapping_in.weight"],
            [4096, 128]
        );
        assert_eq!(shapes["predictions.dense.weight"], [128, 4096]);
        assert_eq!(
            shapes
                .keys()
                .filter(|n| n.contains("albert_layer_groups"))
                .count(),
            16
        );
        // int(i / (12 / 5)), with Python's float division.
        let c = cfg(
            r#"{"model_type": "albert", "num_hidden_groups": 5, "hidden_size": 64,
                       "num_attention_heads": 4}"#,
        );
        let enc = c.encoder.unwrap();
        let groups: Vec<usize> = (0..12).map(|l| enc.stored(l)).collect();
        assert_eq!(groups, [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]);
        let c = cfg(
            r#"{"model_type": "albert", "num_hidden_layers": 2, "inner_group_num": 3,
                       "hidden_size": 64, "num_attention_heads": 4}"#,
        );
        assert_eq!(c.num_layers, 6);
        let e = ModelConfig::from_json(r#"{"model_type": "albert", "num_hidden_groups": 0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_hidden_groups"), "{e}");
    }

    #[test]
    fn unsupported_settings_name_their_key() {
        for (json, key) in [
            (
                r#"{"model_type": "distilbert", "sinusoidal_pos_embds": true}"#,
                "sinusoidal_pos_embds",
            ),
            (
                r#"{"model_type": "bert", "position_embedding_type": "relative_key"}"#,
                "position_embedding_type",
            ),
            (
                r#"{"model_type": "bert", "is_decoder": true}"#,
                "is_decoder",
            ),
            (
                r#"{"model_type": "bert", "hidden_act": "swish"}"#,
                "hidden_act",
            ),
            (r#"{"model_type": "distilbert", "n_heads": 5}"#, "n_heads"),
            (
                r#"{"model_type": "roberta", "max_position_embeddings": 2}"#,
                "max_position_embeddings",
            ),
        ] {
            let e = ModelConfig::from_json(json).unwrap_err().to_string();
            assert!(e.contains(key), "{json}: {e}");
        }
        let e = ModelConfig::from_json(r#"{"architectures": ["ElectraForMaskedLM"]}"#)
            .unwrap_err()
            .to_string();
        for class in [
            "BertForMaskedLM",
            "RobertaForMaskedLM",
            "DistilBertForMaskedLM",
            "AlbertForMaskedLM",
        ] {
            assert!(e.contains(class), "{e}");
        }
    }

    #[test]
    fn linears_are_named_and_grouped() {
        let c = cfg(
            r#"{"model_type": "bert", "hidden_size": 8, "num_attention_heads": 2,
                       "num_hidden_layers": 2, "intermediate_size": 16, "vocab_size": 10}"#,
        );
        let layers = BERT.linears(&c);
        let names: Vec<&str> = layers[..6].iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bert.encoder.layer.0.attention.self.query.weight",
                "bert.encoder.layer.0.attention.self.key.weight",
                "bert.encoder.layer.0.attention.self.value.weight",
                "bert.encoder.layer.0.attention.output.dense.weight",
                "bert.encoder.layer.0.intermediate.dense.weight",
                "bert.encoder.layer.0.output.dense.weight",
            ]
        );
        use ModuleGroup::{Attention as A, LmHead, Mlp as M};
        let groups: Vec<ModuleGroup> = layers.iter().map(|l| l.group).collect();
        let o = ModuleGroup::AttentionOutput;
        assert_eq!(groups, [A, A, A, o, M, M, A, A, A, o, M, M, LmHead]);
        assert_eq!(layers[12].name, "cls.predictions.decoder.weight");
        for l in &layers[..12] {
            assert_eq!(BERT.linear_id(&c, &l.name), l.block);
        }
        assert_eq!(
            BERT.checkpoint_alias("bert.embeddings.LayerNorm.weight")
                .as_deref(),
            Some("bert.embeddings.LayerNorm.gamma")
        );
        assert_eq!(
            BERT.checkpoint_alias("bert.embeddings.word_embeddings.weight"),
            None
        );
        let shapes: std::collections::BTreeMap<_, _> = BERT.tensors(&c).into_iter().collect();
        assert_eq!(
            shapes["bert.encoder.layer.1.intermediate.dense.weight"],
            [16, 8]
        );
        assert_eq!(shapes["bert.encoder.layer.1.output.dense.weight"], [8, 16]);
        assert_eq!(shapes["cls.predictions.bias"], [10]);
        assert!(!shapes.contains_key("cls.predictions.decoder.weight"));
    }
}
