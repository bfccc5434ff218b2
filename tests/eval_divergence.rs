//! JS / KL / top-1 divergence between two real models (stories260K and a pruned copy of it),
//! checked against an independent f64 computation from the logits.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use whittle::eval::divergence::{divergence, Pair};
use whittle::model::*;

fn load(dir: &Path) -> (ModelConfig, TensorMap, Tokenizer) {
    let ckpt = Checkpoint::resolve(dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let weights = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let tok = Tokenizer::from_file(&ckpt.tokenizer).unwrap();
    (cfg, weights, tok)
}

/// The same model with every MLP down-projection magnitude-pruned to 50% (per matrix): close to
/// the base, but not equal.
fn pruned(cfg: &ModelConfig, weights: &TensorMap) -> Llama {
    let mut w = weights.clone();
    for l in 0..cfg.num_layers {
        let name = LinearId::new(l, Proj::Down).weight_name();
        let t = &w[&name];
        let mut mags: Vec<f32> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.abs())
            .collect();
        mags.sort_by(f32::total_cmp);
        let threshold = mags[mags.len() / 2] as f64;
        let keep = t.abs().unwrap().gt(threshold).unwrap();
        let zeros = t.zeros_like().unwrap();
        let p = keep.where_cond(t, &zeros).unwrap();
        w.insert(name, p);
    }
    Llama::new(cfg, &w).unwrap()
}

fn story_tokens(tok: &Tokenizer) -> Option<Vec<u32>> {
    let path = common::shared("data/tinystories/sample.txt")?;
    let text = std::fs::read_to_string(path).unwrap();
    Some(tok.encode(&text, true).unwrap())
}

#[test]
fn a_model_against_itself_diverges_by_nothing() {
    let dir = require_shared!("models/stories260K");
    let (cfg, weights, tok) = load(&dir);
    let Some(tokens) = story_tokens(&tok) else {
        return;
    };
    let model = Llama::new(&cfg, &weights).unwrap();
    let mut ticks = 0;
    let d = divergence(
        Pair::Causal(&model, &model),
        &tokens,
        64,
        Some(4),
        2,
        &Device::Cpu,
        &mut |n| {
            ticks += n;
            Ok(())
        },
    )
    .unwrap();
    assert_eq!((d.windows, d.seqlen, d.positions), (4, 64, 256));
    assert_eq!(ticks, 4);
    assert!(d.js.abs() < 1e-7, "js = {}", d.js);
    assert!(d.kl.abs() < 1e-7, "kl = {}", d.kl);
    assert_eq!(d.top1, 1.0);
    assert_eq!(d.per_window.len(), 4);
}

/// JS, KL and agreement of one window from the two models' logits, with softmax in f64 by hand.
fn by_hand_f64(p_logits: &[Vec<f32>], q_logits: &[Vec<f32>]) -> (f64, f64, f64) {
    let softmax = |l: &[f32]| -> Vec<f64> {
        let max = l
            .iter()
            .map(|&x| x as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = l.iter().map(|&x| (x as f64 - max).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect()
    };
    let argmax = |l: &[f32]| {
        // The first index of the largest value.
        let mut best = 0;
        for (i, &x) in l.iter().enumerate() {
            if x > l[best] {
                best = i;
            }
        }
        best
    };
    let (mut js, mut kl, mut agree) = (0.0, 0.0, 0.0);
    for (pl, ql) in p_logits.iter().zip(q_logits) {
        let (p, q) = (softmax(pl), softmax(ql));
        for (a, b) in p.iter().zip(&q) {
            let m = (a + b) / 2.0;
            js += 0.5 * a * (a / m).ln() + 0.5 * b * (b / m).ln();
            kl += a * (a / b).ln();
        }
        if argmax(pl) == argmax(ql) {
            agree += 1.0;
        }
    }
    let n = p_logits.len() as f64;
    (js / n, kl / n, agree / n)
}

#[test]
fn a_pruned_model_diverges_the_same_whatever_the_batch_and_as_f64_says() {
    let dir = require_shared!("models/stories260K");
    let (cfg, weights, tok) = load(&dir);
    let Some(tokens) = story_tokens(&tok) else {
        return;
    };
    let base = Llama::new(&cfg, &weights).unwrap();
    let model = pruned(&cfg, &weights);
    let (seqlen, limit) = (48, Some(5));
    let run = |batch: usize| {
        divergence(
            Pair::Causal(&model, &base),
            &tokens,
            seqlen,
            limit,
            batch,
            &Device::Cpu,
            &mut |_| Ok(()),
        )
        .unwrap()
    };
    let one = run(1);
    let three = run(3);
    assert_eq!(one.windows, 5);
    assert!(
        one.js > 1e-3 && one.js < std::f64::consts::LN_2,
        "js = {}",
        one.js
    );
    // For nearby distributions KL ≈ ½χ² and JS ≈ ⅛χ².
    assert!(one.kl > 2.0 * one.js, "{one:?}");
    eprintln!(
        "pruned vs base: js {} kl {} top1 {}",
        one.js, one.kl, one.top1
    );
    assert!(one.top1 > 0.3 && one.top1 < 1.0, "top1 = {}", one.top1);
    for (a, b, what) in [
        (one.js, three.js, "js"),
        (one.kl, three.kl, "kl"),
        (one.top1, three.top1, "top1"),
    ] {
        assert!(
            (a - b).abs() <= 1e-6 * a.abs(),
            "{what}: batch 1 {a} vs batch 3 {b}"
        );
    }
    // The means are the means of the windows.
    let mean_js = one.per_window.iter().map(|w| w.js).sum::<f64>() / 5.0;
    assert!((mean_js - one.js).abs() < 1e-12);

    // Window 0 by hand, in f64, from the same logits.
    let ids = Tensor::new(&tokens[..seqlen], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let rows = |m: &Llama| -> Vec<Vec<f32>> {
        m.forward(&ids)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap()
    };
    let (js, kl, top1) = by_hand_f64(&rows(&base), &rows(&model));
    let w = &one.per_window[0];
    assert!(
        (w.js - js).abs() < 1e-5 * js.max(1e-3),
        "js {} vs f64 {js}",
        w.js
    );
    assert!(
        (w.kl - kl).abs() < 1e-5 * kl.max(1e-3),
        "kl {} vs f64 {kl}",
        w.kl
    );
    assert_eq!(w.top1, top1);
}

#[test]
fn models_with_different_vocabularies_are_refused() {
    let dir = require_shared!("models/stories260K");
    let (cfg, weights, _) = load(&dir);
    let model = Llama::new(&cfg, &weights).unwrap();
    // A second model with a vocabulary one token larger.
    let mut cfg2 = cfg.clone();
    cfg2.vocab_size += 1;
    let mut w2 = weights.clone();
    let embed = &weights["model.embed_tokens.weight"];
    let extra = Tensor::zeros((1, cfg.hidden_size), DType::F32, &Device::Cpu).unwrap();
    w2.insert(
        "model.embed_tokens.weight".into(),
        Tensor::cat(&[embed, &extra], 0).unwrap(),
    );
    let other = Llama::new(&cfg2, &w2).unwrap();
    let tokens: Vec<u32> = (0..64).collect();
    let e = divergence(
        Pair::Causal(&model, &other),
        &tokens,
        16,
        None,
        1,
        &Device::Cpu,
        &mut |_| Ok(()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("512") && e.contains("513"), "{e}");
}
