//! Perplexity protocols on stories260K against a by-hand recomputation (one forward pass per
//! window, log-softmax in f64 in the test), and their independence from the batch size.

mod common;

use std::path::Path;

use candle_core::Device;
use whittle::eval::perplexity::{document_perplexity, perplexity, sliding_perplexity};
use whittle::model::*;

fn load(dir: &Path) -> (Llama, Tokenizer) {
    let m = common::load_model(dir, candle_core::DType::F32);
    (m.model, m.tok)
}

fn stories() -> Option<Vec<String>> {
    let path = common::shared("data/tinystories/sample.txt")?;
    let text = std::fs::read_to_string(path).unwrap();
    Some(
        text.split("<|endoftext|>")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// −log p(tokens[j] | tokens[..j]) for j in `from..len`, from one forward pass, in f64.
fn nll_by_hand(model: &Llama, tokens: &[u32], from: usize) -> f64 {
    let logits = common::logit_rows(model, tokens);
    (from..tokens.len())
        .map(|j| -common::log_prob_f64(&logits[j - 1], tokens[j]))
        .sum()
}

use common::no_tick;

#[track_caller]
fn close(a: f64, b: f64, rel: f64, what: &str) {
    assert!(
        (a - b).abs() <= rel * b.abs(),
        "{what}: {a} vs {b} (rel {:e})",
        (a - b).abs() / b.abs()
    );
}

#[test]
fn sliding_windows_follow_the_fixed_length_recipe() {
    let dir = require_shared!("models/stories260K");
    let Some(docs) = stories() else { return };
    let (model, tok) = load(&dir);
    let tokens = tok.encode(&docs.join("\n\n"), true).unwrap();
    let tokens = &tokens[..300];
    let (seqlen, stride) = (64, 24);
    // The recipe, written out: each window scores the tokens past the previous window's end.
    let (mut total, mut count, mut prev_end, mut begin) = (0.0, 0, 0, 0);
    loop {
        let end = (begin + seqlen).min(tokens.len());
        let from = (end - begin - (end - prev_end)).max(1);
        total += nll_by_hand(&model, &tokens[begin..end], from);
        count += end - begin - from;
        prev_end = end;
        if end == tokens.len() {
            break;
        }
        begin += stride;
    }
    assert_eq!(
        count,
        tokens.len() - 1,
        "every token but the first is scored once"
    );
    let want = (total / count as f64).exp();
    for batch in [1, 4] {
        let r = sliding_perplexity(
            &model,
            tokens,
            seqlen,
            stride,
            None,
            batch,
            &Device::Cpu,
            &mut no_tick(),
        )
        .unwrap();
        assert_eq!(r.tokens, count);
        close(r.ppl, want, 1e-6, &format!("sliding ppl, batch {batch}"));
    }
    // More context per token than non-overlapping windows give: a lower perplexity here.
    let plain = perplexity(
        &model,
        tokens,
        seqlen,
        None,
        4,
        &Device::Cpu,
        &mut no_tick(),
    )
    .unwrap();
    let sliding = sliding_perplexity(
        &model,
        tokens,
        seqlen,
        stride,
        None,
        4,
        &Device::Cpu,
        &mut no_tick(),
    )
    .unwrap();
    assert!(sliding.ppl < plain.ppl, "{} vs {}", sliding.ppl, plain.ppl);
}

#[test]
fn documents_are_scored_each_on_its_own_whatever_the_batch() {
    let dir = require_shared!("models/stories260K");
    let Some(docs) = stories() else { return };
    let (model, tok) = load(&dir);
    let docs: Vec<Vec<u32>> = docs.iter().map(|d| tok.encode(d, true).unwrap()).collect();
    let seqlen = 128;
    // By hand: every chunk of ≤ seqlen tokens of every document, all positions but the first.
    let (mut total, mut count) = (0.0, 0);
    for d in &docs {
        for c in d.chunks(seqlen).filter(|c| c.len() >= 2) {
            total += nll_by_hand(&model, c, 1);
            count += c.len() - 1;
        }
    }
    let want = (total / count as f64).exp();
    let mut seen = Vec::new();
    for batch in [1, 3, 16] {
        let r = document_perplexity(&model, &docs, seqlen, batch, &Device::Cpu, &mut no_tick())
            .unwrap();
        assert_eq!(r.tokens, count);
        close(r.ppl, want, 1e-6, &format!("document ppl, batch {batch}"));
        seen.push(r.ppl);
    }
    close(seen[0], seen[2], 1e-5, "batch 1 vs 16");
}

#[test]
fn wikitext_windows_do_not_depend_on_the_batch() {
    let dir = require_shared!("models/stories260K");
    let Some(docs) = stories() else { return };
    let (model, tok) = load(&dir);
    let tokens = tok.encode(&docs.join("\n\n"), true).unwrap();
    let r1 = perplexity(&model, &tokens, 96, None, 1, &Device::Cpu, &mut no_tick()).unwrap();
    let r7 = perplexity(&model, &tokens, 96, None, 7, &Device::Cpu, &mut no_tick()).unwrap();
    assert_eq!(r1.tokens, r7.tokens);
    close(r7.ppl, r1.ppl, 1e-5, "batch 7 vs 1");
    let by_hand: f64 = tokens
        .chunks_exact(96)
        .map(|w| nll_by_hand(&model, w, 1))
        .sum::<f64>()
        / r1.tokens as f64;
    close(r1.nll, by_hand, 1e-6, "mean NLL by hand");
}
