//! The GPT-2 / OPT runtime: a pre-LayerNorm decoder with learned positions.
//!
//! Both families run embedding + positions → blocks (LayerNorm, multi-head attention with biases,
//! residual; LayerNorm, MLP, residual) → final LayerNorm → LM head. They differ in names, in
//! GPT-2's fused `c_attn` ([`Proj::Qkv`]) stored as `Conv1D`, in OPT's position offset of 2 and
//! in where the attention scale is applied (OPT scales q before the product); each family module
//! describes its own with an [`LnLayout`]. As [`crate::model::Llama`], the model is immutable,
//! KV caches are passed in, and [`LnDecoder::block_forward`] shows every linear layer's input.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::config::{Activation, ModelConfig};
use super::error::{ModelError, Result};
use super::family::Architecture;
use super::lm::{delegate, Blocks, CausalLm};
use super::parts::{apply_linear, read_int8, stored_head};
use super::parts::{
    causal_attention, check_block_input, check_dtype, check_weights, layer_norm, missing_tensor,
    BlockStore, Capture, KvCache, LayerKvCache, Linear, Proj,
};
use super::parts::{linear_by_role, token_shape, BlockLinears};
use super::reader::TensorSource;
use super::weights::TensorMap;

/// What a family tells the runtime besides its [`Architecture`].
pub(crate) struct LnLayout {
    pub arch: &'static dyn Architecture,
    /// The learned position embedding's weight.
    pub positions: &'static str,
    /// Row of the position embedding that position 0 reads (OPT: 2).
    pub position_offset: usize,
    /// The final LayerNorm's module path (`.weight`, `.bias` appended).
    pub final_norm: &'static str,
    /// Block `l`'s two LayerNorms' module paths: before attention, before the MLP.
    pub norms: fn(usize) -> [String; 2],
    /// Scale q by head_dim^-½ before the product with k (OPT) rather than the scores after it.
    pub prescale_q: bool,
    /// The module paths of the bias-free linear layers that map embeddings of
    /// `word_embed_dim` into the blocks and back ([`ModelConfig::word_embed_dim`]).
    pub projections: Option<(&'static str, &'static str)>,
}

impl LnLayout {
    fn bias(&self, cfg: &ModelConfig, p: Proj) -> bool {
        match p {
            Proj::O | Proj::CrossO => cfg.o_bias,
            Proj::Up | Proj::Down | Proj::Gate => cfg.mlp_bias,
            Proj::Q | Proj::K | Proj::V | Proj::Qkv => cfg.qkv_bias,
            Proj::CrossQ | Proj::CrossK | Proj::CrossV => cfg.qkv_bias,
        }
    }

    /// The tensors of block `l`, by name, with their shapes as stored.
    pub(crate) fn block_tensors(&self, cfg: &ModelConfig, l: usize) -> Vec<(String, Vec<usize>)> {
        let h = cfg.hidden_size;
        let mut out = Vec::new();
        let [ln1, ln2] = (self.norms)(l);
        for id in self.arch.block_linears(cfg, l) {
            let (rows, cols) = linear_shape(cfg, id.proj);
            let name = self.arch.weight_name(cfg, id);
            let shape = if self.arch.conv1d(&name) {
                vec![cols, rows]
            } else {
                vec![rows, cols]
            };
            if self.bias(cfg, id.proj) {
                out.push((bias_name(&name), vec![rows]));
            }
            out.push((name, shape));
        }
        for norm in [ln1, ln2] {
            out.push((format!("{norm}.weight"), vec![h]));
            out.push((format!("{norm}.bias"), vec![h]));
        }
        out
    }

    /// Every tensor of the model, by name, with its shape as stored.
    pub(crate) fn tensors(&self, cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        let h = cfg.hidden_size;
        let e = cfg.word_embed_dim.unwrap_or(h);
        let mut out = vec![
            (self.arch.embed_name().to_string(), vec![cfg.vocab_size, e]),
            (
                self.positions.to_string(),
                vec![cfg.max_position_embeddings + self.position_offset, h],
            ),
        ];
        if let Some((p_in, p_out)) = self.projections(cfg) {
            out.push((format!("{p_in}.weight"), vec![h, e]));
            out.push((format!("{p_out}.weight"), vec![e, h]));
        }
        for l in 0..cfg.num_layers {
            out.extend(self.block_tensors(cfg, l));
        }
        if !cfg.post_norm {
            out.push((format!("{}.weight", self.final_norm), vec![h]));
            out.push((format!("{}.bias", self.final_norm), vec![h]));
        }
        if !cfg.tie_word_embeddings {
            out.push((self.arch.head_name().to_string(), vec![cfg.vocab_size, e]));
        }
        out
    }

    /// The projections' module paths when the config's embeddings need them.
    fn projections(&self, cfg: &ModelConfig) -> Option<(&'static str, &'static str)> {
        cfg.word_embed_dim.and(self.projections)
    }
}

/// A linear layer's shape in nn.Linear's layout (out, in).
fn linear_shape(cfg: &ModelConfig, p: Proj) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    match p {
        Proj::Qkv => (3 * h, h),
        Proj::Q | Proj::K | Proj::V | Proj::O => (h, h),
        Proj::CrossQ | Proj::CrossK | Proj::CrossV | Proj::CrossO => (h, h),
        Proj::Up | Proj::Gate => (i, h),
        Proj::Down => (h, i),
    }
}

pub(crate) fn bias_name(weight: &str) -> String {
    let module = weight.strip_suffix(".weight").unwrap_or(weight);
    format!("{module}.bias")
}

/// A LayerNorm with weight and bias (the encoders' too).
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    pub(crate) fn read(path: &str, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<Norm> {
        Ok(Norm {
            weight: get(&format!("{path}.weight"))?,
            bias: get(&format!("{path}.bias"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, eps)
    }
}

#[derive(Debug, Clone)]
struct Block {
    ln1: Norm,
    ln2: Norm,
    /// In the order the block runs them.
    linears: Vec<(Proj, Linear)>,
}

impl BlockLinears for Block {
    fn linear_mut(&mut self, p: Proj) -> Option<&mut Linear> {
        linear_by_role(&mut self.linears, p)
    }
}

/// A GPT-2 or OPT causal language model.
pub struct LnDecoder {
    cfg: ModelConfig,
    layout: &'static LnLayout,
    embed: Tensor,
    positions: Tensor,
    blocks: BlockStore<Block>,
    /// Absent in a post-LayerNorm decoder.
    final_norm: Option<Norm>,
    /// `project_in` and `project_out` (nn.Linear's layout), when embeddings are narrower.
    projections: Option<(Tensor, Tensor)>,
    lm_head: Linear,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for LnDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LnDecoder")
            .field("family", &self.layout.arch.name())
            .field("layers", &self.cfg.num_layers)
            .field("blocks", &self.blocks)
            .finish()
    }
}

impl LnDecoder {
    /// Builds the model from tensors under their checkpoint names and layouts; every tensor
    /// must have the config's shape and one dtype on one device.
    pub(crate) fn new(
        cfg: &ModelConfig,
        layout: &'static LnLayout,
        weights: &TensorMap,
    ) -> Result<LnDecoder> {
        check_weights(layout.arch, cfg, weights)?;
        let get = |name: &str| Ok(weights[name].clone());
        let blocks = (0..cfg.num_layers)
            .map(|l| Ok(Arc::new(build_block(cfg, layout, l, &get)?)))
            .collect::<Result<_>>()?;
        let head = weights.get(layout.arch.head_name()).cloned();
        Self::assemble(cfg, layout, &get, head, BlockStore::Resident(blocks))
    }

    /// The model with embeddings, final norm and head read now and each block read from
    /// `source` when it runs (its dynamic-int8 linears too).
    pub(crate) fn streamed(
        cfg: &ModelConfig,
        layout: &'static LnLayout,
        source: Arc<dyn TensorSource>,
    ) -> Result<LnDecoder> {
        let get = |name: &str| source.held(name);
        let head_name = layout.arch.head_name();
        let head = stored_head(source.as_ref(), head_name)?;
        let blocks = BlockStore::streamed(source.clone());
        let mut model = Self::assemble(cfg, layout, &get, head, blocks)?;
        read_int8(
            source.as_ref(),
            head_name,
            &mut model.lm_head,
            &model.device,
        )?;
        Ok(model)
    }

    fn assemble(
        cfg: &ModelConfig,
        layout: &'static LnLayout,
        get: &dyn Fn(&str) -> Result<Tensor>,
        head: Option<Tensor>,
        blocks: BlockStore<Block>,
    ) -> Result<LnDecoder> {
        let embed = get(layout.arch.embed_name())?;
        let (dtype, device) = (embed.dtype(), embed.device().clone());
        check_dtype(dtype)?;
        // A compression stage that changed the head of a tied model stores it: from then on the
        // head is its own matrix.
        let head = match head {
            Some(w) => w,
            None if cfg.tie_word_embeddings => embed.clone(),
            None => return Err(missing_tensor(layout.arch.head_name())),
        };
        let final_norm = match cfg.post_norm {
            true => None,
            false => Some(Norm::read(layout.final_norm, get)?),
        };
        let projections = match layout.projections(cfg) {
            Some((p_in, p_out)) => Some((
                get(&format!("{p_in}.weight"))?,
                get(&format!("{p_out}.weight"))?,
            )),
            None => None,
        };
        Ok(LnDecoder {
            cfg: cfg.clone(),
            layout,
            positions: get(layout.positions)?,
            final_norm,
            projections,
            lm_head: Linear::new(head, None),
            embed,
            blocks,
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
        let head = (name == self.layout.arch.head_name()).then_some(&mut self.lm_head);
        let id = self.layout.arch.linear_id(&self.cfg, name);
        self.blocks
            .set_dynamic_int8(head, id, name, weight, &self.device)?;
        Ok(self)
    }

    fn block(&self, layer: usize) -> Result<Arc<Block>> {
        let linears = || {
            self.layout
                .arch
                .block_linears(&self.cfg, layer)
                .into_iter()
                .map(|id| (id.proj, self.layout.arch.weight_name(&self.cfg, id)))
                .collect()
        };
        self.blocks
            .block(layer, self.cfg.num_layers, &self.device, linears, |get| {
                build_block(&self.cfg, self.layout, layer, get)
            })
    }

    /// Token ids [batch, seq] (u32) → token plus position embeddings, positions from 0.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        self.embed_at(tokens, 0)
    }

    /// Token embeddings plus those of positions `pos..pos + seq`.
    fn embed_at(&self, tokens: &Tensor, pos: usize) -> Result<Tensor> {
        let (b, s) = token_shape(tokens, self.cfg.vocab_size)?;
        if pos + s > self.cfg.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "positions up to {} exceed the model's {} learned positions",
                pos + s,
                self.cfg.max_position_embeddings
            )));
        }
        let tok = self.embed.index_select(&tokens.flatten_all()?, 0)?;
        let tok = match &self.projections {
            Some((p_in, _)) => tok.matmul(&p_in.t()?)?,
            None => tok,
        };
        let tok = tok.reshape((b, s, self.cfg.hidden_size))?;
        let positions = self
            .positions
            .narrow(0, self.layout.position_offset + pos, s)?;
        Ok(tok.broadcast_add(&positions)?)
    }

    /// Runs block `layer` on hidden states `x` [batch, seq, hidden] whose first token sits at
    /// absolute position `pos`, attending to and extending `cache` if given; `capture` receives
    /// each linear layer's input just before it is applied.
    pub fn block_forward(
        &self,
        layer: usize,
        x: &Tensor,
        pos: usize,
        cache: Option<&mut LayerKvCache>,
        mut capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        let block = self.block(layer)?;
        let (b, s) = check_block_input(&self.cfg, layer, x, pos, cache.as_deref())?;
        let h = self.cfg.hidden_size;
        let mut apply =
            |p: Proj, input: &Tensor| apply_linear(&block.linears, layer, p, input, &mut capture);
        let (nh, hd) = (self.cfg.num_heads, self.cfg.head_dim);
        let eps = self.cfg.layer_norm_eps;

        // Pre-LayerNorm normalizes each sublayer's input, post-LayerNorm each residual sum.
        let pre = |norm: &Norm, x: &Tensor| match self.cfg.post_norm {
            true => Ok(x.clone()),
            false => norm.forward(x, eps),
        };
        let post = |norm: &Norm, x: Tensor| match self.cfg.post_norm {
            true => norm.forward(&x, eps),
            false => Ok(x),
        };
        let normed = pre(&block.ln1, x)?;
        let (q, k, v) = if block.linears.iter().any(|(p, _)| *p == Proj::Qkv) {
            let qkv = apply(Proj::Qkv, &normed)?;
            (
                qkv.narrow(2, 0, h)?,
                qkv.narrow(2, h, h)?,
                qkv.narrow(2, 2 * h, h)?,
            )
        } else {
            (
                apply(Proj::Q, &normed)?,
                apply(Proj::K, &normed)?,
                apply(Proj::V, &normed)?,
            )
        };
        let (q, divisor) = if self.layout.prescale_q {
            ((q * (hd as f64).powf(-0.5))?, 1.0)
        } else {
            (q, (hd as f64).sqrt())
        };
        let heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, s, nh, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
        let (k, v) = match cache {
            Some(c) => c.append(k, v)?,
            None => (k, v),
        };
        let attn = causal_attention(&q, &k, &v, divisor, None, self.dtype)?;
        let attn = attn.transpose(1, 2)?.reshape((b, s, nh * hd))?;
        let x = post(&block.ln1, (x + apply(Proj::O, &attn)?)?)?;

        let normed = pre(&block.ln2, &x)?;
        let up = apply(Proj::Up, &normed)?;
        let act = match self.cfg.activation {
            Activation::GeluTanh => up.gelu()?,
            Activation::GeluErf => up.gelu_erf()?,
            Activation::Relu => up.relu()?,
            Activation::Silu => candle_nn::ops::silu(&up)?,
        };
        post(&block.ln2, (x + apply(Proj::Down, &act)?)?)
    }

    /// Final LayerNorm (if any), `project_out` (if any) and LM head: hidden states → logits
    /// [batch, seq, vocab] in f32.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.final_norm {
            Some(norm) => norm.forward(x, self.cfg.layer_norm_eps)?,
            None => x.clone(),
        };
        let x = match &self.projections {
            Some((_, p_out)) => x.broadcast_matmul(&p_out.t()?)?,
            None => x,
        };
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// Logits [batch, seq, vocab] (f32) for every position of `tokens` [batch, seq].
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(tokens)?;
        for layer in 0..self.num_layers() {
            x = self.block_forward(layer, &x, 0, None, None)?;
        }
        self.head(&x)
    }

    /// Logits for `tokens` continuing the sequence held in `cache`, which is then extended.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.layers.len() != self.num_layers() {
            return Err(ModelError::Invalid(format!(
                "KV cache has {} layers, the model {}",
                cache.layers.len(),
                self.num_layers()
            )));
        }
        let pos = cache.pos;
        let mut x = self.embed_at(tokens, pos)?;
        for (layer, c) in cache.layers.iter_mut().enumerate() {
            x = self.block_forward(layer, &x, pos, Some(c), None)?;
        }
        cache.pos += tokens.dims()[1];
        self.head(&x)
    }
}

/// Block `l` from its tensors, found by `get` under their checkpoint names; `Conv1D` weights
/// are turned to nn.Linear's layout.
fn build_block(
    cfg: &ModelConfig,
    layout: &LnLayout,
    l: usize,
    get: &dyn Fn(&str) -> Result<Tensor>,
) -> Result<Block> {
    let [ln1, ln2] = (layout.norms)(l);
    let mut linears = Vec::new();
    for id in layout.arch.block_linears(cfg, l) {
        let name = layout.arch.weight_name(cfg, id);
        let w = get(&name)?;
        // A view, not a copy: the trainer's variables must stay the weights the model reads.
        let w = if layout.arch.conv1d(&name) { w.t()? } else { w };
        let bias = if layout.bias(cfg, id.proj) {
            Some(get(&bias_name(&name))?)
        } else {
            None
        };
        linears.push((id.proj, Linear::new(w, bias)));
    }
    Ok(Block {
        ln1: Norm::read(&ln1, get)?,
        ln2: Norm::read(&ln2, get)?,
        linears,
    })
}

/// The [`Architecture`] methods every LayerNorm decoder family spells the same way, from its
/// embedding and head names, its block's linear layers (`(Proj, module path)` in run order), its
/// [`LnLayout`] and the path of its blocks (`transformer.h` → `transformer.h.N.<module>.weight`).
macro_rules! ln_family_methods {
    ($embed:expr, $head:expr, $linears:expr, $layout:expr, $blocks:literal) => {
        fn embed_name(&self) -> &'static str {
            $embed
        }

        fn head_name(&self) -> &'static str {
            $head
        }

        fn tied(&self, cfg: &$crate::model::config::ModelConfig) -> bool {
            cfg.tie_word_embeddings
        }

        fn block_linears(
            &self,
            _cfg: &$crate::model::config::ModelConfig,
            layer: usize,
        ) -> Vec<$crate::model::parts::LinearId> {
            $linears
                .iter()
                .map(|(p, _)| $crate::model::parts::LinearId::new(layer, *p))
                .collect()
        }

        fn weight_name(
            &self,
            _cfg: &$crate::model::config::ModelConfig,
            id: $crate::model::parts::LinearId,
        ) -> String {
            let module = $linears
                .iter()
                .find(|(p, _)| *p == id.proj)
                .map_or("?", |(_, m)| *m);
            format!(concat!($blocks, ".{}.{}.weight"), id.layer, module)
        }

        fn tensors(&self, cfg: &$crate::model::config::ModelConfig) -> Vec<(String, Vec<usize>)> {
            $layout.tensors(cfg)
        }

        fn gguf_name(&self, _hf: &str) -> Option<String> {
            None
        }

        fn build(
            &self,
            cfg: &$crate::model::config::ModelConfig,
            weights: &$crate::model::weights::TensorMap,
            int8: Vec<(String, $crate::compress::dynint8::Int8Weight)>,
        ) -> $crate::model::error::Result<$crate::model::lm::LanguageModel> {
            let mut model = $crate::model::decoder::LnDecoder::new(cfg, &$layout, weights)?;
            for (name, weight) in int8 {
                model = model.with_dynamic_int8(&name, weight)?;
            }
            Ok($crate::model::lm::LanguageModel::Causal(Box::new(model)))
        }

        fn build_streamed(
            &self,
            cfg: &$crate::model::config::ModelConfig,
            source: std::sync::Arc<dyn $crate::model::TensorSource>,
        ) -> $crate::model::error::Result<$crate::model::lm::LanguageModel> {
            let model = $crate::model::decoder::LnDecoder::streamed(cfg, &$layout, source)?;
            Ok($crate::model::lm::LanguageModel::Causal(Box::new(model)))
        }
    };
}
pub(crate) use ln_family_methods;

impl Blocks for LnDecoder {
    delegate!(Blocks runtime);
}

impl CausalLm for LnDecoder {
    delegate!(CausalLm [] []);
}
