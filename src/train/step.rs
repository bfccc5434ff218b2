//! The optimisation loop every architecture shares: AdamW in two groups (decoupled weight decay
//! on matrices and embeddings, none on norm weights and biases), the warmup-cosine schedule of
//! [`TrainConfig::lr_at`], global gradient-norm clipping, the divergence check and the loss
//! bookkeeping of [`TrainSummary`]. What differs between objectives is only how a step's loss is
//! computed, which the caller passes as a closure.

use std::time::Instant;

use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::trainer::{clip_grad_norm, Params};
use super::{TrainConfig, TrainError, TrainSummary};

/// Runs `cfg.steps` optimiser steps on `params`. `loss_of(step)` (0-based) gives the step's
/// loss; after each step `on_step(step, loss)` is called (1-based), and an error from it stops
/// training. Returns the loss of every step.
pub(crate) fn optimise(
    params: &Params,
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(usize, f32) -> Result<(), TrainError>,
    mut loss_of: impl FnMut(usize) -> Result<Tensor, TrainError>,
) -> Result<Vec<f32>, TrainError> {
    let (decayed, plain): (Vec<_>, Vec<_>) = params.iter().partition(|(_, v)| v.rank() == 2);
    let adam = |vars: Vec<&(String, Var)>, wd: f64| {
        AdamW::new(
            vars.into_iter().map(|(_, v)| v.clone()).collect(),
            ParamsAdamW {
                lr: cfg.lr,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: wd,
            },
        )
    };
    let mut opt_decayed = adam(decayed, cfg.weight_decay)?;
    let mut opt_plain = adam(plain, 0.0)?;
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let lr = cfg.lr_at(step);
        opt_decayed.set_learning_rate(lr);
        opt_plain.set_learning_rate(lr);
        let loss = loss_of(step)?;
        let mut grads = loss.backward()?;
        if cfg.grad_clip > 0.0 {
            clip_grad_norm(params, &mut grads, cfg.grad_clip)?;
        }
        opt_decayed.step(&grads)?;
        opt_plain.step(&grads)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss: value,
            });
        }
        losses.push(value);
        on_step(step + 1, value)?;
    }
    Ok(losses)
}

impl TrainSummary {
    /// The summary of a run that started at `started` and had these `losses` (at least one).
    pub(crate) fn of_run(
        losses: Vec<f32>,
        params: &Params,
        tokens_seen: usize,
        corpus_tokens: usize,
        vocab_size: usize,
        started: Instant,
    ) -> TrainSummary {
        let tail = (losses.len() / 20).max(1).min(losses.len());
        let final_loss = losses[losses.len() - tail..].iter().sum::<f32>() / tail as f32;
        TrainSummary {
            final_loss,
            losses,
            parameters: params.iter().map(|(_, v)| v.elem_count()).sum(),
            tokens_seen,
            corpus_tokens,
            vocab_size,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}
