//! Wall time of Wanda, SparseGPT and GPTQ (4-bit) over every linear layer of SmolLM2-135M, from
//! the statistics of 128 × 512 C4 calibration tokens (collected once, outside the timing).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion};
use whittle::capture::{collect_stats, random_windows, Wanted};
use whittle::compress::{self, gptq, Grouping, HessianOpts, Matrix, QuantConfig};
use whittle::model::{load_weights, Checkpoint, Llama, ModelConfig, Tokenizer};

fn methods(c: &mut Criterion) {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if !shared.join("models/smollm2-135m").exists() {
        eprintln!("skipping: ../shared not found");
        return;
    }
    let ckpt = Checkpoint::resolve(shared.join("models/smollm2-135m")).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let weights = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let model = Llama::new(&cfg, &weights).unwrap();
    let tok = Tokenizer::from_file(&ckpt.tokenizer).unwrap();
    let docs: Vec<String> = std::fs::read_to_string(shared.join("data/c4/c4-train-head1000.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let windows = random_windows(
        docs.len(),
        |i| tok.encode(&docs[i], true).map_err(|e| e.to_string()),
        128,
        512,
        0,
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let wanted = Wanted {
        norms: true,
        hessian: true,
        ..Wanted::default()
    };
    let stats = collect_stats(&model, &windows, wanted, 8, &Device::Cpu, &mut |_| Ok(())).unwrap();
    eprintln!(
        "calibration statistics (norms + Hessians) of 128 × 512 tokens: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let mats: Vec<(whittle::model::LinearId, Matrix)> = model
        .linear_ids()
        .into_iter()
        .map(|id| {
            (
                id,
                Matrix::from_tensor(&weights[&id.weight_name()]).unwrap(),
            )
        })
        .collect();
    let hessians: Vec<Matrix> = mats
        .iter()
        .map(|(id, _)| Matrix::from_tensor(&stats.hessian(*id).unwrap().unwrap()).unwrap())
        .collect();
    let opts = HessianOpts {
        blocksize: 128,
        percdamp: 0.01,
    };

    let mut g = c.benchmark_group("smollm2-135m, all 210 linear layers");
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    g.bench_function("wanda 50%", |b| {
        b.iter(|| {
            for (id, w) in &mats {
                compress::wanda::wanda(w, &stats.scaler(*id).unwrap(), 0.5).unwrap();
            }
        })
    });
    g.measurement_time(Duration::from_secs(60));
    g.bench_function("sparsegpt 50%", |b| {
        b.iter(|| {
            for ((_, w), h) in mats.iter().zip(&hessians) {
                compress::sparsegpt::sparsegpt(
                    w,
                    h,
                    compress::sparsegpt::Pattern::Unstructured(0.5),
                    &opts,
                )
                .unwrap();
            }
        })
    });
    let q = gptq::GptqConfig {
        quant: QuantConfig {
            bits: 4,
            grouping: Grouping::Group(128),
            sym: false,
        },
        act_order: false,
        hessian: opts,
    };
    g.bench_function("gptq 4-bit g128", |b| {
        b.iter(|| {
            for ((_, w), h) in mats.iter().zip(&hessians) {
                gptq::gptq(w, h, &q).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = methods
}
criterion_main!(benches);
