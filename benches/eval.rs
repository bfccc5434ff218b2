//! Evaluation throughput: perplexity (tokens/s) of SmolLM2-135M at seqlen 1024 and of
//! stories260K on WikiText-2, and greedy generation with the KV cache (new tokens/s) of
//! SmolLM2-135M. Models load once, outside the timing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use whittle::eval::perplexity::perplexity;
use whittle::model::{greedy_until, load_weights, Checkpoint, Llama, ModelConfig, Tokenizer};

fn load(dir: &Path) -> (Llama, Tokenizer) {
    let ckpt = Checkpoint::resolve(dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let weights = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    (
        Llama::new(&cfg, &weights).unwrap(),
        Tokenizer::from_file(&ckpt.tokenizer).unwrap(),
    )
}

fn eval(c: &mut Criterion) {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if !shared.join("models/smollm2-135m").exists() {
        eprintln!("skipping: ../shared not found");
        return;
    }
    let wiki = std::fs::read_to_string(shared.join("data/wikitext-2-raw/wiki.test.raw")).unwrap();
    let dev = Device::Cpu;

    let (smol, smol_tok) = load(&shared.join("models/smollm2-135m"));
    let (stories, stories_tok) = load(&shared.join("models/stories260K"));
    let mut g = c.benchmark_group("eval");
    g.sample_size(10).warm_up_time(Duration::from_secs(1));

    // Perplexity: 2 windows of 1024 (SmolLM2), 8 of 256 (stories260K, whose context is 512).
    for (name, model, tok, seqlen, windows) in [
        (
            "perplexity smollm2-135m seqlen 1024",
            &smol,
            &smol_tok,
            1024,
            2,
        ),
        (
            "perplexity stories260K seqlen 256",
            &stories,
            &stories_tok,
            256,
            8,
        ),
    ] {
        let tokens = tok.encode(&wiki[..200_000], true).unwrap();
        assert!(tokens.len() >= seqlen * windows);
        g.throughput(Throughput::Elements((seqlen * windows) as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                perplexity(model, &tokens, seqlen, Some(windows), 1, &dev, &mut |_| {
                    Ok(())
                })
                .unwrap()
            })
        });
    }

    // Generation: 32 new tokens after a one-sentence prompt, no EOS, no stop string.
    let prompt = smol_tok
        .encode(
            "The capital of France is Paris. The capital of Italy is",
            true,
        )
        .unwrap();
    let n = 32;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("greedy 32 tokens smollm2-135m (KV cache)", |b| {
        b.iter(|| {
            let out = greedy_until(&smol, &prompt, n, &[], &mut |_| Ok(false)).unwrap();
            assert_eq!(out.tokens.len(), n);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = eval
}
criterion_main!(benches);
