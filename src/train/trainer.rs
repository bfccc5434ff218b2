//! Training a small decoder from scratch with candle's autograd: LLaMA by default, or GPT-2 or
//! OPT ([`TrainArch`]).
//!
//! The model is the runtime's own [`CausalLm`] of its family, built on [`Var`]s under the
//! checkpoint's names and layouts (GPT-2's `Conv1D` weights `in × out`), so what is trained is
//! exactly what the rest of whittle, and transformers, load. Next-token cross-entropy on random windows of `seqlen + 1` tokens of
//! the corpus (each document tokenized with its `<s>`, documents concatenated); AdamW with
//! linear warmup then cosine decay; global gradient-norm clipping. Initialisation and data order
//! come from ChaCha8 streams of `seed`, not candle's global RNG, so a run repeats bit for bit on
//! one machine.
//!
//! `arch: bert` trains a `BertForMaskedLM` with the masked-LM objective ([`super::masked`]):
//! sentences as examples, half of them with one whole word masked as the probe masks the object,
//! with its own defaults ([`super::masked::default_config`]). It learns the world's facts (P@1
//! 0.917 on the default world, best constant answer 0.090; 1.000 on `tests/bert_train.rs`'s
//! 12-person world, 0.125); random windows, as here, did not train it (the loss stalled at the
//! unigram level; see that module).
//! `arch: t5` trains by span corruption ([`super::seq2seq`]).
//!
//! Speed: the default trains in about 23 s of CPU time (release, one thread). candle's CPU thread
//! pool spin-waits between ops; on a busy machine `CANDLE_NUM_THREADS=1` (or `RAYON_NUM_THREADS=1`)
//! was several times faster for models this small (3.7x to 6.5x measured), with the same losses.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::step::optimise;
use super::tokenizer::{BOS_ID, EOS_ID, UNK_ID};
use super::TrainError;
use crate::model::{expected_tensors, CausalLm, LanguageModel, ModelConfig, TensorMap};

/// The architecture a [`TrainConfig`] trains, written as its transformers class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainArch {
    /// `LlamaForCausalLM`: RoPE, RMSNorm, SwiGLU; uses `kv_heads` and `rope_theta`.
    #[default]
    Llama,
    /// `GPT2LMHeadModel`: learned positions, LayerNorm, GELU, fused `Conv1D` attention.
    Gpt2,
    /// `OPTForCausalLM`: learned positions (offset 2), LayerNorm, ReLU.
    Opt,
    /// `T5ForConditionalGeneration` (v1.0), trained by span corruption ([`super::seq2seq`]).
    T5,
    /// `BertForMaskedLM`: a post-LayerNorm encoder trained on the masked-LM objective.
    Bert,
}

impl TrainArch {
    pub const NAMES: [&'static str; 5] = ["llama", "gpt2", "opt", "t5", "bert"];

    pub fn parse(s: &str) -> Option<TrainArch> {
        match s {
            "llama" => Some(TrainArch::Llama),
            "gpt2" => Some(TrainArch::Gpt2),
            "opt" => Some(TrainArch::Opt),
            "t5" => Some(TrainArch::T5),
            "bert" => Some(TrainArch::Bert),
            _ => None,
        }
    }

    fn is_llama(&self) -> bool {
        *self == TrainArch::Llama
    }
}

/// What to train. The default is the quickstart's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The model's family; left out of the serialized form (and so of cache keys) for LLaMA.
    #[serde(skip_serializing_if = "TrainArch::is_llama")]
    pub architecture: TrainArch,
    /// Hidden size (`hidden_size`).
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// MLP width (`intermediate_size`).
    pub hidden: usize,
    /// Tokens per training window; also the model's `max_position_embeddings`.
    pub seqlen: usize,
    /// Windows per step.
    pub batch: usize,
    pub steps: usize,
    /// Peak learning rate, reached after `warmup` steps, then cosine decay to `lr·final_lr_ratio`.
    pub lr: f64,
    pub final_lr_ratio: f64,
    pub warmup: usize,
    /// AdamW decoupled weight decay on matrices and embeddings (not on norm weights).
    pub weight_decay: f64,
    /// Gradients are rescaled when their global L2 norm exceeds this; 0 turns clipping off.
    pub grad_clip: f64,
    /// Standard deviation of the normal initialisation (output projections: divided by
    /// sqrt(2·layers), as GPT-2 does).
    pub init_std: f64,
    pub rope_theta: f64,
    pub tie_embeddings: bool,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            architecture: TrainArch::Llama,
            dim: 48,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            hidden: 128,
            seqlen: 64,
            batch: 16,
            steps: 600,
            lr: 1e-2,
            final_lr_ratio: 0.1,
            warmup: 30,
            weight_decay: 0.01,
            grad_clip: 1.0,
            init_std: 0.02,
            rope_theta: 10_000.0,
            tie_embeddings: true,
            seed: 0,
        }
    }
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Mean loss (nats per token) over the last 5% of steps (at least one).
    pub final_loss: f32,
    /// The loss of every step, in order.
    pub losses: Vec<f32>,
    pub parameters: usize,
    /// Tokens predicted during training: steps × batch × seqlen.
    pub tokens_seen: usize,
    /// Tokens of the training corpus (with one `<s>` per document).
    pub corpus_tokens: usize,
    pub vocab_size: usize,
    pub seconds: f64,
}

impl TrainConfig {
    fn check(&self) -> Result<(), TrainError> {
        let bad = |key: &str, msg: String| Err(TrainError::Config(format!("train `{key}`: {msg}")));
        for (key, v) in [
            ("dim", self.dim),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("hidden", self.hidden),
            ("seqlen", self.seqlen),
            ("batch", self.batch),
            ("steps", self.steps),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        // RoPE needs an even head size; learned positions do not.
        let even = self.architecture.is_llama();
        if !self.dim.is_multiple_of(self.heads)
            || (even && !(self.dim / self.heads).is_multiple_of(2))
        {
            return bad(
                "heads",
                format!(
                    "dim ({}) / heads ({}) must be a whole, even head size",
                    self.dim, self.heads
                ),
            );
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(
                "kv_heads",
                format!("{} does not divide heads = {}", self.kv_heads, self.heads),
            );
        }
        for (key, v) in [
            ("lr", self.lr),
            ("init_std", self.init_std),
            ("rope_theta", self.rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, format!("{v} must be a positive number"));
            }
        }
        for (key, v) in [
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
            ("final_lr_ratio", self.final_lr_ratio),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("{v} must be zero or positive"));
            }
        }
        Ok(())
    }

    /// The model's `config.json` for a vocabulary of `vocab_size` tokens.
    pub fn config_json(&self, vocab_size: usize) -> serde_json::Value {
        match self.architecture {
            TrainArch::Llama => {}
            TrainArch::T5 => return super::seq2seq::config_json(self, vocab_size),
            TrainArch::Gpt2 => {
                return serde_json::json!({
                    "architectures": ["GPT2LMHeadModel"],
                    "model_type": "gpt2",
                    "n_embd": self.dim,
                    "n_inner": self.hidden,
                    "n_layer": self.layers,
                    "n_head": self.heads,
                    "n_positions": self.seqlen,
                    "vocab_size": vocab_size,
                    "activation_function": "gelu_new",
                    "layer_norm_epsilon": 1e-5,
                    "tie_word_embeddings": self.tie_embeddings,
                    "bos_token_id": BOS_ID,
                    "eos_token_id": EOS_ID,
                    "torch_dtype": "float32",
                })
            }
            TrainArch::Bert => {
                return serde_json::json!({
                    "architectures": ["BertForMaskedLM"],
                    "model_type": "bert",
                    "hidden_size": self.dim,
                    "intermediate_size": self.hidden,
                    "num_hidden_layers": self.layers,
                    "num_attention_heads": self.heads,
                    "max_position_embeddings": self.seqlen,
                    "type_vocab_size": 1,
                    "vocab_size": vocab_size,
                    "hidden_act": "gelu",
                    "layer_norm_eps": 1e-12,
                    "tie_word_embeddings": self.tie_embeddings,
                    "pad_token_id": UNK_ID,
                    "torch_dtype": "float32",
                })
            }
            TrainArch::Opt => {
                return serde_json::json!({
                    "architectures": ["OPTForCausalLM"],
                    "model_type": "opt",
                    "hidden_size": self.dim,
                    "word_embed_proj_dim": self.dim,
                    "ffn_dim": self.hidden,
                    "num_hidden_layers": self.layers,
                    "num_attention_heads": self.heads,
                    "max_position_embeddings": self.seqlen,
                    "vocab_size": vocab_size,
                    "activation_function": "relu",
                    "do_layer_norm_before": true,
                    "enable_bias": true,
                    "tie_word_embeddings": self.tie_embeddings,
                    "bos_token_id": BOS_ID,
                    "eos_token_id": EOS_ID,
                    "pad_token_id": EOS_ID,
                    "torch_dtype": "float32",
                })
            }
        }
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.dim,
            "intermediate_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": vocab_size,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.seqlen,
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "torch_dtype": "float32",
        })
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1);
        let t = (step - self.warmup) as f64 / span as f64;
        let floor = self.lr * self.final_lr_ratio;
        floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Trains on `docs` and writes `config.json`, `tokenizer.json` and `model.safetensors` (f32, HF
/// names) into `out_dir`, which must exist. `on_step(step, loss)` is called after every step
/// (1-based); an error from it stops training and is returned.
pub fn train(
    docs: &[String],
    tokenizer: &tokenizers::Tokenizer,
    cfg: &TrainConfig,
    device: &Device,
    out_dir: &Path,
    on_step: &mut dyn FnMut(usize, f32) -> Result<(), TrainError>,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    cfg.check()?;
    if cfg.architecture == TrainArch::T5 {
        return super::seq2seq::train(docs, tokenizer, cfg, device, out_dir, on_step);
    }
    if cfg.architecture == TrainArch::Bert {
        return super::masked::train(docs, tokenizer, cfg, device, out_dir, on_step);
    }
    let vocab_size = tokenizer.get_vocab_size(true);
    let model_cfg = ModelConfig::from_json(&cfg.config_json(vocab_size).to_string())?;
    let stream = token_stream(docs, tokenizer)?;
    if stream.len() < cfg.seqlen + 1 {
        return Err(TrainError::Config(format!(
            "the corpus has {} tokens, fewer than one window of seqlen + 1 = {}",
            stream.len(),
            cfg.seqlen + 1
        )));
    }
    let params = init_params(&model_cfg, cfg, DType::F32, device)?;
    let model = lm_of(&model_cfg, &params)?;
    let mut data_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    data_rng.set_stream(1);
    let max_start = (stream.len() - cfg.seqlen - 1) as u64;
    let losses = optimise(&params, cfg, on_step, |_| {
        let (inputs, targets) = batch(&stream, cfg, max_start, &mut data_rng, device)?;
        batch_loss(model.causal("next-token training")?, &inputs, &targets)
    })?;
    save(out_dir, cfg, vocab_size, tokenizer, &params)?;
    Ok(TrainSummary::of_run(
        losses,
        &params,
        cfg.steps * cfg.batch * cfg.seqlen,
        stream.len(),
        vocab_size,
        started,
    ))
}

/// Every document tokenized with its `<s>`, concatenated.
fn token_stream(docs: &[String], tok: &tokenizers::Tokenizer) -> Result<Vec<u32>, TrainError> {
    let mut stream = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let enc = tok
            .encode_fast(d.as_str(), true)
            .map_err(|e| TrainError::Tokenizer(format!("cannot encode document {i}: {e}")))?;
        stream.extend_from_slice(enc.get_ids());
    }
    Ok(stream)
}

/// `batch` windows at random starts: inputs [batch, seqlen], next-token targets [batch·seqlen].
fn batch(
    stream: &[u32],
    cfg: &TrainConfig,
    max_start: u64,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<(Tensor, Tensor), TrainError> {
    let mut inputs = Vec::with_capacity(cfg.batch * cfg.seqlen);
    let mut targets = Vec::with_capacity(cfg.batch * cfg.seqlen);
    for _ in 0..cfg.batch {
        let start = rng.random_range(0..=max_start) as usize;
        inputs.extend_from_slice(&stream[start..start + cfg.seqlen]);
        targets.extend_from_slice(&stream[start + 1..start + cfg.seqlen + 1]);
    }
    Ok((
        Tensor::from_vec(inputs, (cfg.batch, cfg.seqlen), device)?,
        Tensor::from_vec(targets, cfg.batch * cfg.seqlen, device)?,
    ))
}

/// Mean next-token cross-entropy of `inputs` [b, s] against `targets` [b·s].
pub(crate) fn batch_loss(
    model: &dyn CausalLm,
    inputs: &Tensor,
    targets: &Tensor,
) -> Result<Tensor, TrainError> {
    let logits = model.forward(inputs)?;
    let (b, s, v) = logits.dims3()?;
    Ok(candle_nn::loss::cross_entropy(
        &logits.reshape((b * s, v))?,
        targets,
    )?)
}

/// The trainable tensors under their HF names, in [`expected_tensors`] order.
pub(crate) type Params = Vec<(String, Var)>;

/// Norm weights 1, biases 0; everything else N(0, init_std), the projections back into the
/// residual stream (o_proj and down_proj; GPT-2's c_proj; OPT's out_proj and fc2) N(0, init_std
/// / sqrt(2·layers)); drawn in [`expected_tensors`] order from ChaCha8(seed), stream 0.
pub(crate) fn init_params(
    model_cfg: &ModelConfig,
    cfg: &TrainConfig,
    dtype: DType,
    device: &Device,
) -> Result<Params, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let residual_std = cfg.init_std / (2.0 * model_cfg.num_layers as f64).sqrt();
    let mut out = Vec::new();
    for (name, shape) in expected_tensors(model_cfg) {
        let n: usize = shape.iter().product();
        let norm = [
            "norm.weight",
            "ln_1.weight",
            "ln_2.weight",
            "ln_f.weight",
            "LayerNorm.weight",
        ];
        let residual = [
            "o_proj.weight",
            "down_proj.weight",
            "c_proj.weight",
            "out_proj.weight",
            "fc2.weight",
        ];
        let values: Vec<f64> = if norm.iter().any(|s| name.ends_with(s)) {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let std = if residual.iter().any(|s| name.ends_with(s)) {
                residual_std
            } else {
                cfg.init_std
            };
            normals(&mut rng, n).into_iter().map(|z| z * std).collect()
        };
        let t = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
        out.push((name, Var::from_tensor(&t)?));
    }
    Ok(out)
}

/// `n` standard normal draws (Box–Muller on 53-bit uniforms).
pub(crate) fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    let uniform = |rng: &mut ChaCha8Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    while out.len() < n {
        let u1 = 1.0 - uniform(rng); // (0, 1]: ln is finite
        let u2 = uniform(rng);
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push(r * a.cos());
        out.push(r * a.sin());
    }
    out.truncate(n);
    out
}

/// The runtime model over the variables (it shares their storage, so optimizer steps show).
/// The runtime of its family on `params`, whatever kind of model it is.
pub(crate) fn lm_of(model_cfg: &ModelConfig, params: &Params) -> Result<LanguageModel, TrainError> {
    let map: TensorMap = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    Ok(model_cfg
        .architecture()
        .build(model_cfg, &map, Vec::new())?)
}

/// Scales every gradient by `max_norm / ‖g‖` when the global norm ‖g‖ exceeds `max_norm`.
pub(crate) fn clip_grad_norm(
    params: &Params,
    grads: &mut candle_core::backprop::GradStore,
    max_norm: f64,
) -> Result<(), TrainError> {
    let mut sq = 0f64;
    for (_, v) in params {
        if let Some(g) = grads.get(v) {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sq.sqrt();
    if norm > max_norm {
        let scale = max_norm / norm;
        for (_, v) in params {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * scale)?);
            }
        }
    }
    Ok(())
}

/// `tokenizer_config.json` for a trained folder: the generic class, so that transformers 5
/// applies the word-level `tokenizer.json` as written instead of rebuilding it as the class
/// registered for the model type (a BPE or Unigram class, which would split its words); and the
/// special tokens the vocabulary has, by role.
fn tokenizer_config(tokenizer: &tokenizers::Tokenizer) -> serde_json::Value {
    let mut config = serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast"});
    use super::tokenizer::{BOS, EOS, UNK};
    for (role, token) in [
        ("unk_token", UNK),
        ("bos_token", BOS),
        ("eos_token", EOS),
        ("pad_token", super::seq2seq::PAD),
        ("mask_token", super::masked::MASK),
    ] {
        if tokenizer.token_to_id(token).is_some() {
            config[role] = token.into();
        }
    }
    config
}

pub(crate) fn save(
    out_dir: &Path,
    cfg: &TrainConfig,
    vocab_size: usize,
    tokenizer: &tokenizers::Tokenizer,
    params: &Params,
) -> Result<(), TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    let config = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&cfg.config_json(vocab_size)).unwrap_or_default();
    std::fs::write(&config, format!("{text}\n")).map_err(io(&config))?;
    let tok_path = out_dir.join("tokenizer.json");
    let text = tokenizer
        .to_string(true)
        .map_err(|e| TrainError::Tokenizer(format!("cannot serialize the tokenizer: {e}")))?;
    std::fs::write(&tok_path, text).map_err(io(&tok_path))?;
    let tok_config = out_dir.join("tokenizer_config.json");
    let text = serde_json::to_string_pretty(&tokenizer_config(tokenizer)).unwrap_or_default();
    std::fs::write(&tok_config, format!("{text}\n")).map_err(io(&tok_config))?;
    let weights = out_dir.join("model.safetensors");
    let tensors: HashMap<String, Tensor> = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    candle_core::safetensors::save(&tensors, &weights).map_err(|e| match e {
        candle_core::Error::Io(source) => TrainError::Io {
            path: weights.clone(),
            source,
        },
        other => TrainError::Tensor(other),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (TrainConfig, ModelConfig) {
        let cfg = TrainConfig {
            dim: 8,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            hidden: 12,
            seqlen: 5,
            init_std: 0.5,
            ..TrainConfig::default()
        };
        let model_cfg = ModelConfig::from_json(&cfg.config_json(11).to_string()).unwrap();
        (cfg, model_cfg)
    }

    fn data(dev: &Device) -> (Tensor, Tensor) {
        let inputs = Tensor::new(&[[1u32, 4, 7, 2, 9], [3, 3, 10, 0, 5]], dev).unwrap();
        let targets = Tensor::new(&[4u32, 7, 2, 9, 6, 3, 10, 0, 5, 8], dev).unwrap();
        (inputs, targets)
    }

    /// Backprop through the whole model (attention softmax, RMSNorm, SwiGLU, RoPE, tied
    /// embeddings) against central differences, in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let (cfg, model_cfg) = tiny();
        let params = init_params(&model_cfg, &cfg, DType::F64, &dev).unwrap();
        let model = lm_of(&model_cfg, &params)
            .unwrap()
            .into_causal("test")
            .unwrap();
        let (inputs, targets) = data(&dev);
        let get = |name: &str| params.iter().find(|(n, _)| n == name).unwrap().1.clone();
        let (embed, norm) = (get("model.embed_tokens.weight"), get("model.norm.weight"));
        // `CausalLm::head` returns f32 logits, too coarse for finite differences: the same head
        // (final RMSNorm, tied LM head) in f64 here.
        let loss_tensor = |m: &dyn CausalLm| {
            let mut x = m.embed(&inputs).unwrap();
            for l in 0..m.num_layers() {
                x = m.block_forward(l, &x, 0, None, None).unwrap();
            }
            let x = crate::model::rms_norm(&x, &norm, 1e-5).unwrap();
            let logits = x.broadcast_matmul(&embed.t().unwrap()).unwrap();
            let logits = logits.reshape((10, 11)).unwrap();
            candle_nn::loss::cross_entropy(&logits, &targets).unwrap()
        };
        let loss = |m: &dyn CausalLm| loss_tensor(m).to_scalar::<f64>().unwrap();
        let grads = loss_tensor(&*model).backward().unwrap();
        let mut checked = 0;
        for (name, var) in &params {
            // q and k reach the loss only through the softmax.
            let wanted = [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "down_proj",
                "embed",
                "norm",
            ];
            if !wanted.iter().any(|w| name.contains(w)) {
                continue;
            }
            let g: Vec<f64> = grads
                .get(var)
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w0: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
            for idx in [0, w0.len() / 2 + 1, w0.len() - 1] {
                let h = 1e-5;
                let at = |delta: f64| {
                    let mut w = w0.clone();
                    w[idx] += delta;
                    var.set(&Tensor::from_vec(w, var.shape(), &dev).unwrap())
                        .unwrap();
                    loss(&*model)
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                at(0.0);
                let tol = 1e-6 * (1.0 + numeric.abs());
                assert!(
                    (g[idx] - numeric).abs() < tol,
                    "{name}[{idx}]: backprop {} vs finite difference {numeric}",
                    g[idx]
                );
                checked += 1;
            }
        }
        // 2 layers × (q, k, v, o, down, 2 norms) + embedding + final norm, 3 entries each.
        assert_eq!(checked, 3 * (2 * 7 + 2));
    }

    /// The differentiable softmax used while training gives the inference kernel's logits.
    #[test]
    fn training_forward_matches_inference_forward() {
        let dev = Device::Cpu;
        let (cfg, model_cfg) = tiny();
        let params = init_params(&model_cfg, &cfg, DType::F32, &dev).unwrap();
        let tracked = lm_of(&model_cfg, &params)
            .unwrap()
            .into_causal("test")
            .unwrap();
        let plain_map: TensorMap = params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        let plain = model_cfg
            .architecture()
            .build(&model_cfg, &plain_map, Vec::new());
        let plain = plain.unwrap().into_causal("test").unwrap();
        let (inputs, _) = data(&dev);
        let a: Vec<f32> = tracked
            .forward(&inputs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = plain
            .forward(&inputs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "max difference {worst}");
    }

    #[test]
    fn config_reads_partial_json_over_the_defaults() {
        let cfg: TrainConfig = serde_json::from_str(r#"{"steps": 10, "lr": 0.5}"#).unwrap();
        let want = TrainConfig {
            steps: 10,
            lr: 0.5,
            ..TrainConfig::default()
        };
        assert_eq!(cfg, want);
        let e = serde_json::from_str::<TrainConfig>(r#"{"stepz": 10}"#).unwrap_err();
        assert!(e.to_string().contains("stepz"), "{e}");
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cfg = TrainConfig {
            steps: 110,
            warmup: 10,
            lr: 1.0,
            final_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert!((cfg.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((cfg.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(60) - 0.55).abs() < 1e-12); // half way down the cosine
        assert!((cfg.lr_at(110) - 0.1).abs() < 1e-12);
        assert!(cfg.lr_at(30) > cfg.lr_at(40));
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let z = normals(&mut rng, 20_000);
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (cfg, key) in [
            (
                TrainConfig {
                    heads: 5,
                    ..TrainConfig::default()
                },
                "heads",
            ),
            (
                TrainConfig {
                    kv_heads: 3,
                    heads: 4,
                    ..TrainConfig::default()
                },
                "kv_heads",
            ),
            (
                TrainConfig {
                    lr: -1.0,
                    ..TrainConfig::default()
                },
                "lr",
            ),
        ] {
            let e = cfg.check().unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{e}");
        }
    }
}
