//! The T5 runtime (`T5ForConditionalGeneration`, v1.0 and v1.1 / Flan-T5; the family module
//! [`crate::model::family::t5`] lists the names and supported configs).
//!
//! Encoder block: RMS norm → self-attention with the encoder's relative position bias
//! (bidirectional buckets) → residual; RMS norm → feed-forward → residual. Decoder block: the
//! same self-attention, causal, with the decoder's bias (unidirectional buckets); RMS norm →
//! cross-attention to the encoder's output (no position bias) → residual; feed-forward. Each
//! stack's bias table lives in its block 0 and serves all its blocks. Attention scores are not
//! scaled. Padding: keys at source positions ≥ `lengths[b]` are masked in the encoder's
//! self-attention and in every cross-attention.
//!
//! As [`Seq2SeqLm`], [`T5::encode`] runs the encoder and its final norm, [`T5::decode`] the
//! decoder over a whole target (no KV cache: generation reruns the target, fine for the short
//! answers probes and tasks generate).
//!
//! As [`crate::model::Blocks`] (calibration, sequential Wanda / SparseGPT / GPTQ), the model
//! runs unpadded windows, blocks numbered encoder then decoder, on one hidden tensor
//! [batch, 2·seq, d_model]: [`T5::embed`] places the window's embedding (the encoder input) in
//! the first half and the embedding of the same window shifted right behind the decoder start
//! token (teacher-forced reconstruction) in the second. Encoder blocks transform the first half
//! and pass the second through. The first decoder block applies the encoder's final norm to the
//! first half, which is from then on the encoder output every decoder block's cross-attention
//! reads (so cross-attention k and v are calibrated on the real encoder output); decoder blocks
//! transform the second half. [`T5::head`] reads the second half. So calibration feeds the
//! decoder blocks the window itself as the target, given the window as the source.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::config::{Activation, ModelConfig};
use super::error::{ModelError, Result};
use super::family::t5::{T5Layout, T5Shape, T5};
use super::family::Architecture;
use super::llama::rms_norm;
use super::lm::{delegate, Blocks, Seq2SeqLm};
use super::parts::{
    accumulation_dtype, check_dtype, check_weights, missing_tensor,
    softmax_last_dim_differentiable, BlockStore, Capture, LayerKvCache, Linear, Proj,
};
use super::parts::{apply_linear, read_int8, stored_head};
use super::parts::{linear_by_role, token_shape, BlockLinears};
use super::reader::TensorSource;
use super::weights::TensorMap;

#[derive(Debug, Clone)]
struct Block {
    /// RMS norm weights in run order: before self-attention, (decoder: before cross-attention,)
    /// before the feed-forward.
    norms: Vec<Tensor>,
    /// In the order the block runs them.
    linears: Vec<(Proj, Linear)>,
}

impl BlockLinears for Block {
    fn linear_mut(&mut self, p: Proj) -> Option<&mut Linear> {
        linear_by_role(&mut self.linears, p)
    }
}

/// A T5 encoder-decoder.
pub struct T5 {
    cfg: ModelConfig,
    shape: T5Shape,
    arch: T5Layout,
    shared: Tensor,
    /// Relative attention bias tables [buckets, heads] of the encoder and the decoder.
    encoder_bias: Tensor,
    decoder_bias: Tensor,
    encoder_norm: Tensor,
    decoder_norm: Tensor,
    lm_head: Linear,
    /// The decoder's output times d_model^-½ before the head (a tied head, as transformers).
    scale_head: bool,
    blocks: BlockStore<Block>,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for T5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5")
            .field("shape", &self.shape)
            .field("blocks", &self.blocks)
            .finish()
    }
}

fn shape_of(cfg: &ModelConfig) -> Result<T5Shape> {
    cfg.t5.ok_or_else(|| {
        ModelError::Invalid(format!(
            "a {:?} config has no T5 layout; the T5 runtime needs a T5 config.json",
            cfg.family
        ))
    })
}

impl T5 {
    /// Builds the model from tensors under their checkpoint names; every tensor must have the
    /// config's shape and one dtype on one device.
    pub(crate) fn new(cfg: &ModelConfig, weights: &TensorMap) -> Result<T5> {
        let shape = shape_of(cfg)?;
        let arch = T5Layout::of(cfg);
        check_weights(&T5, cfg, weights)?;
        let get = |name: &str| {
            weights
                .get(name)
                .cloned()
                .ok_or_else(|| missing_tensor(name))
        };
        let blocks = (0..cfg.num_layers)
            .map(|l| Ok(Arc::new(build_block(arch, l, &get)?)))
            .collect::<Result<_>>()?;
        let head = weights.get(T5.head_name()).cloned();
        Self::assemble(cfg, shape, &get, head, BlockStore::Resident(blocks))
    }

    /// The model with embeddings, bias tables, final norms and head read now and each block read
    /// from `source` when it runs (its dynamic-int8 linears too).
    pub(crate) fn streamed(cfg: &ModelConfig, source: Arc<dyn TensorSource>) -> Result<T5> {
        let shape = shape_of(cfg)?;
        let head_name = T5.head_name();
        let get = |name: &str| source.held(name);
        let head = stored_head(source.as_ref(), head_name)?;
        let blocks = BlockStore::streamed(source.clone());
        let mut model = Self::assemble(cfg, shape, &get, head, blocks)?;
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
        shape: T5Shape,
        get: &dyn Fn(&str) -> Result<Tensor>,
        head: Option<Tensor>,
        blocks: BlockStore<Block>,
    ) -> Result<T5> {
        let arch = T5Layout::of(cfg);
        let shared = get(T5.embed_name())?;
        let (dtype, device) = (shared.dtype(), shared.device().clone());
        check_dtype(dtype)?;
        // A compression stage that changed the head of a tied model stores it; the scaling
        // stays, as it belongs to the config, not to the matrix.
        let head = match head {
            Some(w) => w,
            None if cfg.tie_word_embeddings => shared.clone(),
            None => return Err(missing_tensor(T5.head_name())),
        };
        Ok(T5 {
            cfg: cfg.clone(),
            shape,
            arch,
            encoder_bias: get(arch.relative_bias_name(true))?,
            decoder_bias: get(arch.relative_bias_name(false))?,
            encoder_norm: get("encoder.final_layer_norm.weight")?,
            decoder_norm: get("decoder.final_layer_norm.weight")?,
            lm_head: Linear::new(head, None),
            scale_head: cfg.tie_word_embeddings,
            shared,
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
        let head = (name == T5.head_name()).then_some(&mut self.lm_head);
        let id = T5.linear_id(&self.cfg, name);
        self.blocks
            .set_dynamic_int8(head, id, name, weight, &self.device)?;
        Ok(self)
    }

    fn block(&self, layer: usize) -> Result<Arc<Block>> {
        let linears = || {
            self.arch
                .block_linears(layer)
                .into_iter()
                .map(|id| (id.proj, self.arch.weight_name(id)))
                .collect()
        };
        self.blocks
            .block(layer, self.cfg.num_layers, &self.device, linears, |get| {
                build_block(self.arch, layer, get)
            })
    }

    pub fn decoder_start(&self) -> u32 {
        self.shape.decoder_start
    }

    /// Token ids [batch, seq] (u32) → their rows of `shared`.
    fn embed_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, s) = token_shape(tokens, self.cfg.vocab_size)?;
        Ok(self
            .shared
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, s, self.cfg.hidden_size))?)
    }

    /// Calibration input: the window as the encoder's input and, shifted right behind the
    /// decoder start token, as the decoder's, concatenated along the sequence axis (module
    /// docs).
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let encoder_in = self.embed_tokens(tokens)?;
        let (b, s) = tokens.dims2()?;
        let start = Tensor::full(self.shape.decoder_start, (b, 1), tokens.device())?;
        let shifted = Tensor::cat(&[&start, &tokens.narrow(1, 0, s - 1)?], 1)?;
        let decoder_in = self.embed_tokens(&shifted)?;
        Ok(Tensor::cat(&[&encoder_in, &decoder_in], 1)?)
    }

    /// Runs block `layer` on the calibration states `x` [batch, 2·seq, d_model] (module docs);
    /// T5 blocks keep no KV cache and start at position 0.
    pub fn block_forward(
        &self,
        layer: usize,
        x: &Tensor,
        pos: usize,
        cache: Option<&mut LayerKvCache>,
        capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        if cache.is_some() || pos != 0 {
            return Err(ModelError::Invalid(
                "T5 blocks run whole windows from position 0, without a KV cache".into(),
            ));
        }
        let (_, both, h) = x.dims3()?;
        if h != self.cfg.hidden_size || both % 2 != 0 {
            return Err(ModelError::Invalid(format!(
                "a T5 block's input is [batch, 2·seq, {}] (encoder half, decoder half), got {:?}",
                self.cfg.hidden_size,
                x.dims()
            )));
        }
        let s = both / 2;
        let enc = x.narrow(1, 0, s)?;
        let dec = x.narrow(1, s, s)?;
        let e = self.shape.encoder_layers;
        if layer < e {
            let bias = self.position_bias(true, s, s)?;
            let enc = self.encoder_block(layer, &enc, &bias, capture)?;
            return Ok(Tensor::cat(&[&enc, &dec], 1)?);
        }
        let enc = if layer == e {
            rms_norm(&enc, &self.encoder_norm, self.cfg.rms_norm_eps)?
        } else {
            enc
        };
        let bias = self.decoder_self_bias(s)?;
        let dec = self.decoder_block(layer, &dec, &enc, &bias, None, capture)?;
        Ok(Tensor::cat(&[&enc, &dec], 1)?)
    }

    /// The decoder half of the calibration states → logits [batch, seq, vocab] in f32.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let (_, both, _) = x.dims3()?;
        let s = both / 2;
        self.decoder_head(&x.narrow(1, s, both - s)?)
    }

    /// The decoder's final norm, the tied head's scaling, the head.
    fn decoder_head(&self, y: &Tensor) -> Result<Tensor> {
        let mut y = rms_norm(y, &self.decoder_norm, self.cfg.rms_norm_eps)?;
        if self.scale_head {
            y = (y * (self.cfg.hidden_size as f64).powf(-0.5))?;
        }
        Ok(self.lm_head.forward(&y)?.to_dtype(DType::F32)?)
    }

    /// Encoder states [batch, src, d_model] (after the final norm) of `src`; keys at positions
    /// ≥ `lengths[b]` are masked.
    pub fn encode(&self, src: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let mut x = self.embed_tokens(src)?;
        let (b, s) = src.dims2()?;
        let mask = self.key_mask(lengths, b, s)?;
        let bias = self.position_bias(true, s, s)?;
        let bias = match &mask {
            Some(m) => bias.broadcast_add(m)?,
            None => bias,
        };
        for layer in 0..self.shape.encoder_layers {
            x = self.encoder_block(layer, &x, &bias, None)?;
        }
        rms_norm(&x, &self.encoder_norm, self.cfg.rms_norm_eps)
    }

    /// Decoder logits [batch, tgt, vocab] (f32) for `tgt` given `encoded` from [`T5::encode`].
    pub fn decode(&self, encoded: &Tensor, src_lengths: &[usize], tgt: &Tensor) -> Result<Tensor> {
        let mut y = self.embed_tokens(tgt)?;
        let (b, t) = tgt.dims2()?;
        let (eb, s, _) = encoded.dims3()?;
        if eb != b {
            return Err(ModelError::Invalid(format!(
                "{eb} encoded sources for {b} targets"
            )));
        }
        let cross = self.key_mask(src_lengths, b, s)?;
        let bias = self.decoder_self_bias(t)?;
        for layer in self.shape.encoder_layers..self.cfg.num_layers {
            y = self.decoder_block(layer, &y, encoded, &bias, cross.as_ref(), None)?;
        }
        self.decoder_head(&y)
    }

    /// Additive [batch, 1, 1, seq] mask hiding keys at positions ≥ `lengths[b]`; `None` when
    /// every row is full.
    fn key_mask(&self, lengths: &[usize], b: usize, s: usize) -> Result<Option<Tensor>> {
        if lengths.len() != b {
            return Err(ModelError::Invalid(format!(
                "{} source lengths for a batch of {b}",
                lengths.len()
            )));
        }
        if let Some(bad) = lengths.iter().find(|&&n| n == 0 || n > s) {
            return Err(ModelError::Invalid(format!(
                "source length {bad} outside 1..={s} (the padded source length)"
            )));
        }
        if lengths.iter().all(|&n| n == s) {
            return Ok(None);
        }
        let values: Vec<f32> = lengths
            .iter()
            .flat_map(|&n| (0..s).map(move |j| if j < n { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let acc = accumulation_dtype(self.dtype);
        Ok(Some(
            Tensor::from_vec(values, (b, 1, 1, s), &self.device)?.to_dtype(acc)?,
        ))
    }

    /// The decoder's self-attention bias [1, heads, t, t]: relative positions plus the causal
    /// mask.
    fn decoder_self_bias(&self, t: usize) -> Result<Tensor> {
        let values: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let causal = Tensor::from_vec(values, (1, 1, t, t), &self.device)?
            .to_dtype(accumulation_dtype(self.dtype))?;
        Ok(self.position_bias(false, t, t)?.broadcast_add(&causal)?)
    }

    /// The relative position bias [1, heads, q_len, k_len] of the encoder (bidirectional
    /// buckets) or the decoder (unidirectional), in the accumulation dtype.
    fn position_bias(&self, encoder: bool, q_len: usize, k_len: usize) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..q_len)
            .flat_map(|i| {
                (0..k_len).map(move |j| {
                    relative_bucket(
                        j as i64 - i as i64,
                        encoder,
                        self.shape.num_buckets,
                        self.shape.max_distance,
                    ) as u32
                })
            })
            .collect();
        let idx = Tensor::from_vec(buckets, q_len * k_len, &self.device)?;
        let table = if encoder {
            &self.encoder_bias
        } else {
            &self.decoder_bias
        };
        let heads = self.cfg.num_heads;
        Ok(table
            .index_select(&idx, 0)?
            .reshape((q_len, k_len, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(accumulation_dtype(self.dtype))?)
    }

    fn encoder_block(
        &self,
        layer: usize,
        x: &Tensor,
        bias: &Tensor,
        mut capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        let block = self.block(layer)?;
        let mut apply = applier(&block, layer, &mut capture);
        let eps = self.cfg.rms_norm_eps;
        let normed = rms_norm(x, &block.norms[0], eps)?;
        let roles = [Proj::Q, Proj::K, Proj::V, Proj::O];
        let x = (x + self.attention(&normed, &normed, roles, bias, &mut apply)?)?;
        let normed = rms_norm(&x, &block.norms[1], eps)?;
        Ok((&x + self.feed_forward(&normed, &mut apply)?)?)
    }

    /// `self_bias` holds the causal mask; `cross_mask` hides padded source keys.
    fn decoder_block(
        &self,
        layer: usize,
        y: &Tensor,
        enc: &Tensor,
        self_bias: &Tensor,
        cross_mask: Option<&Tensor>,
        mut capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        let block = self.block(layer)?;
        let mut apply = applier(&block, layer, &mut capture);
        let eps = self.cfg.rms_norm_eps;
        let normed = rms_norm(y, &block.norms[0], eps)?;
        let roles = [Proj::Q, Proj::K, Proj::V, Proj::O];
        let y = (y + self.attention(&normed, &normed, roles, self_bias, &mut apply)?)?;
        let normed = rms_norm(&y, &block.norms[1], eps)?;
        let acc = accumulation_dtype(self.dtype);
        let (b, t, _) = y.dims3()?;
        let s = enc.dim(1)?;
        // Cross-attention has no position bias: zeros, plus the padding mask.
        let zeros = Tensor::zeros((1, 1, t, s), acc, &self.device)?;
        let cross = match cross_mask {
            Some(m) => zeros.broadcast_add(m)?,
            None => zeros.broadcast_as((b, 1, t, s))?.contiguous()?,
        };
        let roles = [Proj::CrossQ, Proj::CrossK, Proj::CrossV, Proj::CrossO];
        let y = (&y + self.attention(&normed, enc, roles, &cross, &mut apply)?)?;
        let normed = rms_norm(&y, &block.norms[2], eps)?;
        Ok((&y + self.feed_forward(&normed, &mut apply)?)?)
    }

    /// Unscaled multi-head attention of queries from `xq` over keys and values from `xkv`, with
    /// `bias` (position bias and masks, broadcast over [batch, heads, q, k]) added to the scores.
    fn attention(
        &self,
        xq: &Tensor,
        xkv: &Tensor,
        [pq, pk, pv, po]: [Proj; 4],
        bias: &Tensor,
        apply: &mut dyn FnMut(Proj, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (b, sq, _) = xq.dims3()?;
        let sk = xkv.dim(1)?;
        let (nh, hd) = (self.cfg.num_heads, self.cfg.head_dim);
        let acc = accumulation_dtype(self.dtype);
        let heads = |t: Tensor, s: usize| -> Result<Tensor> {
            Ok(t.reshape((b, s, nh, hd))?
                .transpose(1, 2)?
                .contiguous()?
                .to_dtype(acc)?)
        };
        let q = heads(apply(pq, xq)?, sq)?;
        let k = heads(apply(pk, xkv)?, sk)?;
        let v = heads(apply(pv, xkv)?, sk)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let probs = if scores.track_op() {
            softmax_last_dim_differentiable(&scores)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, sq, nh * hd))?
            .to_dtype(self.dtype)?;
        apply(po, &out)
    }

    fn feed_forward(
        &self,
        x: &Tensor,
        apply: &mut dyn FnMut(Proj, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let act = |t: Tensor| -> Result<Tensor> {
            Ok(match self.cfg.activation {
                Activation::GeluTanh => t.gelu()?,
                Activation::GeluErf => t.gelu_erf()?,
                Activation::Relu => t.relu()?,
                Activation::Silu => candle_nn::ops::silu(&t)?,
            })
        };
        let hidden = if self.shape.gated {
            (act(apply(Proj::Gate, x)?)? * apply(Proj::Up, x)?)?
        } else {
            act(apply(Proj::Up, x)?)?
        };
        apply(Proj::Down, &hidden)
    }
}

/// Applies block `layer`'s linear layer of a role, showing its input to `capture` first.
fn applier<'a, 'c>(
    block: &'a Block,
    layer: usize,
    capture: &'a mut Option<Capture<'c>>,
) -> impl FnMut(Proj, &Tensor) -> Result<Tensor> + use<'a, 'c> {
    move |p: Proj, input: &Tensor| apply_linear(&block.linears, layer, p, input, capture)
}

/// T5's bucket of a relative position (key − query): exact below half the buckets, then
/// logarithmic up to `max_distance`; bidirectional buckets split by sign. The logarithm is
/// taken in f32 and truncated, as transformers computes it.
fn relative_bucket(
    rel: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets as i64;
    let mut base = 0;
    let n = if bidirectional {
        buckets /= 2;
        if rel > 0 {
            base = buckets;
        }
        rel.abs()
    } else {
        (-rel).max(0)
    };
    let max_exact = (buckets / 2).max(1);
    if n < max_exact {
        return (base + n) as usize;
    }
    let span = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact
        + ((n as f32 / max_exact as f32).ln() / span * (buckets - max_exact) as f32) as i64;
    (base + large.min(buckets - 1)) as usize
}

/// Block `layer` from its tensors, found by `get` under their checkpoint names.
fn build_block(
    arch: T5Layout,
    layer: usize,
    get: &dyn Fn(&str) -> Result<Tensor>,
) -> Result<Block> {
    let linears = arch
        .block_linears(layer)
        .into_iter()
        .map(|id| Ok((id.proj, Linear::new(get(&arch.weight_name(id))?, None))))
        .collect::<Result<_>>()?;
    let norms = arch
        .norm_names(layer)
        .iter()
        .map(|n| get(n))
        .collect::<Result<_>>()?;
    Ok(Block { norms, linears })
}

impl Blocks for T5 {
    delegate!(Blocks runtime);
}

impl Seq2SeqLm for T5 {
    delegate!(Seq2SeqLm [] []);
}

#[cfg(test)]
mod tests {
    use super::relative_bucket;

    #[test]
    fn buckets_match_the_formula_by_hand() {
        // Bidirectional, 8 buckets → 4 per sign, 2 exact; max_distance 20:
        // n = 2 → 2 + floor(ln(1)/ln(10)·2) = 2; n = 5 → 2 + floor(ln 2.5/ln 10·2) = 2 + 0 = 2;
        // n = 7 → 2 + floor(0.544·2) = 3; n = 50 → capped at 3.
        let b = |rel| relative_bucket(rel, true, 8, 20);
        assert_eq!(
            [b(0), b(-1), b(1), b(-2), b(5), b(-7), b(50)],
            [0, 1, 5, 2, 6, 3, 7]
        );
        // Unidirectional, 8 buckets, 4 exact: future keys fall in bucket 0; n = 9 → 4 +
        // floor(ln 2.25/ln 5·4) = 4 + floor(2.015) = 6; n = 19 → 4 + floor(3.87) = 7.
        let u = |rel| relative_bucket(rel, false, 8, 20);
        assert_eq!(
            [u(3), u(0), u(-3), u(-9), u(-19), u(-100)],
            [0, 0, 3, 6, 7, 7]
        );
    }
}
