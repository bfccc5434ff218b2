//! What the runtimes share: linear layers by role ([`Proj`], [`LinearId`]), the capture hook,
//! linears in floating point or as dynamic int8, KV caches, blocks held or streamed (with their
//! int8 linears), token-id checks, and causal attention.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Tensor, D};
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::family::ModuleGroup;
use super::reader::TensorSource;

/// The role of a linear layer inside a decoder block, the same in every family: LLaMA has all
/// but [`Proj::Qkv`]; GPT-2 fuses q, k and v into `c_attn` ([`Proj::Qkv`]) and has `c_proj`
/// ([`Proj::O`]), `c_fc` ([`Proj::Up`]) and `mlp.c_proj` ([`Proj::Down`]); OPT has q, k, v,
/// `out_proj` ([`Proj::O`]), `fc1` ([`Proj::Up`]) and `fc2` ([`Proj::Down`]). T5's decoder
/// blocks add cross-attention ([`Proj::CrossQ`] … [`Proj::CrossO`]); its feed-forward `wi` is
/// [`Proj::Up`], gated `wi_0` / `wi_1` are [`Proj::Gate`] / [`Proj::Up`], `wo` is [`Proj::Down`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    /// q, k and v in one matrix (GPT-2's `c_attn`).
    Qkv,
    /// Cross-attention's query (T5's `EncDecAttention.q`): reads the decoder's states.
    CrossQ,
    /// Cross-attention's key: reads the encoder's output.
    CrossK,
    /// Cross-attention's value: reads the encoder's output.
    CrossV,
    /// Cross-attention's output projection.
    CrossO,
}

impl Proj {
    /// The seven linear layers of a LLaMA block, in the order they run.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// Every role, for parsing names.
    const ROLES: [Proj; 12] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
        Proj::Qkv,
        Proj::CrossQ,
        Proj::CrossK,
        Proj::CrossV,
        Proj::CrossO,
    ];

    pub fn group(self) -> ModuleGroup {
        match self {
            Proj::Q | Proj::K | Proj::V | Proj::O | Proj::Qkv => ModuleGroup::Attention,
            Proj::CrossQ | Proj::CrossK | Proj::CrossV | Proj::CrossO => ModuleGroup::Attention,
            Proj::Gate | Proj::Up | Proj::Down => ModuleGroup::Mlp,
        }
    }

    /// The role's name, LLaMA's module name where it has one: `q_proj`, ..., `down_proj`,
    /// `qkv_proj`.
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
            Proj::Qkv => "qkv_proj",
            Proj::CrossQ => "cross_q_proj",
            Proj::CrossK => "cross_k_proj",
            Proj::CrossV => "cross_v_proj",
            Proj::CrossO => "cross_o_proj",
        }
    }

    fn parent(self) -> &'static str {
        match self.group() {
            ModuleGroup::Attention => "self_attn",
            _ => "mlp",
        }
    }
}

/// One linear layer of a block, by role: `layers.{layer}.{proj}`. Its weight's name is the
/// family's ([`crate::model::Architecture::weight_name`]); the names below are LLaMA's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LinearId {
    pub layer: usize,
    pub proj: Proj,
}

impl LinearId {
    pub fn new(layer: usize, proj: Proj) -> Self {
        LinearId { layer, proj }
    }

    /// The LLaMA-family name of its weight, e.g. `model.layers.3.self_attn.q_proj.weight`.
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.module_path())
    }

    /// The LLaMA-family name of its bias (present only when the config has biases for it).
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.module_path())
    }

    /// The layer whose LLaMA-family weight is called `name`
    /// (`model.layers.3.self_attn.q_proj.weight`).
    pub fn from_weight_name(name: &str) -> Option<LinearId> {
        let rest = name
            .strip_prefix("model.layers.")?
            .strip_suffix(".weight")?;
        let (layer, path) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let id = Proj::ALL
            .into_iter()
            .map(|p| LinearId::new(layer, p))
            .find(|id| id.module_path() == format!("model.layers.{layer}.{path}"))?;
        Some(id)
    }

    fn module_path(&self) -> String {
        format!(
            "model.layers.{}.{}.{}",
            self.layer,
            self.proj.parent(),
            self.proj.name()
        )
    }
}

impl fmt::Display for LinearId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layers.{}.{}", self.layer, self.proj.name())
    }
}

impl FromStr for LinearId {
    type Err = String;

    /// Parses the [`Display`](fmt::Display) form, `layers.3.q_proj`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a linear layer name like `layers.3.q_proj`");
        let rest = s.strip_prefix("layers.").ok_or_else(bad)?;
        let (layer, name) = rest.split_once('.').ok_or_else(bad)?;
        let layer = layer.parse().map_err(|_| bad())?;
        let proj = Proj::ROLES
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(bad)?;
        Ok(LinearId { layer, proj })
    }
}

/// A hook given the input of each linear layer, [batch, seq, in_features], before it is applied.
pub type Capture<'a> = &'a mut dyn FnMut(LinearId, &Tensor);

/// The keys and values one block has seen so far (after RoPE), shaped [batch, kv_heads, len, head_dim].
#[derive(Debug, Clone, Default)]
pub struct LayerKvCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerKvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.kv.is_none()
    }

    /// Appends new keys/values and returns all of them.
    pub(crate) fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match self.kv.take() {
            None => (k, v),
            Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// The decoding state of a whole model: one cache per block and the next position.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerKvCache>,
    pub(crate) pos: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig) -> Self {
        KvCache {
            layers: vec![LayerKvCache::default(); cfg.num_layers],
            pos: 0,
        }
    }

    /// The position the next token will take.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn layer_mut(&mut self, layer: usize) -> Option<&mut LayerKvCache> {
        self.layers.get_mut(layer)
    }

    pub fn reset(&mut self) {
        self.layers
            .iter_mut()
            .for_each(|l| *l = LayerKvCache::default());
        self.pos = 0;
    }
}

/// A linear layer, nn.Linear's layout (weight out × in), in floating point or dynamic int8.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) inner: candle_nn::Linear,
    /// Set when the layer runs as PyTorch's dynamic int8 linear instead of in floating point.
    pub(crate) int8: Option<Int8Linear>,
}

/// A linear layer emulating `torch.ao.quantization.quantize_dynamic` (int8, x86 backend): the
/// weight is int8 per tensor; each call quantizes its input to 7-bit unsigned codes from that
/// input's own range; the integer product is exact. One call per sequence, so results do not
/// depend on how sequences are batched.
#[derive(Debug, Clone)]
pub(crate) struct Int8Linear {
    weight: crate::compress::dynint8::Int8Weight,
    /// The weight codes transposed, [in, out], as f64: sums of int8 × uint7 products over any
    /// width stay exact there (f32 loses them past 2^24).
    codes_t: Tensor,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            inner: candle_nn::Linear::new(weight, bias),
            int8: None,
        }
    }

    /// Makes the layer run as dynamic int8 with `weight`, which must have its shape.
    pub(crate) fn set_int8(
        &mut self,
        name: &str,
        weight: crate::compress::dynint8::Int8Weight,
        device: &Device,
    ) -> Result<()> {
        let (rows, cols) = self.inner.weight().dims2()?;
        if (weight.rows, weight.cols) != (rows, cols) {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: vec![rows, cols],
                got: vec![weight.rows, weight.cols],
            });
        }
        self.int8 = Some(Int8Linear::new(weight, device)?);
        Ok(())
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.int8 {
            None => Ok(self.inner.forward(x)?),
            Some(q) => q.forward(x, self.inner.bias()),
        }
    }
}

impl Int8Linear {
    pub(crate) fn new(
        weight: crate::compress::dynint8::Int8Weight,
        device: &Device,
    ) -> Result<Self> {
        let codes: Vec<f64> = weight.codes.iter().map(|&c| f64::from(c)).collect();
        let codes_t = Tensor::from_vec(codes, (weight.rows, weight.cols), device)?
            .t()?
            .contiguous()?;
        Ok(Int8Linear { weight, codes_t })
    }

    /// `x` is [batch, seq, in]; each batch row is one call.
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        use crate::compress::dynint8::quantize_input;
        let (b, s, cols) = x.dims3()?;
        let flat: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut centered = Vec::with_capacity(flat.len());
        let mut mult = Vec::with_capacity(b);
        for seq in flat.chunks(s * cols) {
            let q = quantize_input(seq).map_err(|e| ModelError::Invalid(e.to_string()))?;
            centered.extend(q.codes.iter().map(|&c| f64::from(i32::from(c) - q.zero)));
            mult.push(q.scale * self.weight.scale);
        }
        let q = Tensor::from_vec(centered, (b, s, cols), x.device())?;
        let acc = q.broadcast_matmul(&self.codes_t)?.to_dtype(DType::F32)?;
        let mult = Tensor::from_vec(mult, (b, 1, 1), x.device())?;
        let mut y = acc.broadcast_mul(&mult)?;
        if let Some(bias) = bias {
            y = y.broadcast_add(&bias.to_dtype(DType::F32)?)?;
        }
        Ok(y.to_dtype(x.dtype())?)
    }
}

pub(crate) fn check_dtype(dtype: DType) -> Result<()> {
    if matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "weights are {dtype:?}; the model runs in f32, f16, bf16 (or f64 for reference)"
        )))
    }
}

/// softmax over the last axis as exp(x − max) / Σ exp(x − max), with the max held constant (it
/// cancels out of the value, so its gradient is zero anyway).
pub(crate) fn softmax_last_dim_differentiable(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Where sums and softmax are computed: f32, or f64 for an f64 model.
pub(crate) fn accumulation_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Where a runtime's blocks are: all in memory, or read from a source one block at a time.
pub(crate) enum BlockStore<B> {
    Resident(Vec<Arc<B>>),
    /// The last block read stays until another is asked for, so running every sequence through
    /// block i before block i + 1 reads each block once.
    Streamed {
        source: Arc<dyn TensorSource>,
        held: Mutex<Option<(usize, Arc<B>)>>,
    },
}

impl<B> BlockStore<B> {
    pub(crate) fn streamed(source: Arc<dyn TensorSource>) -> Self {
        BlockStore::Streamed {
            source,
            held: Mutex::new(None),
        }
    }

    pub(crate) fn is_streamed(&self) -> bool {
        matches!(self, BlockStore::Streamed { .. })
    }

    /// Lets go of the block a streamed store holds.
    pub(crate) fn release(&self) {
        if let BlockStore::Streamed { held, .. } = self {
            if let Ok(mut h) = held.lock() {
                *h = None;
            }
        }
    }

    /// Block `layer` of `num_layers`; a streamed store reads it with `build` unless it holds it.
    pub(crate) fn get(
        &self,
        layer: usize,
        num_layers: usize,
        build: impl FnOnce(&dyn TensorSource) -> Result<B>,
    ) -> Result<Arc<B>> {
        let absent = || {
            ModelError::Invalid(format!(
                "layer {layer} does not exist (the model has {num_layers})"
            ))
        };
        match self {
            BlockStore::Resident(blocks) => blocks.get(layer).cloned().ok_or_else(absent),
            BlockStore::Streamed { source, held } => {
                if layer >= num_layers {
                    return Err(absent());
                }
                let mut held = held
                    .lock()
                    .map_err(|_| ModelError::Invalid("block store poisoned".into()))?;
                if let Some((l, b)) = held.as_ref() {
                    if *l == layer {
                        return Ok(b.clone());
                    }
                }
                // The old block goes before the new one is read.
                *held = None;
                let block = Arc::new(build(source.as_ref())?);
                *held = Some((layer, block.clone()));
                Ok(block)
            }
        }
    }
}

/// A block whose linear layers can be reached by role, so that int8 weights can be put in place.
pub(crate) trait BlockLinears {
    fn linear_mut(&mut self, p: Proj) -> Option<&mut Linear>;
}

/// The linear of role `p` in a block's `(role, linear)` list.
pub(crate) fn linear_by_role(linears: &mut [(Proj, Linear)], p: Proj) -> Option<&mut Linear> {
    linears.iter_mut().find(|(q, _)| *q == p).map(|(_, l)| l)
}

impl<B: BlockLinears + Clone> BlockStore<B> {
    /// Block `layer` of `num_layers`. A streamed store reads it with `build` (given a getter of
    /// tensors by name) and puts in place the dynamic-int8 weights its source holds for the
    /// linears `linears` lists (role, weight name).
    pub(crate) fn block(
        &self,
        layer: usize,
        num_layers: usize,
        device: &Device,
        linears: impl FnOnce() -> Vec<(Proj, String)>,
        build: impl FnOnce(&dyn Fn(&str) -> Result<Tensor>) -> Result<B>,
    ) -> Result<Arc<B>> {
        self.get(layer, num_layers, |source| {
            let mut block = build(&|n| source.tensor(n))?;
            for (p, name) in linears() {
                if let Some(l) = block.linear_mut(p) {
                    read_int8(source, &name, l, device)?;
                }
            }
            Ok(block)
        })
    }

    /// Makes the linear `name` run as dynamic int8 with `weight`: `head` when the name is the
    /// head's, else the block linear `id` (`None`: the name is no linear of the model). Only a
    /// held model is changed this way; a streamed one reads its int8 linears from its source.
    pub(crate) fn set_dynamic_int8(
        &mut self,
        head: Option<&mut Linear>,
        id: Option<LinearId>,
        name: &str,
        weight: crate::compress::dynint8::Int8Weight,
        device: &Device,
    ) -> Result<()> {
        let not_linear =
            || ModelError::Invalid(format!("`{name}` is not a linear layer of the model"));
        let linear = match head {
            Some(head) => head,
            None => {
                let id = id.ok_or_else(not_linear)?;
                let BlockStore::Resident(blocks) = self else {
                    return Err(ModelError::Invalid(
                        "a streamed model reads its int8 linears from its source".into(),
                    ));
                };
                let block = blocks.get_mut(id.layer).ok_or_else(not_linear)?;
                Arc::make_mut(block)
                    .linear_mut(id.proj)
                    .ok_or_else(not_linear)?
            }
        };
        linear.set_int8(name, weight, device)
    }
}

impl<B> Clone for BlockStore<B> {
    fn clone(&self) -> Self {
        match self {
            BlockStore::Resident(b) => BlockStore::Resident(b.clone()),
            BlockStore::Streamed { source, .. } => BlockStore::streamed(source.clone()),
        }
    }
}

impl<B> fmt::Debug for BlockStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockStore::Resident(b) => write!(f, "Resident({} blocks)", b.len()),
            BlockStore::Streamed { .. } => write!(f, "Streamed"),
        }
    }
}

/// Causal scaled dot-product attention with grouped KV heads, in f32 (f64 for f64), scores
/// divided by `divisor`. q: [b, heads, s, hd]; k, v: [b, kv_heads, kv_len, hd] → [b, heads, s,
/// hd] in `dtype`. Query i (the last s of kv_len positions) sees key j iff j is not in its
/// future and, with a sliding `window` w, lies less than w positions back.
pub(crate) fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    divisor: f64,
    window: Option<usize>,
    dtype: DType,
) -> Result<Tensor> {
    let (b, nh, s, hd) = q.dims4()?;
    let (nkv, kv_len) = (k.dims()[1], k.dims()[2]);
    let groups = nh / nkv;
    // Query heads g·r .. g·r+g-1 share KV head r: fold them into the query axis instead of
    // copying K and V `groups` times.
    let acc = accumulation_dtype(dtype);
    let q = q.to_dtype(acc)?.reshape((b, nkv, groups * s, hd))?;
    let k = k.to_dtype(acc)?;
    let v = v.to_dtype(acc)?.contiguous()?;
    let raw = q.matmul(&k.t()?)?;
    // Inference on the CPU: scaling, mask and softmax in one pass, with the chain's numbers.
    let probs = match super::fused::causal_softmax(&raw, divisor, s, window)? {
        Some(p) => p,
        None => {
            let scores = (raw / divisor)?.reshape((b, nkv, groups, s, kv_len))?;
            let scores = match causal_mask(s, kv_len, window, q.device())? {
                Some(mask) => scores.broadcast_add(&mask.to_dtype(acc)?)?,
                None => scores,
            };
            // The fused softmax kernel has no backward: when gradients flow (training), the
            // same function from differentiable ops. Inference keeps the kernel, and its
            // numerics.
            if scores.track_op() {
                softmax_last_dim_differentiable(&scores)?
            } else {
                candle_nn::ops::softmax_last_dim(&scores)?
            }
        }
    };
    let out = probs.reshape((b, nkv, groups * s, kv_len))?.matmul(&v)?;
    Ok(out.reshape((b, nh, s, hd))?.to_dtype(dtype)?)
}

/// Additive mask [s, kv_len] for [`causal_attention`]; `None` when every key is visible.
fn causal_mask(
    s: usize,
    kv_len: usize,
    window: Option<usize>,
    dev: &Device,
) -> Result<Option<Tensor>> {
    // A single query at the end sees every key unless a window cuts some off.
    if s == 1 && window.is_none_or(|w| kv_len <= w) {
        return Ok(None);
    }
    // Built on the device: for long sequences a host-side mask would be a large upload.
    let offset = (kv_len - s) as f32;
    let qpos = (Tensor::arange(0f32, s as f32, dev)? + offset as f64)?.reshape((s, 1))?;
    let kpos = Tensor::arange(0f32, kv_len as f32, dev)?.reshape((1, kv_len))?;
    let back = qpos.broadcast_sub(&kpos)?; // how far key j lies behind query i
    let mut visible = back.ge(0f64)?;
    if let Some(w) = window {
        visible = (visible * back.lt(w as f64)?)?;
    }
    let zeros = Tensor::zeros((s, kv_len), DType::F32, dev)?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (s, kv_len), dev)?;
    Ok(Some(visible.where_cond(&zeros, &neg_inf)?))
}

/// LayerNorm as torch computes it: mean and variance (biased) over the last axis in f32, then
/// the affine weight and bias.
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(accumulation_dtype(dtype))?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let centered = xf.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed
        .to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)?)
}

/// Checks a block's input `x` [batch, seq, hidden] against the config and the cache it extends
/// (which must hold exactly `pos` positions); returns batch and sequence length.
pub(crate) fn check_block_input(
    cfg: &ModelConfig,
    layer: usize,
    x: &Tensor,
    pos: usize,
    cache: Option<&LayerKvCache>,
) -> Result<(usize, usize)> {
    let (b, s, h) = x.dims3()?;
    if h != cfg.hidden_size {
        return Err(ModelError::Invalid(format!(
            "block input has width {h}, expected hidden_size = {}",
            cfg.hidden_size
        )));
    }
    if let Some(c) = cache {
        if c.len() != pos {
            return Err(ModelError::Invalid(format!(
                "layer {layer}: cache holds {} positions but pos = {pos}",
                c.len()
            )));
        }
    }
    Ok((b, s))
}

/// Checks that `weights` holds every tensor of the family's layout with its shape, all of one
/// supported dtype on one device; returns that dtype and device.
pub(crate) fn check_weights(
    arch: &dyn super::family::Architecture,
    cfg: &ModelConfig,
    weights: &super::weights::TensorMap,
) -> Result<(DType, Device)> {
    let embed_name = arch.embed_name();
    let first = weights
        .get(embed_name)
        .ok_or_else(|| missing_tensor(embed_name))?;
    let (dtype, device) = (first.dtype(), first.device().clone());
    check_dtype(dtype)?;
    for (name, shape) in arch.tensors(cfg) {
        let t = weights.get(&name).ok_or_else(|| missing_tensor(&name))?;
        if t.dims() != shape.as_slice() {
            return Err(ModelError::ShapeMismatch {
                name,
                expected: shape,
                got: t.dims().to_vec(),
            });
        }
        if t.dtype() != dtype || !t.device().same_device(&device) {
            return Err(ModelError::Invalid(format!(
                "tensor `{name}` is {:?} on {:?}, but `{embed_name}` is {dtype:?} on \
                 {device:?}; every weight must share one dtype and device",
                t.dtype(),
                t.device()
            )));
        }
    }
    Ok((dtype, device))
}

/// A streamed model's head as its source stores it; `None` when the head is the tied embedding.
pub(crate) fn stored_head(source: &dyn TensorSource, name: &str) -> Result<Option<Tensor>> {
    if source.contains(name) {
        Ok(Some(source.held(name)?))
    } else {
        Ok(None)
    }
}

/// Makes `linear` run as dynamic int8 when `source` holds int8 weights for `name`.
pub(crate) fn read_int8(
    source: &dyn TensorSource,
    name: &str,
    linear: &mut Linear,
    device: &Device,
) -> Result<()> {
    if let Some(w) = source.int8(name)? {
        linear.int8 = Some(Int8Linear::new(w, device)?);
    }
    Ok(())
}

/// Applies block `layer`'s linear of role `p` (from its `(role, linear)` list) to `input`,
/// handing the input to `capture` first.
pub(crate) fn apply_linear(
    linears: &[(Proj, Linear)],
    layer: usize,
    p: Proj,
    input: &Tensor,
    capture: &mut Option<Capture<'_>>,
) -> Result<Tensor> {
    let (_, linear) = linears
        .iter()
        .find(|(q, _)| *q == p)
        .ok_or_else(|| ModelError::Invalid(format!("block {layer} has no {p:?}")))?;
    if let Some(f) = capture.as_deref_mut() {
        f(LinearId::new(layer, p), input);
    }
    linear.forward(input)
}

/// The (batch, seq) of token ids, checked: rank 2, u32, not empty, every id below `vocab_size`
/// (an out-of-range id would read out of bounds on some backends).
pub(crate) fn token_shape(tokens: &Tensor, vocab_size: usize) -> Result<(usize, usize)> {
    let (b, s) = tokens.dims2().map_err(|_| {
        ModelError::Invalid(format!(
            "token ids must be [batch, seq], got shape {:?}",
            tokens.dims()
        ))
    })?;
    if tokens.dtype() != DType::U32 {
        return Err(ModelError::Invalid(format!(
            "token ids must be u32, got {:?}",
            tokens.dtype()
        )));
    }
    if b * s == 0 {
        return Err(ModelError::Invalid("empty token sequence".into()));
    }
    let max = tokens.flatten_all()?.max(0)?.to_scalar::<u32>()?;
    if max as usize >= vocab_size {
        return Err(ModelError::Invalid(format!(
            "token id {max} is outside the vocabulary (vocab_size = {vocab_size})"
        )));
    }
    Ok((b, s))
}

/// A tensor the model was built without.
pub(crate) fn missing_tensor(name: &str) -> ModelError {
    ModelError::MissingTensor {
        name: name.to_string(),
        origin: "not in the tensors given to the model".into(),
    }
}
