//! BERT, RoBERTa and DistilBERT against second implementations: transformers' logits on tiny
//! random-weight checkpoints (tests/fixtures/encoders/make_fixtures.py wrote them, one sequence
//! padded), and candle-transformers' `bert` / `distilbert` models on the same weights; then
//! whittle's own runs by other routes (block by block, streamed blocks).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use whittle::model::{
    load_weights, Architecture, Blocks, Checkpoint, CheckpointReader, Family, MaskedLm,
    ModelConfig, TensorMap,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/encoders")
        .join(name)
}

struct Reference {
    tokens: Vec<Vec<u32>>,
    lengths: Vec<usize>,
    /// [sequence][position][vocab]
    logits: Vec<Vec<Vec<f32>>>,
}

fn reference(family: &str) -> Reference {
    let path = fixture(&format!("{family}_logits.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    Reference {
        tokens: serde_json::from_value(v["tokens"].clone()).unwrap(),
        lengths: serde_json::from_value(v["lengths"].clone()).unwrap(),
        logits: serde_json::from_value(v["logits"].clone()).unwrap(),
    }
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

fn model(cfg: &ModelConfig, weights: &TensorMap) -> Box<dyn MaskedLm> {
    match cfg.architecture().build(cfg, weights, Vec::new()).unwrap() {
        whittle::model::LanguageModel::Masked(m) => m,
        _ => panic!("an encoder builds a masked LM"),
    }
}

/// The largest |a − b| over rows `rows` of [sequence][position][vocab] logits, positions below
/// each row's `upto`.
fn max_diff(got: &Tensor, want: &[Vec<Vec<f32>>], upto: &[usize]) -> f32 {
    let got: Vec<Vec<Vec<f32>>> = got.to_vec3().unwrap();
    let mut worst = 0f32;
    for (row, n) in upto.iter().enumerate() {
        for p in 0..*n {
            assert_eq!(got[row][p].len(), want[row][p].len());
            for (a, b) in got[row][p].iter().zip(&want[row][p]) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

fn matches_transformers(family: &str, expected: Family) {
    let (cfg, weights) = load(&fixture(family));
    assert_eq!(cfg.family, expected);
    let r = reference(family);
    let m = model(&cfg, &weights);
    let logits = m.forward_masked(&ids(&r), &r.lengths).unwrap();
    // Every position, the padded row's padding too (transformers computes it the same way).
    let all = vec![r.tokens[0].len(); r.tokens.len()];
    let diff = max_diff(&logits, &r.logits, &all);
    eprintln!("{family}: max |whittle - transformers| = {diff:.2e}");
    assert!(diff < 1e-4, "{family}: logits differ by {diff}");

    // The padded row alone, unpadded, block by block (the calibration route): the same logits
    // at its real positions.
    let n = r.lengths[1];
    let row = Tensor::new(&r.tokens[1][..n], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut x = m.embed(&row).unwrap();
    for layer in 0..m.num_layers() {
        x = m.block_forward(layer, &x, 0, None, None).unwrap();
    }
    let alone = m.head(&x).unwrap();
    let diff = max_diff(&alone, &r.logits[1..], &[n]);
    assert!(diff < 1e-4, "{family}: unpadded row differs by {diff}");

    // Blocks read from the checkpoint as they run: the same numbers, bit for bit.
    let ckpt = Checkpoint::resolve(fixture(family)).unwrap();
    let reader = CheckpointReader::open(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let streamed = match cfg
        .architecture()
        .build_streamed(&cfg, Arc::new(reader))
        .unwrap()
    {
        whittle::model::LanguageModel::Masked(m) => m,
        _ => panic!("an encoder builds a masked LM"),
    };
    assert!(streamed.is_streamed());
    let again = streamed.forward_masked(&ids(&r), &r.lengths).unwrap();
    let (a, b): (Vec<f32>, Vec<f32>) = (
        again.flatten_all().unwrap().to_vec1().unwrap(),
        logits.flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert_eq!(a, b, "{family}: streamed and held models differ");

    // The description agrees with the checkpoint: every tensor it implies, counted once.
    let arch: &dyn Architecture = cfg.architecture();
    let count: u64 = weights.values().map(|t| t.elem_count() as u64).sum();
    assert_eq!(arch.parameter_count(&cfg), count, "{family}");
}

#[test]
fn bert_logits_match_transformers() {
    matches_transformers("bert", Family::Bert);
}

#[test]
fn roberta_logits_match_transformers() {
    matches_transformers("roberta", Family::Roberta);
}

#[test]
fn distilbert_logits_match_transformers() {
    matches_transformers("distilbert", Family::DistilBert);
}

/// The checkpoint's tensors, with the tied decoder spelled out as candle-transformers reads it.
fn candle_tensors(family: &str) -> HashMap<String, Tensor> {
    let path = fixture(family).join("model.safetensors");
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    if family == "bert" {
        let w = t["bert.embeddings.word_embeddings.weight"].clone();
        let b = t["cls.predictions.bias"].clone();
        t.insert("cls.predictions.decoder.weight".into(), w);
        t.insert("cls.predictions.decoder.bias".into(), b);
    }
    t
}

fn mask_of(r: &Reference) -> Vec<Vec<u32>> {
    r.lengths
        .iter()
        .map(|&n| (0..r.tokens[0].len()).map(|p| u32::from(p < n)).collect())
        .collect()
}

#[test]
fn bert_logits_match_candle_transformers() {
    use candle_transformers::models::bert as ct;
    let r = reference("bert");
    let json = std::fs::read_to_string(fixture("bert/config.json")).unwrap();
    let ct_cfg: ct::Config = serde_json::from_str(&json).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(candle_tensors("bert"), DType::F32, &Device::Cpu);
    let theirs = ct::BertForMaskedLM::load(vb, &ct_cfg).unwrap();
    let input = ids(&r);
    let mask = Tensor::new(mask_of(&r), &Device::Cpu).unwrap();
    let want = theirs
        .forward(&input, &input.zeros_like().unwrap(), Some(&mask))
        .unwrap();
    let want: Vec<Vec<Vec<f32>>> = want.to_vec3().unwrap();

    let (cfg, weights) = load(&fixture("bert"));
    let ours = model(&cfg, &weights)
        .forward_masked(&input, &r.lengths)
        .unwrap();
    let diff = max_diff(&ours, &want, &r.lengths);
    eprintln!("bert: max |whittle - candle-transformers| = {diff:.2e}");
    assert!(
        diff < 1e-4,
        "bert: differs from candle-transformers by {diff}"
    );
}

#[test]
fn distilbert_logits_match_candle_transformers() {
    use candle_transformers::models::distilbert as ct;
    let r = reference("distilbert");
    let json = std::fs::read_to_string(fixture("distilbert/config.json")).unwrap();
    let ct_cfg: ct::Config = serde_json::from_str(&json).unwrap();
    let vb =
        candle_nn::VarBuilder::from_tensors(candle_tensors("distilbert"), DType::F32, &Device::Cpu);
    let theirs = ct::DistilBertForMaskedLM::load(vb, &ct_cfg).unwrap();
    let input = ids(&r);
    // candle-transformers' DistilBERT masks keys where its mask is 1.
    let hidden: Vec<Vec<u8>> = mask_of(&r)
        .iter()
        .map(|row| row.iter().map(|&v| u8::from(v == 0)).collect())
        .collect();
    let (b, s) = (r.tokens.len(), r.tokens[0].len());
    let hidden = Tensor::new(hidden, &Device::Cpu)
        .unwrap()
        .reshape((b, 1, 1, s))
        .unwrap();
    let want: Vec<Vec<Vec<f32>>> = theirs.forward(&input, &hidden).unwrap().to_vec3().unwrap();

    // candle-transformers 0.11 runs DistilBERT's `gelu` with the tanh approximation (transformers
    // runs it exact, as whittle does above): whittle runs the same approximation here, so the
    // rest of the model is what is compared.
    let (mut cfg, weights) = load(&fixture("distilbert"));
    assert_eq!(cfg.activation, whittle::model::Activation::GeluErf);
    cfg.activation = whittle::model::Activation::GeluTanh;
    let ours = model(&cfg, &weights)
        .forward_masked(&input, &r.lengths)
        .unwrap();
    let diff = max_diff(&ours, &want, &r.lengths);
    eprintln!("distilbert: max |whittle - candle-transformers| = {diff:.2e}");
    assert!(
        diff < 1e-4,
        "distilbert: differs from candle-transformers by {diff}"
    );
}

/// Bad input is refused with a message, not a panic.
#[test]
fn bad_input_is_refused() {
    let (cfg, weights) = load(&fixture("bert"));
    let m = model(&cfg, &weights);
    let t = Tensor::new(&[[2u32, 5, 3]], &Device::Cpu).unwrap();
    let e = m.forward_masked(&t, &[4]).unwrap_err().to_string();
    assert!(e.contains("length 4"), "{e}");
    let e = m.forward_masked(&t, &[3, 3]).unwrap_err().to_string();
    assert!(e.contains("2 lengths"), "{e}");
    let x = m.embed(&t).unwrap();
    let mut cache = whittle::model::LayerKvCache::default();
    let e = m
        .block_forward(0, &x, 0, Some(&mut cache), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("KV cache"), "{e}");
    let big = Tensor::new(&[[64u32]], &Device::Cpu).unwrap();
    let e = m.forward_masked(&big, &[1]).unwrap_err().to_string();
    assert!(e.contains("vocabulary"), "{e}");
}
