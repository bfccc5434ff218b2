//! The BERT-style encoder runtime (BERT, RoBERTa, DistilBERT, ALBERT): a post-LayerNorm
//! bidirectional transformer with learned positions and a masked-LM head.
//!
//! embeddings (word + position + token type 0) → LayerNorm → (ALBERT: a linear map into the
//! blocks' width) → blocks (attention with biases,
//! residual, LayerNorm; MLP, residual, LayerNorm) → head (dense, activation, LayerNorm, decoder
//! with bias; the decoder tied to the word embedding unless replaced). Each family module
//! describes its names with an [`EncLayout`], which is also its [`Architecture`].
//!
//! Rules that change numbers:
//! - token type ids are all 0 (every token adds row 0 of `token_type_embeddings`);
//! - padding: [`Encoder::forward_masked`] hides key positions ≥ `lengths[b]` from every query
//!   (padded queries still get logits, which mean nothing); positions come from the lengths, not
//!   from the token ids: RoBERTa's real token p reads row `padding_idx + 1 + p` and a padded
//!   one row `padding_idx` (transformers derives both from `input_ids != pad_token_id`, the same
//!   whenever real tokens are never the pad token);
//! - [`Encoder::block_forward`] (calibration, sequential compression) runs unpadded sequences
//!   with every position visible; an encoder has no KV cache.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::config::{Activation, ModelConfig};
use super::decoder::{bias_name, Norm};
use super::error::{ModelError, Result};
use super::family::Architecture;
use super::lm::{delegate, Blocks, MaskedLm};
use super::parts::{
    accumulation_dtype, check_block_input, check_dtype, check_weights, missing_tensor,
    softmax_last_dim_differentiable, BlockStore, Capture, LayerKvCache, Linear, LinearId, Proj,
};
use super::parts::{apply_linear, read_int8, stored_head};
use super::parts::{linear_by_role, token_shape, BlockLinears};
use super::reader::TensorSource;
use super::weights::TensorMap;

/// A BERT-style family's tensor names; it is the family's [`Architecture`] too
/// (`src/model/family/bert.rs`).
#[derive(Debug, Clone, Copy)]
pub struct EncLayout {
    pub(crate) name: &'static str,
    pub(crate) word: &'static str,
    pub(crate) positions: &'static str,
    /// `None` for a family without token types (DistilBERT).
    pub(crate) token_types: Option<&'static str>,
    /// The embeddings' LayerNorm module path.
    pub(crate) embed_norm: &'static str,
    /// The linear layer from the embeddings' width into the blocks' (ALBERT's
    /// `embedding_hidden_mapping_in`): in no module group, never compressed.
    pub(crate) embed_proj: Option<&'static str>,
    /// The blocks' path: block N is `<blocks>.N.`; with shared layers, stored layer `i` of
    /// group `g` is `<blocks>.g.<inner>.i.`
    pub(crate) blocks: &'static str,
    pub(crate) inner: Option<&'static str>,
    /// A block's linear layers in run order, with their module paths under a block's path.
    pub(crate) linears: &'static [(Proj, &'static str)],
    /// A block's two LayerNorms' module paths under a block's path: after attention, after the
    /// MLP.
    pub(crate) norms: [&'static str; 2],
    /// The head's dense layer and LayerNorm module paths, and the decoder's bias.
    pub(crate) head_dense: &'static str,
    pub(crate) head_norm: &'static str,
    pub(crate) head_bias: &'static str,
    /// The decoder's weight: the LM head.
    pub(crate) decoder: &'static str,
    /// The head applies exact GELU whatever `hidden_act` says (RoBERTa's `lm_head`).
    pub(crate) head_gelu: bool,
    /// The decoder's own bias, which transformers ties to `head_bias` only while the head is
    /// tied: (its name, `head_bias`), written by an export of an untied head (BERT, RoBERTa).
    pub(crate) untied_extras: &'static [(&'static str, &'static str)],
}

impl EncLayout {
    /// The module path of stored layer `stored`.
    fn stored_path(&self, cfg: &ModelConfig, stored: usize) -> String {
        match (self.inner, sharing(cfg)) {
            (Some(inner), Some(s)) => format!(
                "{}.{}.{inner}.{}",
                self.blocks,
                stored / s.inner,
                stored % s.inner
            ),
            _ => format!("{}.{stored}", self.blocks),
        }
    }

    /// The module path of the weights block `layer` runs.
    fn block_path(&self, cfg: &ModelConfig, layer: usize) -> String {
        self.stored_path(cfg, stored(cfg, layer))
    }

    fn module_of(&self, p: Proj) -> &'static str {
        self.linears
            .iter()
            .find(|(q, _)| *q == p)
            .map_or("?", |(_, m)| *m)
    }

    pub(crate) fn weight_name_of(&self, cfg: &ModelConfig, id: LinearId) -> String {
        let module = self.module_of(id.proj);
        format!("{}.{module}.weight", self.block_path(cfg, id.layer))
    }

    /// Rows of the position table: the usable positions plus RoBERTa's offset.
    fn position_rows(cfg: &ModelConfig) -> usize {
        cfg.max_position_embeddings + position_offset(cfg)
    }

    /// Every tensor of the model, by name, with its shape; a shared layer's once.
    pub(crate) fn all_tensors(&self, cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        let (h, v, e) = (cfg.hidden_size, cfg.vocab_size, embedding_width(cfg));
        let mut out = vec![
            (self.word.to_string(), vec![v, e]),
            (
                self.positions.to_string(),
                vec![Self::position_rows(cfg), e],
            ),
        ];
        let types = cfg.encoder.as_ref().map_or(0, |e| e.type_vocab_size);
        if let (Some(name), true) = (self.token_types, types > 0) {
            out.push((name.to_string(), vec![types, e]));
        }
        let norm = |out: &mut Vec<(String, Vec<usize>)>, path: &str, width: usize| {
            out.push((format!("{path}.weight"), vec![width]));
            out.push((format!("{path}.bias"), vec![width]));
        };
        let dense = |out: &mut Vec<(String, Vec<usize>)>, path: &str, rows: usize, cols| {
            out.push((format!("{path}.weight"), vec![rows, cols]));
            out.push((format!("{path}.bias"), vec![rows]));
        };
        norm(&mut out, self.embed_norm, e);
        if let Some(proj) = self.embed_proj {
            dense(&mut out, proj, h, e);
        }
        for l in 0..stored_count(cfg) {
            let path = self.stored_path(cfg, l);
            for (p, module) in self.linears {
                let (rows, cols) = linear_shape(cfg, *p);
                out.push((format!("{path}.{module}.bias"), vec![rows]));
                out.push((format!("{path}.{module}.weight"), vec![rows, cols]));
            }
            for n in self.norms {
                norm(&mut out, &format!("{path}.{n}"), h);
            }
        }
        dense(&mut out, self.head_dense, e, h);
        norm(&mut out, self.head_norm, e);
        out.push((self.head_bias.to_string(), vec![v]));
        if !cfg.tie_word_embeddings {
            out.push((self.decoder.to_string(), vec![v, e]));
        }
        out
    }
}

fn sharing(cfg: &ModelConfig) -> Option<crate::model::config::LayerSharing> {
    cfg.encoder.as_ref().and_then(|e| e.sharing)
}

/// The stored layer block `layer` runs.
fn stored(cfg: &ModelConfig, layer: usize) -> usize {
    cfg.encoder.as_ref().map_or(layer, |e| e.stored(layer))
}

/// How many layers the checkpoint stores.
fn stored_count(cfg: &ModelConfig) -> usize {
    sharing(cfg).map_or(cfg.num_layers, |s| s.stored_count())
}

/// The width of the embeddings and of the head's output side.
fn embedding_width(cfg: &ModelConfig) -> usize {
    cfg.encoder
        .as_ref()
        .and_then(|e| e.embedding_size)
        .unwrap_or(cfg.hidden_size)
}

fn position_offset(cfg: &ModelConfig) -> usize {
    cfg.encoder
        .as_ref()
        .and_then(|e| e.padding_idx)
        .map_or(0, |p| p + 1)
}

/// A linear layer's shape in nn.Linear's layout (out, in).
fn linear_shape(cfg: &ModelConfig, p: Proj) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    match p {
        Proj::Up | Proj::Gate => (i, h),
        Proj::Down => (h, i),
        Proj::Qkv => (3 * h, h),
        Proj::Q | Proj::K | Proj::V | Proj::O => (h, h),
        Proj::CrossQ | Proj::CrossK | Proj::CrossV | Proj::CrossO => {
            unreachable!("an encoder has no cross-attention")
        }
    }
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::GeluTanh => x.gelu()?,
        Activation::GeluErf => x.gelu_erf()?,
        Activation::Relu => x.relu()?,
        Activation::Silu => candle_nn::ops::silu(x)?,
    })
}

#[derive(Debug, Clone)]
struct Block {
    /// In the order the block runs them.
    linears: Vec<(Proj, Linear)>,
    /// After attention, after the MLP.
    norms: [Norm; 2],
}

impl BlockLinears for Block {
    fn linear_mut(&mut self, p: Proj) -> Option<&mut Linear> {
        linear_by_role(&mut self.linears, p)
    }
}

/// The stored layer under module path `path`.
fn build_block(
    layout: &EncLayout,
    path: &str,
    get: &dyn Fn(&str) -> Result<Tensor>,
) -> Result<Block> {
    let mut linears = Vec::new();
    for (p, module) in layout.linears {
        let name = format!("{path}.{module}.weight");
        linears.push((*p, Linear::new(get(&name)?, Some(get(&bias_name(&name))?))));
    }
    let [a, b] = layout.norms;
    Ok(Block {
        linears,
        norms: [
            Norm::read(&format!("{path}.{a}"), get)?,
            Norm::read(&format!("{path}.{b}"), get)?,
        ],
    })
}

/// A BERT, RoBERTa or DistilBERT masked language model.
pub struct Encoder {
    cfg: ModelConfig,
    layout: EncLayout,
    word: Tensor,
    positions: Tensor,
    /// Row 0 of the token type embeddings, [hidden].
    token_type: Option<Tensor>,
    embed_norm: Norm,
    /// ALBERT's map from the embeddings' width into the blocks'.
    embed_proj: Option<Linear>,
    /// Stored layers (block `l` runs stored layer [`stored`]`(l)`).
    blocks: BlockStore<Block>,
    head_dense: Linear,
    head_norm: Norm,
    /// Weight tied to `word` unless replaced; bias the head's.
    decoder: Linear,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("family", &self.layout.name)
            .field("layers", &self.cfg.num_layers)
            .field("blocks", &self.blocks)
            .finish()
    }
}

impl Encoder {
    /// Builds the model from tensors under their checkpoint names; every tensor must have the
    /// config's shape and one dtype on one device.
    pub(crate) fn new(cfg: &ModelConfig, layout: &EncLayout, weights: &TensorMap) -> Result<Self> {
        check_weights(layout, cfg, weights)?;
        let get = |name: &str| Ok(weights[name].clone());
        // A shared layer is held once, whatever the number of blocks that run it.
        let blocks = (0..stored_count(cfg))
            .map(|l| {
                Ok(Arc::new(build_block(
                    layout,
                    &layout.stored_path(cfg, l),
                    &get,
                )?))
            })
            .collect::<Result<_>>()?;
        let head = weights.get(layout.decoder).cloned();
        Self::assemble(cfg, layout, &get, head, BlockStore::Resident(blocks))
    }

    /// The model with embeddings and head read now and each block read from `source` when it
    /// runs (its dynamic-int8 linears too).
    pub(crate) fn streamed(
        cfg: &ModelConfig,
        layout: &EncLayout,
        source: Arc<dyn TensorSource>,
    ) -> Result<Self> {
        let get = |name: &str| source.held(name);
        let head = stored_head(source.as_ref(), layout.decoder)?;
        let blocks = BlockStore::streamed(source.clone());
        let mut model = Self::assemble(cfg, layout, &get, head, blocks)?;
        read_int8(
            source.as_ref(),
            layout.decoder,
            &mut model.decoder,
            &model.device,
        )?;
        Ok(model)
    }

    fn assemble(
        cfg: &ModelConfig,
        layout: &EncLayout,
        get: &dyn Fn(&str) -> Result<Tensor>,
        head: Option<Tensor>,
        blocks: BlockStore<Block>,
    ) -> Result<Self> {
        let word = get(layout.word)?;
        let (dtype, device) = (word.dtype(), word.device().clone());
        check_dtype(dtype)?;
        // A compression stage that changed the head of a tied model stores it: from then on the
        // head is its own matrix.
        let head = match head {
            Some(w) => w,
            None if cfg.tie_word_embeddings => word.clone(),
            None => return Err(missing_tensor(layout.decoder)),
        };
        let types = cfg.encoder.as_ref().map_or(0, |e| e.type_vocab_size);
        let token_type = match layout.token_types {
            Some(name) if types > 0 => Some(get(name)?.get(0)?),
            _ => None,
        };
        let dense = |path: &str| -> Result<Linear> {
            Ok(Linear::new(
                get(&format!("{path}.weight"))?,
                Some(get(&format!("{path}.bias"))?),
            ))
        };
        Ok(Encoder {
            cfg: cfg.clone(),
            layout: *layout,
            positions: get(layout.positions)?,
            token_type,
            embed_norm: Norm::read(layout.embed_norm, get)?,
            embed_proj: layout.embed_proj.map(dense).transpose()?,
            blocks,
            head_dense: dense(layout.head_dense)?,
            head_norm: Norm::read(layout.head_norm, get)?,
            decoder: Linear::new(head, Some(get(layout.head_bias)?)),
            word,
            dtype,
            device,
        })
    }

    /// The same model with the named linear layer running as a dynamic int8 layer with these
    /// int8 weights (nn.Linear's layout).
    pub(crate) fn with_dynamic_int8(
        mut self,
        name: &str,
        weight: crate::compress::dynint8::Int8Weight,
    ) -> Result<Self> {
        let head = (name == self.layout.decoder).then_some(&mut self.decoder);
        // The store holds stored layers: a shared one is set once for every block running it.
        let id = self
            .layout
            .linear_id(&self.cfg, name)
            .map(|id| LinearId::new(stored(&self.cfg, id.layer), id.proj));
        self.blocks
            .set_dynamic_int8(head, id, name, weight, &self.device)?;
        Ok(self)
    }

    fn block(&self, layer: usize) -> Result<Arc<Block>> {
        let path = self.layout.block_path(&self.cfg, layer);
        let linears = || {
            self.layout
                .linears
                .iter()
                .map(|(p, module)| (*p, format!("{path}.{module}.weight")))
                .collect()
        };
        let count = stored_count(&self.cfg);
        let stored = stored(&self.cfg, layer);
        self.blocks
            .block(stored, count, &self.device, linears, |get| {
                build_block(&self.layout, &path, get)
            })
    }

    /// Token ids [batch, seq] (u32) → embeddings after their LayerNorm; `lengths` (one per row)
    /// says where each row's padding starts, `None` for unpadded rows.
    fn embed_rows(&self, tokens: &Tensor, lengths: Option<&[usize]>) -> Result<Tensor> {
        let (b, s) = token_shape(tokens, self.cfg.vocab_size)?;
        if s > self.cfg.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "{s} positions exceed the model's {} learned positions",
                self.cfg.max_position_embeddings
            )));
        }
        let h = embedding_width(&self.cfg);
        let tok = self
            .word
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, s, h))?;
        let padding_idx = self.cfg.encoder.as_ref().and_then(|e| e.padding_idx);
        let mut rows = Vec::with_capacity(b * s);
        for row in 0..b {
            let len = lengths.map_or(s, |l| l[row]);
            for p in 0..s {
                rows.push(match padding_idx {
                    None => p as u32,
                    Some(pad) if p < len => (pad + 1 + p) as u32,
                    Some(pad) => pad as u32,
                });
            }
        }
        let rows = Tensor::from_vec(rows, b * s, &self.device)?;
        let pos = self.positions.index_select(&rows, 0)?.reshape((b, s, h))?;
        let mut x = (tok + pos)?;
        if let Some(t) = &self.token_type {
            x = x.broadcast_add(t)?;
        }
        let x = self.embed_norm.forward(&x, self.cfg.layer_norm_eps)?;
        match &self.embed_proj {
            Some(proj) => Ok(proj.forward(&x)?),
            None => Ok(x),
        }
    }

    /// Runs block `layer` on `x` [batch, seq, hidden]; `mask` [batch, 1, 1, seq] (additive, 0 or
    /// −∞) hides padded keys.
    fn run_block(
        &self,
        layer: usize,
        x: &Tensor,
        mask: Option<&Tensor>,
        mut capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        let (b, s) = check_block_input(&self.cfg, layer, x, 0, None)?;
        let block = self.block(layer)?;
        let mut apply =
            |p: Proj, input: &Tensor| apply_linear(&block.linears, layer, p, input, &mut capture);
        let (nh, hd) = (self.cfg.num_heads, self.cfg.head_dim);
        let eps = self.cfg.layer_norm_eps;
        let heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, s, nh, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(apply(Proj::Q, x)?)?;
        let k = heads(apply(Proj::K, x)?)?;
        let v = heads(apply(Proj::V, x)?)?;
        let attn = attention(&q, &k, &v, (hd as f64).sqrt(), mask, self.dtype)?;
        let attn = attn.transpose(1, 2)?.reshape((b, s, nh * hd))?;
        let x = block.norms[0].forward(&(x + apply(Proj::O, &attn)?)?, eps)?;
        let act = activate(&apply(Proj::Up, &x)?, self.cfg.activation)?;
        block.norms[1].forward(&(&x + apply(Proj::Down, &act)?)?, eps)
    }

    /// The additive key mask [batch, 1, 1, seq] for rows of `lengths` real tokens.
    fn key_mask(&self, b: usize, s: usize, lengths: &[usize]) -> Result<Tensor> {
        if lengths.len() != b {
            return Err(ModelError::Invalid(format!(
                "{} lengths for a batch of {b} sequences",
                lengths.len()
            )));
        }
        if let Some(bad) = lengths.iter().find(|&&l| l == 0 || l > s) {
            return Err(ModelError::Invalid(format!(
                "length {bad} is outside 1..={s} (the padded sequence length)"
            )));
        }
        let acc = accumulation_dtype(self.dtype);
        let values: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..s).map(move |j| if j < l { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        Ok(Tensor::from_vec(values, (b, 1, 1, s), &self.device)?.to_dtype(acc)?)
    }

    /// Token ids [batch, seq] → embeddings of unpadded rows.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        self.embed_rows(tokens, None)
    }

    /// Block `layer` on unpadded rows (every position sees every other); `pos` must be 0 and
    /// `cache` absent: an encoder reads whole sequences at once.
    pub fn block_forward(
        &self,
        layer: usize,
        x: &Tensor,
        pos: usize,
        cache: Option<&mut LayerKvCache>,
        capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        if pos != 0 || cache.is_some() {
            return Err(ModelError::Invalid(format!(
                "{} is an encoder: it has no KV cache and runs whole sequences from position 0",
                self.layout.name
            )));
        }
        self.run_block(layer, x, None, capture)
    }

    /// The masked-LM head: hidden states → logits [batch, seq, vocab] in f32.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let act = if self.layout.head_gelu {
            Activation::GeluErf
        } else {
            self.cfg.activation
        };
        let x = activate(&self.head_dense.forward(x)?, act)?;
        let x = self.head_norm.forward(&x, self.cfg.layer_norm_eps)?;
        Ok(self.decoder.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// Logits [batch, seq, vocab] (f32) at every position; row `b` holds `lengths[b]` real
    /// tokens followed by padding no position attends to.
    pub fn forward_masked(&self, tokens: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (b, s) = tokens.dims2().map_err(|_| {
            ModelError::Invalid(format!(
                "token ids must be [batch, seq], got shape {:?}",
                tokens.dims()
            ))
        })?;
        let mask = self.key_mask(b, s, lengths)?;
        let mut x = self.embed_rows(tokens, Some(lengths))?;
        for layer in 0..self.num_layers() {
            x = self.run_block(layer, &x, Some(&mask), None)?;
        }
        self.head(&x)
    }
}

/// Bidirectional scaled dot-product attention in f32 (f64 for f64): q, k, v [b, heads, s, hd]
/// → [b, heads, s, hd] in `dtype`, scores divided by `divisor`, `mask` added to them.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    divisor: f64,
    mask: Option<&Tensor>,
    dtype: DType,
) -> Result<Tensor> {
    let acc = accumulation_dtype(dtype);
    let (q, k, v) = (q.to_dtype(acc)?, k.to_dtype(acc)?, v.to_dtype(acc)?);
    let mut scores = (q.matmul(&k.t()?)? / divisor)?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(m)?;
    }
    // The fused softmax kernel has no backward: training takes the differentiable one.
    let probs = if scores.track_op() {
        softmax_last_dim_differentiable(&scores)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    Ok(probs.matmul(&v.contiguous()?)?.to_dtype(dtype)?)
}

impl Blocks for Encoder {
    delegate!(Blocks runtime);
}

impl MaskedLm for Encoder {
    delegate!(MaskedLm [] []);
}
