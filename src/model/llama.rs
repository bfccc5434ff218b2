//! The LLaMA-family decoder: embeddings, decoder blocks run one at a time, and the LM head.
//!
//! The model is immutable; KV caches are passed in. [`Llama::block_forward`] exposes one block and
//! reports the input of each of its seven linear layers, which calibration needs.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use super::config::{ModelConfig, RopeScaling};
use super::error::{ModelError, Result};
use super::family::{Architecture, LLAMA};
use super::lm::{delegate, Blocks, CausalLm};
use super::parts::{
    accumulation_dtype, causal_attention, check_block_input, check_dtype, check_weights,
    missing_tensor, BlockStore, Capture, KvCache, LayerKvCache, Linear, LinearId, Proj,
};
use super::parts::{read_int8, stored_head};
use super::parts::{token_shape, BlockLinears};
use super::reader::TensorSource;
use super::weights::TensorMap;

#[derive(Debug, Clone)]
struct Block {
    input_norm: Tensor,
    post_norm: Tensor,
    /// In [`Proj::ALL`] order.
    linears: [Linear; 7],
}

impl Block {
    fn linear(&self, p: Proj) -> &Linear {
        &self.linears[p as usize]
    }
}

impl BlockLinears for Block {
    fn linear_mut(&mut self, p: Proj) -> Option<&mut Linear> {
        self.linears.get_mut(p as usize)
    }
}

/// A LLaMA-family causal language model.
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: ModelConfig,
    embed: Tensor,
    blocks: BlockStore<Block>,
    norm: Tensor,
    lm_head: Linear,
    /// RoPE inverse frequencies (f32, head_dim / 2), scaling applied.
    inv_freq: Tensor,
    dtype: DType,
    device: Device,
}

impl Llama {
    /// Builds the model from tensors under their HF names (see [`crate::model::expected_tensors`]); every
    /// tensor must have the config's shape and one dtype on one device.
    pub fn new(cfg: &ModelConfig, weights: &TensorMap) -> Result<Llama> {
        let (dtype, device) = check_weights(&LLAMA, cfg, weights)?;
        // Presence was checked just above.
        let get = |name: &str| Ok(weights[name].clone());
        let blocks = (0..cfg.num_layers)
            .map(|l| Ok(Arc::new(build_block(cfg, l, &get)?)))
            .collect::<Result<_>>()?;
        let head = weights.get(LLAMA.head_name()).cloned();
        Self::assemble(cfg, &get, head, BlockStore::Resident(blocks), dtype, device)
    }

    /// The model with embedding, final norm and head read now and each block read from `source`
    /// when it runs (its dynamic-int8 linears too): what is held is those plus one block.
    pub fn streamed(cfg: &ModelConfig, source: Arc<dyn TensorSource>) -> Result<Llama> {
        let get = |name: &str| source.held(name);
        let embed = get(LLAMA.embed_name())?;
        let (dtype, device) = (embed.dtype(), embed.device().clone());
        check_dtype(dtype)?;
        let head = stored_head(source.as_ref(), LLAMA.head_name())?;
        let blocks = BlockStore::streamed(source.clone());
        let mut model = Self::assemble(cfg, &get, head, blocks, dtype, device)?;
        read_int8(
            source.as_ref(),
            LLAMA.head_name(),
            &mut model.lm_head,
            &model.device,
        )?;
        Ok(model)
    }

    fn assemble(
        cfg: &ModelConfig,
        get: &dyn Fn(&str) -> Result<Tensor>,
        head: Option<Tensor>,
        blocks: BlockStore<Block>,
        dtype: DType,
        device: Device,
    ) -> Result<Llama> {
        let embed = get(LLAMA.embed_name())?;
        // A compression stage that changed the LM head of a tied model stores `lm_head.weight`:
        // from then on the head is its own matrix.
        let head = match head {
            Some(w) => w,
            None if cfg.tie_word_embeddings => embed.clone(),
            None => return Err(missing_tensor(LLAMA.head_name())),
        };
        let lm_head = Linear::new(head, None);
        let inv_freq = Tensor::new(rope_inv_freq(cfg), &device)?;
        Ok(Llama {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm: get(super::family::llama::NORM)?,
            lm_head,
            inv_freq,
            dtype,
            device,
        })
    }

    fn block(&self, layer: usize) -> Result<Arc<Block>> {
        let linears = || {
            Proj::ALL
                .map(|p| (p, LinearId::new(layer, p).weight_name()))
                .to_vec()
        };
        self.blocks
            .block(layer, self.cfg.num_layers, &self.device, linears, |get| {
                build_block(&self.cfg, layer, get)
            })
    }

    /// Every linear layer inside the blocks (the LM head excluded), block by block, in
    /// [`Proj::ALL`] order.
    pub fn linear_ids(&self) -> Vec<LinearId> {
        (0..self.num_layers())
            .flat_map(|l| Proj::ALL.map(|p| LinearId::new(l, p)))
            .collect()
    }

    /// The same model with the named linear layer (`model.layers.N.….weight` or `lm_head.weight`)
    /// running as a dynamic int8 layer with these int8 weights.
    pub fn with_dynamic_int8(
        mut self,
        name: &str,
        weight: crate::compress::dynint8::Int8Weight,
    ) -> Result<Self> {
        let head = (name == LLAMA.head_name()).then_some(&mut self.lm_head);
        let id = LinearId::from_weight_name(name);
        self.blocks
            .set_dynamic_int8(head, id, name, weight, &self.device)?;
        Ok(self)
    }

    /// Token ids [batch, seq] (u32) → embeddings [batch, seq, hidden].
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, s) = token_shape(tokens, self.cfg.vocab_size)?;
        let flat = tokens.flatten_all()?;
        Ok(self
            .embed
            .index_select(&flat, 0)?
            .reshape((b, s, self.cfg.hidden_size))?)
    }

    /// Runs decoder block `layer` on hidden states `x` [batch, seq, hidden] whose first token sits
    /// at absolute position `pos`. With a `cache`, the block attends to the cached keys too and
    /// appends the new ones (`pos` must equal the cache length). `capture` receives the input of
    /// each linear layer, [batch, seq, in_features], just before it is applied.
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
        let mut apply = |p: Proj, input: &Tensor| -> Result<Tensor> {
            if let Some(f) = capture.as_deref_mut() {
                f(LinearId::new(layer, p), input);
            }
            block.linear(p).forward(input)
        };
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);

        let normed = rms_norm(x, &block.input_norm, self.cfg.rms_norm_eps)?;
        let q = apply(Proj::Q, &normed)?;
        let k = apply(Proj::K, &normed)?;
        let v = apply(Proj::V, &normed)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let (cos, sin) = self.rope_tables(pos, s)?;
        let q = apply_rope(&heads(q, nh)?, &cos, &sin)?;
        let k = apply_rope(&heads(k, nkv)?, &cos, &sin)?;
        let v = heads(v, nkv)?;
        let (k, v) = match cache {
            Some(c) => c.append(k, v)?,
            None => (k, v),
        };
        let attn = self.attention(&q, &k, &v)?;
        let attn = attn.transpose(1, 2)?.reshape((b, s, nh * hd))?;
        let x = (x + apply(Proj::O, &attn)?)?;

        let normed = rms_norm(&x, &block.post_norm, self.cfg.rms_norm_eps)?;
        let gate = apply(Proj::Gate, &normed)?;
        let up = apply(Proj::Up, &normed)?;
        let act = match super::fused::silu_mul(&gate, &up)? {
            Some(a) => a,
            None => (candle_nn::ops::silu(&gate)? * up)?,
        };
        let x = (x + apply(Proj::Down, &act)?)?;
        Ok(x)
    }

    /// Final norm and LM head: hidden states → logits [batch, seq, vocab] in f32.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = rms_norm(x, &self.norm, self.cfg.rms_norm_eps)?;
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
        let mut x = self.embed(tokens)?;
        for (layer, c) in cache.layers.iter_mut().enumerate() {
            x = self.block_forward(layer, &x, pos, Some(c), None)?;
        }
        cache.pos += tokens.dims()[1];
        self.head(&x)
    }

    /// cos and sin for positions `pos..pos + len`, [len, head_dim], in the model dtype.
    fn rope_tables(&self, pos: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let positions = Tensor::arange(pos as u32, (pos + len) as u32, &self.device)?
            .to_dtype(DType::F32)?
            .reshape((len, 1))?;
        let freqs = positions.broadcast_mul(&self.inv_freq.reshape((1, ()))?)?;
        // HF layout: the same frequencies for both halves of head_dim.
        let emb = Tensor::cat(&[&freqs, &freqs], 1)?;
        Ok((
            emb.cos()?.to_dtype(self.dtype)?,
            emb.sin()?.to_dtype(self.dtype)?,
        ))
    }

    /// Scaled dot-product attention with grouped KV heads and a causal mask (sliding when the
    /// config has a window). q: [b, heads, s, hd]; k, v: [b, kv_heads, kv_len, hd].
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let divisor = (self.cfg.head_dim as f64).sqrt();
        causal_attention(q, k, v, divisor, self.cfg.sliding_window, self.dtype)
    }
}

/// Block `l` from its tensors, found by `get` under their HF names.
fn build_block(cfg: &ModelConfig, l: usize, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<Block> {
    let bias = |p: Proj| match p {
        Proj::Q | Proj::K | Proj::V | Proj::Qkv => cfg.qkv_bias,
        Proj::CrossQ | Proj::CrossK | Proj::CrossV => cfg.qkv_bias,
        Proj::O | Proj::CrossO => cfg.o_bias,
        Proj::Gate | Proj::Up | Proj::Down => cfg.mlp_bias,
    };
    let mut linears = Vec::with_capacity(Proj::ALL.len());
    for p in Proj::ALL {
        let id = LinearId::new(l, p);
        let b = if bias(p) {
            Some(get(&id.bias_name())?)
        } else {
            None
        };
        linears.push(Linear::new(get(&id.weight_name())?, b));
    }
    Ok(Block {
        input_norm: get(&format!("model.layers.{l}.input_layernorm.weight"))?,
        post_norm: get(&format!("model.layers.{l}.post_attention_layernorm.weight"))?,
        linears: linears
            .try_into()
            .map_err(|_| ModelError::Invalid("a block has seven linears".into()))?,
    })
}

/// RMSNorm as HF computes it: normalise in f32, cast back, then scale by the weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(accumulation_dtype(dtype))?;
    let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(weight)?)
}

/// x·cos + rotate_half(x)·sin, rotate_half(x) = [-x₂, x₁] over the two halves of head_dim.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Inverse RoPE frequencies θ^(-2i/d), rescaled as the config's `rope_scaling` says. Computed in
/// f32, as HF does, so that angles match the reference to the last bit where possible.
fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim as f32;
    let theta = cfg.rope_theta as f32;
    let base = (0..cfg.head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / d));
    match &cfg.rope_scaling {
        None => base.collect(),
        Some(RopeScaling::Linear { factor }) => base.map(|f| f / *factor as f32).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let (factor, low, high) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
            );
            let old = *original_max_position_embeddings as f32;
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            base.map(|f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / factor
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            })
            .collect()
        }
    }
}

impl Blocks for Llama {
    delegate!(Blocks runtime);
}

impl CausalLm for Llama {
    delegate!(CausalLm [] []);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::ModuleGroup;

    #[test]
    fn linear_ids_name_and_parse() {
        let id = LinearId::new(3, Proj::Q);
        assert_eq!(id.to_string(), "layers.3.q_proj");
        assert_eq!(id.weight_name(), "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(
            LinearId::new(0, Proj::Down).weight_name(),
            "model.layers.0.mlp.down_proj.weight"
        );
        for p in Proj::ALL {
            let id = LinearId::new(7, p);
            assert_eq!(id.to_string().parse::<LinearId>().unwrap(), id);
        }
        assert!("layers.x.q_proj".parse::<LinearId>().is_err());
        assert!("layers.1.lm_head".parse::<LinearId>().is_err());
        assert_eq!(Proj::O.group(), ModuleGroup::Attention);
        assert_eq!(Proj::Up.group(), ModuleGroup::Mlp);
    }

    #[test]
    fn rope_rotates_pairs_of_halves_by_position_times_frequency() {
        // head_dim 4: pairs (x0, x2) at frequency 1, (x1, x3) at frequency 1/θ^(1/2).
        let dev = Device::Cpu;
        let x = Tensor::new(&[1f32, 2., 3., 4.], &dev)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let (pos, theta) = (3.0f64, 100.0f64);
        let freqs = [pos, pos / theta.sqrt()];
        let emb = [freqs[0], freqs[1], freqs[0], freqs[1]];
        let cos = Tensor::new(emb.map(|a| a.cos() as f32).as_slice(), &dev)
            .unwrap()
            .reshape((1, 4))
            .unwrap();
        let sin = Tensor::new(emb.map(|a| a.sin() as f32).as_slice(), &dev)
            .unwrap()
            .reshape((1, 4))
            .unwrap();
        let got: Vec<f32> = apply_rope(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let rot = |a: f64, b: f64, t: f64| (a * t.cos() - b * t.sin(), a * t.sin() + b * t.cos());
        let (y0, y2) = rot(1., 3., freqs[0]);
        let (y1, y3) = rot(2., 4., freqs[1]);
        for (g, w) in got.iter().zip([y0, y1, y2, y3]) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn rms_norm_matches_the_formula() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, -2., 3., 0.5]], &dev).unwrap();
        let w = Tensor::new(&[1f32, 2., 0.5, -1.], &dev).unwrap();
        let got: Vec<f32> = rms_norm(&x, &w, 1e-5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ms = (1.0 + 4.0 + 9.0 + 0.25) / 4.0 + 1e-5f64;
        let want = [1.0, -4.0, 1.5, -0.5].map(|v: f64| v / ms.sqrt());
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6);
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut cfg = ModelConfig::from_json(
            r#"{"model_type": "llama", "hidden_size": 512, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 8,
                "rope_theta": 500000.0}"#,
        )
        .unwrap();
        let plain = rope_inv_freq(&cfg);
        cfg.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let scaled = rope_inv_freq(&cfg);
        assert_eq!(scaled[0], plain[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() <= 1e-6 * plain[last]);
    }
}
