//! Model families: what each architecture looks like from outside its runtime.
//!
//! An [`Architecture`] names a family's tensors and linear layers, groups the linear layers into
//! [`ModuleGroup`]s, counts its parameters and builds its runtime as a [`crate::model::LanguageModel`]. Selection,
//! calibration, overlays, export and memory estimates ask it instead of spelling LLaMA's names.
//! The families: LLaMA (with Mistral, Qwen2 and SmolLM, which share its layout), GPT-2 and OPT
//! (causal), the BERT-style masked-LM encoders BERT, RoBERTa, DistilBERT and ALBERT (`bert`),
//! and T5 (an encoder-decoder).
//!
//! Tensors keep their checkpoint's layout under their checkpoint's names everywhere (overlays,
//! digests, export). GPT-2 stores its linear layers as `Conv1D`, weight `in × out`; the
//! compression kernels and the runtimes take nn.Linear's `out × in`, so a weight is turned with
//! [`as_linear`] on its way to a kernel and back with [`as_stored`] (see [`Architecture::conv1d`]).

pub(crate) mod bert;
pub(crate) mod gpt2;
pub(crate) mod llama;
pub(crate) mod opt;
pub(crate) mod t5;

use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::error::Result;
use super::lm::LanguageModel;
use super::parts::LinearId;
use super::weights::TensorMap;
use crate::compress::dynint8::Int8Weight;

pub use bert::{ALBERT, BERT, DISTILBERT, ROBERTA};
pub use gpt2::GPT2;
pub use llama::LLAMA;
pub use opt::OPT;
pub use t5::{T5Shape, T5};

/// Which part of a model a linear layer belongs to; as a selector, [`ModuleGroup::All`] stands
/// for every linear layer inside the blocks (no layer's own group is `All`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleGroup {
    /// Every linear layer of the blocks (not the LM head).
    All,
    /// The attention projections (q, k, v and o in LLaMA).
    Attention,
    /// The feed-forward network (gate, up and down in LLaMA).
    Mlp,
    /// An encoder's attention output projection (BERT's `attention.output.dense`): Study K's
    /// `attention` group of an encoder is query, key and value only.
    AttentionOutput,
    /// The final dense layer only (untied from the embedding if they were tied).
    LmHead,
}

impl ModuleGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleGroup::All => "all",
            ModuleGroup::Attention => "attention",
            ModuleGroup::Mlp => "mlp",
            ModuleGroup::LmHead => "lm_head",
            ModuleGroup::AttentionOutput => "attention_output",
        }
    }

    /// Whether this selector takes a linear layer of `group`.
    pub fn selects(self, group: ModuleGroup) -> bool {
        match self {
            ModuleGroup::All => group != ModuleGroup::LmHead,
            _ => self == group,
        }
    }
}

/// One linear layer of a model: its weight's name, its group, and, inside a block, its id (the
/// LM head has none: it runs after the blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearLayer {
    pub name: String,
    pub group: ModuleGroup,
    pub block: Option<LinearId>,
}

/// A model family's architecture, as the rest of whittle needs to know it.
///
/// Names are Hugging Face tensor names, as `save_pretrained` writes them for the class. A family
/// builds the kind of [`LanguageModel`] it is: causal, masked or sequence-to-sequence.
pub trait Architecture: Sync {
    /// The family's name, e.g. `llama`.
    fn name(&self) -> &'static str;

    /// What the family's models predict (the kind of [`LanguageModel`] it builds), known before
    /// building one.
    fn objective(&self) -> super::lm::Objective {
        super::lm::Objective::Causal
    }

    /// Tensors transformers ties along with the head and reads on their own once the head is
    /// untied, as (name to write, tensor it copies): an export of an untied head writes them.
    fn untied_extras(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// Whether the weight `name` is stored as a `Conv1D` (`in × out`, the transpose of
    /// nn.Linear's `out × in`). Kernels, masks and runtimes see nn.Linear's layout.
    fn conv1d(&self, _name: &str) -> bool {
        false
    }

    /// Another name the checkpoint may store tensor `name` under: a base model's checkpoint
    /// (GPT-2's `h.0.…`, OPT's `decoder.…`) without the prefix the LM class adds.
    fn checkpoint_alias(&self, _name: &str) -> Option<String> {
        None
    }

    /// The token embedding's weight name.
    fn embed_name(&self) -> &'static str;

    /// The LM head's weight name; in a tied model present only once something replaced it.
    fn head_name(&self) -> &'static str;

    /// Whether the LM head reuses the embedding matrix.
    fn tied(&self, cfg: &ModelConfig) -> bool;

    /// The linear layers of block `layer`, in the order the block runs them.
    fn block_linears(&self, cfg: &ModelConfig, layer: usize) -> Vec<LinearId>;

    /// The weight name of a block's linear layer.
    fn weight_name(&self, cfg: &ModelConfig, id: LinearId) -> String;

    /// The group a block's linear layer belongs to.
    fn group(&self, id: LinearId) -> ModuleGroup {
        id.proj.group()
    }

    /// The block linear layer whose weight is called `name` (with shared layers, the first block
    /// that runs it).
    fn linear_id(&self, cfg: &ModelConfig, name: &str) -> Option<LinearId> {
        (0..cfg.num_layers)
            .flat_map(|l| self.block_linears(cfg, l))
            .find(|&id| self.weight_name(cfg, id) == name)
    }

    /// Every tensor the config implies, by name, with its shape.
    fn tensors(&self, cfg: &ModelConfig) -> Vec<(String, Vec<usize>)>;

    /// llama.cpp's GGUF name for a tensor name, or `None` for names it has no counterpart for.
    fn gguf_name(&self, hf: &str) -> Option<String>;

    /// The model's runtime, from tensors under the names of [`Architecture::tensors`], with the
    /// named linear layers running as dynamic int8 with these weights.
    fn build(
        &self,
        cfg: &ModelConfig,
        weights: &TensorMap,
        int8: Vec<(String, Int8Weight)>,
    ) -> Result<LanguageModel>;

    /// The model's runtime reading its blocks from `source` as they run (see
    /// [`crate::model::Llama::streamed`]).
    fn build_streamed(
        &self,
        cfg: &ModelConfig,
        source: std::sync::Arc<dyn crate::model::TensorSource>,
    ) -> Result<LanguageModel>;

    /// The factor the runtime multiplies the head's input by while the head is tied (T5 v1.0:
    /// d_model^-½); an exported head that was untied by a replacement carries it in its weights,
    /// since the exported config says untied and an untied head's input is not scaled.
    fn tied_head_scale(&self, _cfg: &ModelConfig) -> Option<f64> {
        None
    }

    /// Every linear layer: block by block in run order, then the LM head. A weight that several
    /// blocks share (ALBERT) is listed once, at the first block that runs it.
    fn linears(&self, cfg: &ModelConfig) -> Vec<LinearLayer> {
        let blocks = (0..cfg.num_layers).flat_map(|l| self.block_linears(cfg, l));
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<LinearLayer> = blocks
            .map(|id| LinearLayer {
                name: self.weight_name(cfg, id),
                group: self.group(id),
                block: Some(id),
            })
            .filter(|l| seen.insert(l.name.clone()))
            .collect();
        out.push(LinearLayer {
            name: self.head_name().to_string(),
            group: ModuleGroup::LmHead,
            block: None,
        });
        out
    }

    /// The number of parameters: the elements of every tensor the config implies (the head of a
    /// tied model counted once, as the embedding).
    fn parameter_count(&self, cfg: &ModelConfig) -> u64 {
        self.tensors(cfg)
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>() as u64)
            .sum()
    }
}

/// Every family whittle knows.
const FAMILIES: [&dyn Architecture; 8] = [
    &LLAMA,
    &GPT2,
    &OPT,
    &T5,
    &BERT,
    &ROBERTA,
    &DISTILBERT,
    &ALBERT,
];

impl ModelConfig {
    /// The architecture of this config's family.
    pub fn architecture(&self) -> &'static dyn Architecture {
        use super::config::Family;
        match self.family {
            Family::Llama | Family::Mistral | Family::Qwen2 => &LLAMA,
            Family::Gpt2 => &GPT2,
            Family::Opt => &OPT,
            Family::T5 => &T5,
            Family::Bert => &BERT,
            Family::Roberta => &ROBERTA,
            Family::DistilBert => &DISTILBERT,
            Family::Albert => &ALBERT,
        }
    }
}

/// For the LM head of a tied model: the embedding it shares, the first of the families' whose
/// head is called `name` that the model `has`.
pub fn tied_parent(name: &str, has: &dyn Fn(&str) -> bool) -> Option<&'static str> {
    FAMILIES
        .iter()
        .filter(|f| f.head_name() == name)
        .map(|f| f.embed_name())
        .find(|e| has(e))
}

/// Whether a family stores the weight `name` as a `Conv1D` ([`Architecture::conv1d`]); tensor
/// names of different families never coincide there.
pub fn is_conv1d(name: &str) -> bool {
    FAMILIES.iter().any(|f| f.conv1d(name))
}

/// Weight `name` in nn.Linear's layout (`out × in`): a `Conv1D` weight transposed, any other as
/// it is.
pub fn as_linear(name: &str, t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    if is_conv1d(name) {
        t.t()?.contiguous()
    } else {
        Ok(t.clone())
    }
}

/// Weight `name` from nn.Linear's layout back to its checkpoint's ([`as_linear`]'s inverse).
pub fn as_stored(name: &str, t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    as_linear(name, t)
}

/// The tensor called `name`, or, for the LM head of a tied model (absent until something
/// replaced it), the embedding it shares.
pub fn tensor_or_tied<'a>(tensors: &'a TensorMap, name: &str) -> Option<&'a candle_core::Tensor> {
    tensors.get(name).or_else(|| {
        FAMILIES
            .iter()
            .filter(|f| f.head_name() == name)
            .find_map(|f| tensors.get(f.embed_name()))
    })
}
