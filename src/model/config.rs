//! `config.json` of a Hugging Face checkpoint, resolved into [`ModelConfig`].
//!
//! `model_type` and `architectures` choose the family. [`RawConfig`] mirrors a LLaMA-family file
//! (optional keys stay `Option`); GPT-2 and OPT have their mirrors in their family modules.
//! [`ModelConfig`] is what the runtime uses, with every default filled and every unsupported
//! feature rejected up front, naming the key.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

/// The serde mirror of `config.json`. Unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct RawConfig {
    pub model_type: Option<String>,
    pub architectures: Option<Vec<String>>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    pub max_position_embeddings: Option<usize>,
    pub hidden_act: Option<String>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
}

/// `bos_token_id` / `eos_token_id`: one id or a list (LLaMA 3 lists several EOS ids).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

/// The families whose configs whittle reads. LLaMA, Mistral and Qwen2 share one layout and
/// differ only in defaults and biases; GPT-2 and OPT are decoders of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Gpt2,
    Opt,
    T5,
    /// BERT-style masked-LM encoders (`src/model/family/bert.rs`).
    Bert,
    Roberta,
    #[serde(rename = "distilbert")]
    DistilBert,
    /// BERT-style with factorized embeddings and layers that share weights.
    Albert,
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU-gated (LLaMA's SwiGLU).
    Silu,
    /// GELU with the tanh approximation (GPT-2's `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// GELU with the exact error function (`gelu`).
    GeluErf,
    Relu,
}

impl Activation {
    /// The activation a GPT-2 or OPT config's `activation_function` names.
    pub(crate) fn parse(name: &str) -> std::result::Result<Activation, String> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::GeluErf),
            "relu" => Ok(Activation::Relu),
            other => Err(format!(
                "`{other}` is not supported; expected gelu_new, gelu_pytorch_tanh, gelu or relu"
            )),
        }
    }
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions divided by `factor` (HF `"linear"`).
    Linear { factor: f64 },
    /// LLaMA 3.1's piecewise frequency rescaling (HF `"llama3"`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// A resolved model configuration: every value filled, every combination checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// RMSNorm's epsilon (LLaMA family).
    pub rms_norm_eps: f64,
    /// LayerNorm's epsilon (GPT-2, OPT).
    pub layer_norm_eps: f64,
    pub activation: Activation,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (LLaMA `attention_bias`, always on for Qwen2).
    pub qkv_bias: bool,
    /// Bias on o_proj (LLaMA `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub max_position_embeddings: usize,
    /// Attend only to the last `w` positions (Mistral); `None` for full causal attention.
    pub sliding_window: Option<usize>,
    /// LayerNorm after each residual sum instead of before each sublayer, and no final
    /// LayerNorm (OPT-350m).
    pub post_norm: bool,
    /// The width of the token embeddings and the LM head where it differs from `hidden_size`
    /// (OPT-350m's `word_embed_proj_dim`): `project_in` and `project_out` map between the two.
    pub word_embed_dim: Option<usize>,
    /// What only an encoder-decoder (T5) has; absent from other families' configs and from
    /// their serialized form, so their cache keys do not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t5: Option<crate::model::family::t5::T5Shape>,
    /// What only BERT-style encoders have; `None` (and not serialized) for decoders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<EncoderConfig>,
}

/// The embedding details of a BERT-style encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Rows of `token_type_embeddings` (0: the family has none, as DistilBERT). Every token
    /// reads row 0.
    pub type_vocab_size: usize,
    /// RoBERTa's `pad_token_id`: position p of a real token reads row `padding_idx + 1 + p`, a
    /// padding position reads row `padding_idx`. `None`: position p reads row p.
    pub padding_idx: Option<usize>,
    /// ALBERT's `embedding_size`: the width of the embeddings and of the head's last
    /// LayerNorm and decoder, mapped into the blocks' width by `embedding_hidden_mapping_in`.
    /// `None`: the hidden size (and not serialized, so BERT's cache keys do not change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    /// ALBERT's shared layers; `None` when every block has weights of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<LayerSharing>,
}

/// ALBERT's weight sharing: `layers` layers run in turn, layer i running stored group
/// `int(i / (layers / groups))` (Python's float division and truncation, as transformers), and
/// each group running its `inner` stored layers one after the other. The model runs
/// `layers × inner` blocks ([`ModelConfig::num_layers`]) from `groups × inner` stored ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSharing {
    pub layers: usize,
    pub groups: usize,
    pub inner: usize,
}

impl LayerSharing {
    /// The stored layer block `block` (of `layers × inner`) runs.
    pub fn stored(&self, block: usize) -> usize {
        let (outer, inner) = (block / self.inner, block % self.inner);
        let group = (outer as f64 / (self.layers as f64 / self.groups as f64)) as usize;
        group * self.inner + inner
    }

    /// How many layers are stored.
    pub fn stored_count(&self) -> usize {
        self.groups * self.inner
    }
}

impl EncoderConfig {
    /// The stored layer block `block` runs: itself unless layers are shared.
    pub fn stored(&self, block: usize) -> usize {
        self.sharing.map_or(block, |s| s.stored(block))
    }
}

impl ModelConfig {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a `config.json` held in memory; errors name `<json>` as the file.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::parse(json, Path::new("<json>"))
    }

    fn parse(json: &str, path: &Path) -> Result<Self> {
        let bad_json = |source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        };
        #[derive(Deserialize)]
        struct Head {
            model_type: Option<String>,
            architectures: Option<Vec<String>>,
        }
        let head: Head = serde_json::from_str(json).map_err(bad_json)?;
        match family_of(
            head.model_type.as_deref(),
            head.architectures.as_deref(),
            path,
        )? {
            Family::Gpt2 => super::family::gpt2::resolve(json, path),
            Family::Opt => super::family::opt::resolve(json, path),
            Family::T5 => super::family::t5::resolve(json, path),
            f @ (Family::Bert | Family::Roberta | Family::DistilBert | Family::Albert) => {
                super::family::bert::resolve(f, json, path)
            }
            Family::Llama | Family::Mistral | Family::Qwen2 => {
                let raw: RawConfig = serde_json::from_str(json).map_err(bad_json)?;
                raw.resolve(path)
            }
        }
    }

    /// The group size of grouped-query attention: query heads per KV head.
    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Output width of q_proj (and input width of o_proj).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Output width of k_proj and v_proj.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

impl RawConfig {
    /// Fills defaults and checks everything the runtime relies on. `path` is only for messages.
    pub fn resolve(self, path: &Path) -> Result<ModelConfig> {
        let file = ConfigFile(path);
        let family = family_of(
            self.model_type.as_deref(),
            self.architectures.as_deref(),
            path,
        )?;
        if !matches!(family, Family::Llama | Family::Mistral | Family::Qwen2) {
            return Err(file.err(
                "model_type",
                format!("{family:?} is not a LLaMA-family config; read it with ModelConfig"),
            ));
        }
        let need = |key: &str, v: Option<usize>| -> Result<usize> {
            match v {
                Some(0) => Err(file.err(key, "must be positive".into())),
                Some(v) => Ok(v),
                None => Err(file.err(key, "is required".into())),
            }
        };
        let hidden_size = need("hidden_size", self.hidden_size)?;
        let intermediate_size = need("intermediate_size", self.intermediate_size)?;
        let num_layers = need("num_hidden_layers", self.num_hidden_layers)?;
        let num_heads = need("num_attention_heads", self.num_attention_heads)?;
        let vocab_size = need("vocab_size", self.vocab_size)?;
        let num_kv_heads = need(
            "num_key_value_heads",
            Some(self.num_key_value_heads.unwrap_or(num_heads)),
        )?;
        if num_heads % num_kv_heads != 0 {
            return Err(file.err(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads = {num_heads}"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => need("head_dim", Some(d))?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(file.err(
                    "head_dim",
                    format!(
                        "absent, and hidden_size = {hidden_size} is not a multiple of \
                         num_attention_heads = {num_heads}"
                    ),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(file.err("head_dim", format!("{head_dim} must be even for RoPE")));
        }
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(file.err("rms_norm_eps", format!("{rms_norm_eps} must be > 0")));
        }
        let rope_theta = self.rope_theta.unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(file.err("rope_theta", format!("{rope_theta} must be > 0")));
        }
        match self.hidden_act.as_deref() {
            None | Some("silu") => {}
            Some(other) => {
                return Err(file.err(
                    "hidden_act",
                    format!("`{other}` is not supported; only `silu` (SwiGLU) is"),
                ))
            }
        }
        let rope_scaling = match &self.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => resolve_rope_scaling(v).map_err(|m| file.err("rope_scaling", m))?,
        };
        let attention_bias = self.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            // Qwen2 always has q/k/v biases and never an o_proj bias.
            Family::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let sliding_window = match family {
            Family::Mistral => self.sliding_window,
            Family::Qwen2 if self.use_sliding_window == Some(true) => {
                return Err(file.err(
                    "use_sliding_window",
                    "Qwen2's per-layer sliding window is not supported; set it to false".into(),
                ))
            }
            _ => None,
        };
        let max_position_embeddings = need(
            "max_position_embeddings",
            Some(self.max_position_embeddings.unwrap_or(2048)),
        )?;
        let (bos_token_id, eos_token_ids) =
            token_ids(self.bos_token_id, self.eos_token_id, vocab_size, path)?;
        Ok(ModelConfig {
            family,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps,
            layer_norm_eps: 1e-5,
            activation: Activation::Silu,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            bos_token_id,
            eos_token_ids,
            max_position_embeddings,
            sliding_window,
            post_norm: false,
            word_embed_dim: None,
            t5: None,
            encoder: None,
        })
    }
}

/// The supported `architectures` entries (the transformers classes) and their families.
pub const ARCHITECTURES: [(&str, Family); 10] = [
    ("LlamaForCausalLM", Family::Llama),
    ("MistralForCausalLM", Family::Mistral),
    ("Qwen2ForCausalLM", Family::Qwen2),
    ("GPT2LMHeadModel", Family::Gpt2),
    ("OPTForCausalLM", Family::Opt),
    ("T5ForConditionalGeneration", Family::T5),
    ("BertForMaskedLM", Family::Bert),
    ("RobertaForMaskedLM", Family::Roberta),
    ("DistilBertForMaskedLM", Family::DistilBert),
    ("AlbertForMaskedLM", Family::Albert),
];

/// The supported `model_type` values and their families.
const MODEL_TYPES: [(&str, Family); 10] = [
    ("llama", Family::Llama),
    ("mistral", Family::Mistral),
    ("qwen2", Family::Qwen2),
    ("gpt2", Family::Gpt2),
    ("opt", Family::Opt),
    ("t5", Family::T5),
    ("bert", Family::Bert),
    ("roberta", Family::Roberta),
    ("distilbert", Family::DistilBert),
    ("albert", Family::Albert),
];

/// The family `model_type` and `architectures` name; they must agree when both are given.
fn family_of(
    model_type: Option<&str>,
    architectures: Option<&[String]>,
    path: &Path,
) -> Result<Family> {
    let file = ConfigFile(path);
    let list = |names: &mut dyn Iterator<Item = &str>| names.collect::<Vec<_>>().join(", ");
    let from_type = match model_type {
        None => None,
        Some(t) => match MODEL_TYPES.iter().find(|(name, _)| *name == t) {
            Some((_, family)) => Some(*family),
            None => {
                let known = list(&mut MODEL_TYPES.iter().map(|(n, _)| *n));
                return Err(file.err(
                    "model_type",
                    format!("`{t}` is not supported; expected one of {known}"),
                ));
            }
        },
    };
    let from_arch = match architectures {
        None | Some([]) => None,
        Some([arch]) => match ARCHITECTURES.iter().find(|(name, _)| name == arch) {
            Some((_, family)) => Some(*family),
            None => {
                let known = list(&mut ARCHITECTURES.iter().map(|(n, _)| *n));
                return Err(file.err(
                    "architectures",
                    format!("`{arch}` is not supported; expected one of {known}"),
                ));
            }
        },
        Some(many) => {
            return Err(file.err(
                "architectures",
                format!("expected one architecture, found {many:?}"),
            ))
        }
    };
    match (from_type, from_arch) {
        (Some(t), Some(a)) if t != a => Err(file.err(
            "architectures",
            format!("{a:?} contradicts model_type {t:?}"),
        )),
        (Some(f), _) | (None, Some(f)) => Ok(f),
        (None, None) => Err(file.err(
            "model_type",
            "neither model_type nor architectures is given; cannot tell the architecture".into(),
        )),
    }
}

/// One `config.json` being read: its raw form, and errors that name the file and the key.
#[derive(Clone, Copy)]
pub(crate) struct ConfigFile<'a>(pub(crate) &'a Path);

impl ConfigFile<'_> {
    /// The file's JSON as `T`.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(self, json: &str) -> Result<T> {
        serde_json::from_str(json).map_err(|source| ModelError::Json {
            path: self.0.to_path_buf(),
            source,
        })
    }

    /// The error for a bad value of `key`.
    pub(crate) fn err(self, key: &str, message: String) -> ModelError {
        ModelError::Config {
            path: self.0.to_path_buf(),
            key: key.to_string(),
            message,
        }
    }

    /// `v`, which `key` must give as positive.
    pub(crate) fn positive(self, key: &str, v: usize) -> Result<usize> {
        if v == 0 {
            Err(self.err(key, "must be positive".into()))
        } else {
            Ok(v)
        }
    }
}

/// `bos_token_id` (one id) and `eos_token_id` (one or several), each inside the vocabulary.
pub(crate) fn token_ids(
    bos: Option<TokenIds>,
    eos: Option<TokenIds>,
    vocab_size: usize,
    path: &Path,
) -> Result<(Option<u32>, Vec<u32>)> {
    let file = ConfigFile(path);
    let bos_token_id = match bos {
        None => None,
        Some(TokenIds::One(id)) => Some(id),
        Some(TokenIds::Many(ids)) if ids.len() <= 1 => ids.first().copied(),
        Some(TokenIds::Many(ids)) => {
            return Err(file.err(
                "bos_token_id",
                format!("expected one id, found a list {ids:?}"),
            ))
        }
    };
    let eos_token_ids = eos.map(TokenIds::into_vec).unwrap_or_default();
    for (key, ids) in [
        ("bos_token_id", bos_token_id.into_iter().collect::<Vec<_>>()),
        ("eos_token_id", eos_token_ids.clone()),
    ] {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(file.err(
                key,
                format!("id {bad} is outside the vocabulary (vocab_size = {vocab_size})"),
            ));
        }
    }
    Ok((bos_token_id, eos_token_ids))
}

fn resolve_rope_scaling(v: &serde_json::Value) -> std::result::Result<Option<RopeScaling>, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("expected an object or null, found {v}"))?;
    // HF spells the kind `rope_type` (new) or `type` (old).
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(|k| k.as_str())
        .ok_or("has no `rope_type`")?;
    let num = |key: &str| -> std::result::Result<f64, String> {
        obj.get(key)
            .and_then(|x| x.as_f64())
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| format!("`{kind}` scaling needs a positive number `{key}`"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => {
            let low = num("low_freq_factor")?;
            let high = num("high_freq_factor")?;
            if high <= low {
                return Err("`llama3` scaling needs high_freq_factor > low_freq_factor".into());
            }
            Ok(Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            }))
        }
        other => Err(format!(
            "rope type `{other}` is not supported; expected default, linear or llama3"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 172,
            "num_hidden_layers": 5,
            "num_attention_heads": 8,
            "vocab_size": 512
        })
    }

    fn with(key: &str, value: serde_json::Value) -> String {
        let mut v = base();
        v[key] = value;
        v.to_string()
    }

    #[test]
    fn defaults_are_filled() {
        let c = ModelConfig::from_json(&base().to_string()).unwrap();
        assert_eq!(c.family, Family::Llama);
        assert_eq!(c.num_kv_heads, 8);
        assert_eq!(c.head_dim, 8);
        assert_eq!(c.rope_theta, 10_000.0);
        assert!(!c.tie_word_embeddings && !c.qkv_bias && !c.o_bias && !c.mlp_bias);
        assert_eq!(c.rope_scaling, None);
        assert_eq!(c.bos_token_id, None);
        assert!(c.eos_token_ids.is_empty());
        assert_eq!(c.sliding_window, None);
    }

    #[test]
    fn qwen2_has_qkv_bias_only() {
        let c = ModelConfig::from_json(&with("model_type", "qwen2".into())).unwrap();
        assert_eq!(c.family, Family::Qwen2);
        assert!(c.qkv_bias && !c.o_bias);
        let c = ModelConfig::from_json(&with("attention_bias", true.into())).unwrap();
        assert!(c.qkv_bias && c.o_bias);
    }

    #[test]
    fn eos_may_be_a_list_or_null() {
        let c = ModelConfig::from_json(&with("eos_token_id", serde_json::json!([2, 7]))).unwrap();
        assert_eq!(c.eos_token_ids, vec![2, 7]);
        let c = ModelConfig::from_json(&with("eos_token_id", serde_json::Value::Null)).unwrap();
        assert!(c.eos_token_ids.is_empty());
        let e = ModelConfig::from_json(&with("eos_token_id", 600.into())).unwrap_err();
        assert!(e.to_string().contains("eos_token_id"), "{e}");
    }

    #[test]
    fn llama3_rope_scaling_is_parsed() {
        let scaling = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let c = ModelConfig::from_json(&with("rope_scaling", scaling)).unwrap();
        assert!(matches!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0
        ));
    }

    fn error_of(json: &str) -> String {
        ModelConfig::from_json(json).unwrap_err().to_string()
    }

    #[test]
    fn bad_configs_name_the_key() {
        let e = error_of(&with(
            "rope_scaling",
            serde_json::json!({"type": "yarn", "factor": 4}),
        ));
        assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
        let e = error_of(&with("hidden_act", "gelu".into()));
        assert!(e.contains("hidden_act") && e.contains("gelu"), "{e}");
        let e = error_of(&with("model_type", "electra".into()));
        assert!(e.contains("model_type") && e.contains("electra"), "{e}");
        let e = error_of(&with(
            "architectures",
            serde_json::json!(["ElectraForMaskedLM"]),
        ));
        assert!(
            e.contains("architectures") && e.contains("ElectraForMaskedLM"),
            "{e}"
        );
        // The error lists every supported class.
        for (class, _) in ARCHITECTURES {
            assert!(e.contains(class), "{e}");
        }
        // A GPT-2 class on a LLaMA model_type is a contradiction, not a GPT-2 model.
        let e = error_of(&with(
            "architectures",
            serde_json::json!(["GPT2LMHeadModel"]),
        ));
        assert!(
            e.contains("architectures") && e.contains("contradicts"),
            "{e}"
        );
        let e = error_of(&with("num_key_value_heads", 3.into()));
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = error_of(&with("hidden_size", 0.into()));
        assert!(e.contains("hidden_size"), "{e}");
        let mut v = base();
        v.as_object_mut().unwrap().remove("vocab_size");
        let e = error_of(&v.to_string());
        assert!(e.contains("vocab_size") && e.contains("required"), "{e}");
        let e = error_of("{not json");
        assert!(e.contains("<json>"), "{e}");
    }
}
