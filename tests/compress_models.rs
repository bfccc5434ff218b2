//! The compression methods on real models and real calibration data: the Hessian-based methods
//! reconstruct each layer's output better than their naive counterparts, as they are designed to.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use whittle::capture::{collect_stats_first, random_windows, InputGroup, Stats, Wanted};
use whittle::compress::{self, gptq, Grouping, HessianOpts, Matrix, QuantConfig};
use whittle::model::{load_weights, Checkpoint, LinearId, Llama, ModelConfig, Proj, Tokenizer};

/// ‖WX − ŴX‖²_F over the calibration tokens: Σ_r δ_r · (XᵀX) · δ_rᵀ with δ = W − Ŵ.
fn reconstruction_error(w: &Matrix, w_hat: &Matrix, xtx: &Tensor) -> f64 {
    let delta: Vec<f64> = w
        .data
        .iter()
        .zip(&w_hat.data)
        .map(|(a, b)| (*a - *b) as f64)
        .collect();
    let d = Tensor::from_vec(delta, (w.rows, w.cols), &Device::Cpu).unwrap();
    let h = xtx.to_dtype(DType::F64).unwrap();
    let dh = d.matmul(&h).unwrap();
    (dh * d)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

struct Setup {
    weights: whittle::model::TensorMap,
    stats: Stats,
}

/// 128 random calibration windows of `seqlen` tokens (seed 0) through the first `layers` blocks.
fn setup(model_dir: &Path, docs: Vec<String>, seqlen: usize, layers: usize) -> Setup {
    let ckpt = Checkpoint::resolve(model_dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let weights = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let model = Llama::new(&cfg, &weights).unwrap();
    let tok = Tokenizer::from_file(&ckpt.tokenizer).unwrap();
    let windows = random_windows(
        docs.len(),
        |i| tok.encode(&docs[i], true).map_err(|e| e.to_string()),
        128,
        seqlen,
        0,
    )
    .unwrap();
    let wanted = Wanted {
        norms: true,
        hessian: true,
        ..Wanted::default()
    };
    let stats = collect_stats_first(
        &model,
        layers,
        &windows,
        wanted,
        16,
        &Device::Cpu,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(stats.nsamples, 128);
    Setup { weights, stats }
}

fn compare(name: &str, s: &Setup, ids: &[LinearId]) {
    let opts = HessianOpts {
        blocksize: 128,
        percdamp: 0.01,
    };
    for &id in ids {
        let w = Matrix::from_tensor(&s.weights[&id.weight_name()]).unwrap();
        let xtx = &s.stats.xtx[&(id.layer, InputGroup::of(id.proj))];
        let h = Matrix::from_tensor(&s.stats.hessian(id).unwrap().unwrap()).unwrap();

        // Pruning at 50%: SparseGPT against magnitude.
        let mut mag = w.clone();
        compress::magnitude::magnitude(&w, 0.5)
            .unwrap()
            .apply(&mut mag)
            .unwrap();
        let sgpt = compress::sparsegpt::sparsegpt(
            &w,
            &h,
            compress::sparsegpt::Pattern::Unstructured(0.5),
            &opts,
        )
        .unwrap();
        let (e_mag, e_sgpt) = (
            reconstruction_error(&w, &mag, xtx),
            reconstruction_error(&w, &sgpt.weight, xtx),
        );
        assert!(
            e_sgpt < e_mag,
            "{name} {id}: SparseGPT {e_sgpt:.4e} ≥ magnitude {e_mag:.4e}"
        );

        // 3-bit per channel: GPTQ against RTN.
        let q = QuantConfig {
            bits: 3,
            grouping: Grouping::PerChannel,
            sym: false,
        };
        let rtn = compress::rtn::rtn(&w, &q).unwrap().dequantize();
        let g = gptq::gptq(
            &w,
            &h,
            &gptq::GptqConfig {
                quant: q,
                act_order: false,
                hessian: opts,
            },
        )
        .unwrap()
        .quantized
        .dequantize();
        let (e_rtn, e_gptq) = (
            reconstruction_error(&w, &rtn, xtx),
            reconstruction_error(&w, &g, xtx),
        );
        assert!(
            e_gptq < e_rtn,
            "{name} {id}: GPTQ {e_gptq:.4e} ≥ RTN {e_rtn:.4e}"
        );
        println!(
            "{name} {id}: ‖WX−ŴX‖² magnitude {e_mag:.3e} sparsegpt {e_sgpt:.3e} ({:.0}%) | \
             rtn-3bit {e_rtn:.3e} gptq-3bit {e_gptq:.3e} ({:.0}%)",
            100.0 * e_sgpt / e_mag,
            100.0 * e_gptq / e_rtn
        );

        // Wanda with constant input norms is per-row magnitude.
        let constant = vec![2.5f32; w.cols];
        let k = (w.cols as f64 * 0.5) as usize;
        assert_eq!(
            compress::wanda::wanda(&w, &constant, 0.5).unwrap(),
            compress::wanda::row_lowest(&w.abs(), k).unwrap(),
            "{name} {id}"
        );
    }
}

fn stories(shared: &Path) -> Vec<String> {
    std::fs::read_to_string(shared.join("data/tinystories/valid-head.txt"))
        .unwrap()
        .split("<|endoftext|>")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn stories260k_every_linear_layer() {
    let shared = require_shared!("");
    let s = setup(&shared.join("models/stories260K"), stories(&shared), 64, 5);
    let ids: Vec<LinearId> = (0..5)
        .flat_map(|l| Proj::ALL.map(|p| LinearId::new(l, p)))
        .collect();
    compare("stories260K", &s, &ids);
}

#[test]
fn smollm2_135m_first_blocks() {
    let shared = require_shared!("");
    // C4, the reference calibration set; short windows keep the test quick on 2 cores.
    let c4: Vec<String> = std::fs::read_to_string(shared.join("data/c4/c4-train-head1000.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let s = setup(&shared.join("models/smollm2-135m"), c4, 32, 2);
    let ids: Vec<LinearId> = [0, 1]
        .into_iter()
        .flat_map(|l| {
            [Proj::Q, Proj::V, Proj::O, Proj::Up, Proj::Down].map(|p| LinearId::new(l, p))
        })
        .collect();
    compare("smollm2-135m", &s, &ids);
}
