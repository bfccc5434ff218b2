//! GPT-2 and OPT (both layouts) against a second implementation: transformers' logits on tiny
//! random-weight checkpoints (tests/fixtures/families/make_fixtures.py wrote them), and whittle's own runs of
//! the same weights by other routes (KV cache, streamed blocks, a base model's tensor names).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use whittle::model::{
    load_weights, Architecture, CausalLm, Checkpoint, CheckpointReader, Family, ModelConfig,
    TensorMap,
};

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
}

struct Reference {
    tokens: Vec<Vec<u32>>,
    /// [sequence][position][vocab]
    logits: Vec<Vec<Vec<f32>>>,
}

fn reference(family: &str) -> Reference {
    let path = fixture(&format!("{family}_logits.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tokens = serde_json::from_value(v["tokens"].clone()).unwrap();
    let logits = serde_json::from_value(v["logits"].clone()).unwrap();
    Reference { tokens, logits }
}

fn load(dir: &Path) -> (ModelConfig, TensorMap) {
    let ckpt = Checkpoint::resolve(dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let weights = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    (cfg, weights)
}

fn ids(r: &Reference) -> Tensor {
    let flat: Vec<u32> = r.tokens.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (r.tokens.len(), r.tokens[0].len()), &Device::Cpu).unwrap()
}

/// The largest |whittle − transformers| over every logit of both sequences.
fn max_diff(got: &Tensor, want: &Reference) -> f32 {
    let got: Vec<Vec<Vec<f32>>> = got.to_vec3().unwrap();
    let mut worst = 0f32;
    for (g, w) in got.iter().flatten().zip(want.logits.iter().flatten()) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

fn matches_transformers(family: &str, expected: Family) {
    let (cfg, weights) = load(&fixture(family));
    assert_eq!(cfg.family, expected);
    let r = reference(family);
    let model = cfg
        .architecture()
        .build(&cfg, &weights, Vec::new())
        .unwrap()
        .into_causal("test")
        .unwrap();
    let logits = model.forward(&ids(&r)).unwrap();
    let diff = max_diff(&logits, &r);
    eprintln!("{family}: max |whittle - transformers| = {diff:.2e}");
    assert!(diff < 1e-4, "{family}: logits differ by {diff}");

    // Token by token through the KV cache: the same logits.
    let mut cache = model.new_cache();
    let seq = &r.tokens[0];
    for (pos, &t) in seq.iter().enumerate() {
        let one = Tensor::new(&[[t]], &Device::Cpu).unwrap();
        let step = model.forward_cached(&one, &mut cache).unwrap();
        let got: Vec<f32> = step.flatten_all().unwrap().to_vec1().unwrap();
        let worst = got
            .iter()
            .zip(&r.logits[0][pos])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-4,
            "{family}: cached step {pos} differs by {worst}"
        );
    }

    // Blocks read from the checkpoint as they run: the same numbers, bit for bit.
    let ckpt = Checkpoint::resolve(fixture(family)).unwrap();
    let reader = CheckpointReader::open(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let streamed = cfg
        .architecture()
        .build_streamed(&cfg, Arc::new(reader))
        .unwrap()
        .into_causal("test")
        .unwrap();
    assert!(streamed.is_streamed());
    let again = streamed.forward(&ids(&r)).unwrap();
    let (a, b): (Vec<f32>, Vec<f32>) = (
        again.flatten_all().unwrap().to_vec1().unwrap(),
        logits.flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert_eq!(a, b, "{family}: streamed and held models differ");
}

#[test]
fn gpt2_logits_match_transformers() {
    matches_transformers("gpt2", Family::Gpt2);
}

#[test]
fn opt_logits_match_transformers() {
    matches_transformers("opt", Family::Opt);
}

/// OPT-350m's layout: LayerNorm after each residual sum, no final LayerNorm, embeddings of 16
/// mapped to blocks of 32 by `project_in` and back by `project_out`.
#[test]
fn opt_350m_logits_match_transformers() {
    matches_transformers("opt350m", Family::Opt);
}

/// A checkpoint of the base model (`GPT2Model`, `OPTModel`) names its tensors without the LM
/// class's prefix (`h.0.…`, `decoder.…`); it reads as the same model.
#[test]
fn base_model_names_read_as_the_same_model() {
    for (family, prefix) in [("gpt2", "transformer."), ("opt", "model.")] {
        let (cfg, weights) = load(&fixture(family));
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(fixture(family).join(f), dir.path().join(f)).unwrap();
        }
        let renamed: std::collections::HashMap<String, Tensor> = weights
            .iter()
            .map(|(n, t)| (n.strip_prefix(prefix).unwrap_or(n).to_string(), t.clone()))
            .collect();
        assert!(renamed.keys().all(|n| !n.starts_with(prefix)));
        candle_core::safetensors::save(&renamed, dir.path().join("model.safetensors")).unwrap();
        let (cfg2, again) = load(dir.path());
        assert_eq!(cfg2, cfg);
        assert_eq!(
            again.keys().collect::<Vec<_>>(),
            weights.keys().collect::<Vec<_>>()
        );
        for (name, t) in &weights {
            let (a, b): (Vec<f32>, Vec<f32>) = (
                t.flatten_all().unwrap().to_vec1().unwrap(),
                again[name].flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b, "{family}: {name}");
        }
    }
}

/// An unsupported class is refused naming every supported one.
#[test]
fn unsupported_architectures_list_the_supported_ones() {
    let e = ModelConfig::from_json(r#"{"architectures": ["ElectraForMaskedLM"]}"#)
        .unwrap_err()
        .to_string();
    for class in [
        "ElectraForMaskedLM",
        "LlamaForCausalLM",
        "GPT2LMHeadModel",
        "OPTForCausalLM",
        "T5ForConditionalGeneration",
        "AlbertForMaskedLM",
        "BertForMaskedLM",
        "RobertaForMaskedLM",
        "DistilBertForMaskedLM",
    ] {
        assert!(e.contains(class), "{e}");
    }
    // The family's description agrees with the checkpoint: every tensor, nothing else.
    for family in ["gpt2", "opt"] {
        let (cfg, weights) = load(&fixture(family));
        let arch: &dyn Architecture = cfg.architecture();
        let count: u64 = weights.values().map(|t| t.elem_count() as u64).sum();
        assert_eq!(arch.parameter_count(&cfg), count, "{family}");
    }
}

/// Compressed GPT-2 weights read block by block through their overlay (a `Conv1D` mask and a
/// dynamic-int8 `Conv1D` linear) give the numbers of the same weights held whole.
#[test]
fn conv1d_overlays_stream_as_they_apply() {
    use whittle::compress::{dynint8::quantize_weight, magnitude::magnitude, Matrix};
    use whittle::overlay::{apply_chain, ChainSource, Overlay, OverlayWriter};

    let (cfg, weights) = load(&fixture("gpt2"));
    let (masked, int8) = (
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.mlp.c_fc.weight",
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("overlay");
    let mut w = OverlayWriter::new(&dir, DType::F32).unwrap();
    let linear = |name: &str| whittle::model::as_linear(name, &weights[name]).unwrap();
    let m = Matrix::from_tensor(&linear(masked)).unwrap();
    assert_eq!(
        (m.rows, m.cols),
        (96, 32),
        "c_attn's nn.Linear view is 3·hidden × hidden"
    );
    w.put_masked(masked, &linear(masked), &magnitude(&m, 0.5).unwrap())
        .unwrap();
    let q = quantize_weight(&Matrix::from_tensor(&linear(int8)).unwrap()).unwrap();
    w.put_int8(int8, &q).unwrap();
    w.finish().unwrap();

    let mut held = weights.clone();
    let applied = apply_chain(&[Overlay::open(&dir).unwrap()], &mut held, &Device::Cpu).unwrap();
    assert_eq!(held[masked].dims(), weights[masked].dims());
    // Applied: the mask zeroed entries of the nn.Linear view, the tensor is back in × out.
    let mut pruned = m.clone();
    magnitude(&m, 0.5).unwrap().apply(&mut pruned).unwrap();
    let want = pruned.to_tensor(&Device::Cpu).unwrap().t().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&held[masked]), flat(&want));
    let int8s = applied
        .int8
        .iter()
        .map(|(n, l)| (n.clone(), l.weight.clone()))
        .collect();
    let arch = cfg.architecture();
    let whole = arch
        .build(&cfg, &held, int8s)
        .unwrap()
        .into_causal("test")
        .unwrap();

    let ckpt = Checkpoint::resolve(fixture("gpt2")).unwrap();
    let reader = CheckpointReader::open(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let source = ChainSource::new(reader, vec![Overlay::open(&dir).unwrap()]);
    let streamed = arch
        .build_streamed(&cfg, Arc::new(source))
        .unwrap()
        .into_causal("test")
        .unwrap();
    let r = reference("gpt2");
    let a: Vec<f32> = whole
        .forward(&ids(&r))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = streamed
        .forward(&ids(&r))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
    // And the compression changed the model.
    assert!(max_diff(&whole.forward(&ids(&r)).unwrap(), &r) > 1e-3);
}
