//! BERT, RoBERTa, DistilBERT and ALBERT against second implementations: transformers' logits
//! on tiny random-weight checkpoints (tests/fixtures/encoders/make_fixtures.py wrote them, one
//! sequence padded), and candle-transformers' `bert` / `distilbert` models on the same weights; then
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

/// ALBERT: factorized embeddings, and 3 layers over 2 groups of 2 inner layers, so 6 blocks run
/// 4 stored layers (transformers' mapping, group int(i / 1.5): 0, 0, 1).
#[test]
fn albert_logits_match_transformers() {
    matches_transformers("albert", Family::Albert);
    let (cfg, _) = load(&fixture("albert"));
    assert_eq!(cfg.num_layers, 6);
    let arch = cfg.architecture();
    let stored: Vec<String> = (0..cfg.num_layers)
        .map(|l| arch.weight_name(&cfg, arch.block_linears(&cfg, l)[0]))
        .collect();
    let path = |g: usize, i: usize| {
        format!("albert.encoder.albert_layer_groups.{g}.albert_layers.{i}.attention.query.weight")
    };
    assert_eq!(
        stored,
        [
            path(0, 0),
            path(0, 1),
            path(0, 0),
            path(0, 1),
            path(1, 0),
            path(1, 1)
        ]
    );
    // A shared weight is one linear layer, at the first block that runs it.
    let linears = arch.linears(&cfg);
    assert_eq!(linears.len(), 4 * 6 + 1);
    let ids: Vec<usize> = linears[..24]
        .iter()
        .map(|l| l.block.unwrap().layer)
        .collect();
    assert_eq!(ids, [[0; 6], [1; 6], [4; 6], [5; 6]].concat());
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

mod probe {
    use super::*;
    use whittle::eval::knowledge::{probe_masked, ProbeOptions, ProbeStyle, Ranking};
    use whittle::eval::lama::{Fact, LamaSet, Relation, Split};
    use whittle::model::Tokenizer;

    fn fact(subject: &str, object: &str, left: &str, right: &str) -> Fact {
        Fact {
            subject: subject.into(),
            object: object.into(),
            left: left.into(),
            right: right.into(),
        }
    }

    /// Two relations; facts of several lengths (so batches pad), one object of two words and
    /// one outside the vocabulary (both skipped).
    fn set() -> LamaSet {
        let rel = |id: &str, facts| Relation {
            id: id.into(),
            split: Split::Trex,
            label: id.into(),
            template: None,
            facts,
            excluded: 0,
        };
        LamaSet {
            relations: vec![
                rel(
                    "P1",
                    vec![
                        fact("w10", "w20", "w10 w11 ", " w12"),
                        fact("w13", "w21", "w13 ", " w12 w30 w31"),
                        fact("w14", "w20 w21", "w14 w11 ", " w12"),
                        fact("w15", "w22", "w15 w16 w17 w18 ", " w12"),
                    ],
                ),
                rel(
                    "P2",
                    vec![
                        fact("w40", "w41", "", " w40 w42"),
                        fact("w43", "nonword", "w43 ", " w42"),
                        fact("w44", "w45", "w44 w46 ", " w42 w47"),
                    ],
                ),
            ],
            missing: Vec::new(),
        }
    }

    /// The rank of `target` among `row` by hand: 1 + the logits strictly above it.
    fn rank(row: &[f32], target: usize) -> usize {
        1 + row.iter().filter(|&&v| v > row[target]).count()
    }

    fn probed(family: &str, mask: &str, ranking: Ranking) {
        let (cfg, weights) = load(&fixture(family));
        let m = model(&cfg, &weights);
        let tok = Tokenizer::from_file(fixture(family).join("tokenizer.json")).unwrap();
        let set = set();
        let opts = ProbeOptions {
            style: ProbeStyle::Masked,
            ranking,
            ks: vec![1, 5, 10],
            batch_size: 2,
        };
        let (metrics, results) =
            probe_masked(&*m, &tok, &set, &opts, &Device::Cpu, &mut |_| Ok(())).unwrap();
        assert_eq!((metrics.facts, metrics.skipped), (5, 2));
        // Each probed fact by hand: one unpadded sequence, the word ids written out.
        let id = |w: &str| tok.token_id(w).unwrap();
        let (cls, sep) = if family == "roberta" {
            (id("<s>"), id("</s>"))
        } else {
            (id("[CLS]"), id("[SEP]"))
        };
        let mut by_relation: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for r in &results {
            let f = &set
                .relations
                .iter()
                .find(|x| x.id == r.relation)
                .unwrap()
                .facts[r.index];
            let mut ids = vec![cls];
            ids.extend(f.left.split_whitespace().map(id));
            let at = ids.len();
            ids.push(id(mask));
            ids.extend(f.right.split_whitespace().map(id));
            ids.push(sep);
            let t = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits: Vec<Vec<Vec<f32>>> = m
                .forward_masked(&t, &[ids.len()])
                .unwrap()
                .to_vec3()
                .unwrap();
            let row = &logits[0][at];
            let gold = id(&f.object) as usize;
            let want = match ranking {
                Ranking::Vocabulary => rank(row, gold),
                Ranking::Candidates => {
                    // The relation's single-token, in-vocabulary objects.
                    let rel = set.relations.iter().find(|x| x.id == r.relation).unwrap();
                    let cands: std::collections::BTreeSet<usize> = rel
                        .facts
                        .iter()
                        .filter_map(|g| tok.token_id(&g.object))
                        .map(|c| c as usize)
                        .collect();
                    1 + cands.iter().filter(|&&c| row[c] > row[gold]).count()
                }
            };
            assert_eq!(r.rank, want, "{family}: {} fact {}", r.relation, r.index);
            assert_eq!(r.prompt, format!("{}{mask}{}", f.left, f.right));
            by_relation.entry(&r.relation).or_default().push(want);
        }
        // P@1 and P@10: per relation, then the mean of the relations.
        for k in [1, 10] {
            let macro_p: f64 = by_relation
                .values()
                .map(|rs| rs.iter().filter(|&&r| r <= k).count() as f64 / rs.len() as f64)
                .sum::<f64>()
                / by_relation.len() as f64;
            assert!((metrics.p_at[&k] - macro_p).abs() < 1e-12, "{family} P@{k}");
        }
    }

    #[test]
    fn masked_probe_ranks_the_object_at_the_mask() {
        probed("bert", "[MASK]", Ranking::Vocabulary);
        probed("roberta", "<mask>", Ranking::Vocabulary);
        probed("distilbert", "[MASK]", Ranking::Candidates);
        probed("albert", "[MASK]", Ranking::Vocabulary);
    }

    #[test]
    fn causal_tasks_refuse_a_masked_model() {
        let (cfg, weights) = load(&fixture("bert"));
        let lm = cfg
            .architecture()
            .build(&cfg, &weights, Vec::new())
            .unwrap();
        let e = lm.causal("perplexity").err().unwrap().to_string();
        assert!(e.contains("perplexity") && e.contains("knowledge"), "{e}");
    }
}

/// Divergence of two encoders: mean JS over every position of every window, by hand in f64
/// from each model's logits of each window read alone.
#[test]
fn masked_divergence_matches_a_hand_computation() {
    use whittle::eval::divergence::{divergence, Pair};
    let (cfg, weights) = load(&fixture("bert"));
    let base = model(&cfg, &weights);
    let mut changed = weights.clone();
    let name = "bert.encoder.layer.1.intermediate.dense.weight";
    changed.insert(name.into(), (&weights[name] * 0.5).unwrap());
    let other = model(&cfg, &changed);
    let tokens: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 64).collect();
    let (seqlen, windows) = (6, 3);
    let same = divergence(
        Pair::Masked(&*base, &*base),
        &tokens,
        seqlen,
        None,
        2,
        &Device::Cpu,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!((same.js, same.kl, same.top1), (0.0, 0.0, 1.0));
    let d = divergence(
        Pair::Masked(&*other, &*base),
        &tokens,
        seqlen,
        None,
        2,
        &Device::Cpu,
        &mut |_| Ok(()),
    )
    .unwrap();
    let softmax = |l: &[f32]| -> Vec<f64> {
        let m = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = l.iter().map(|&x| (x as f64 - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    let mut js = 0.0;
    for w in 0..windows {
        let t = Tensor::new(&tokens[w * seqlen..(w + 1) * seqlen], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let p: Vec<Vec<Vec<f32>>> = base
            .forward_masked(&t, &[seqlen])
            .unwrap()
            .to_vec3()
            .unwrap();
        let q: Vec<Vec<Vec<f32>>> = other
            .forward_masked(&t, &[seqlen])
            .unwrap()
            .to_vec3()
            .unwrap();
        for pos in 0..seqlen {
            let (p, q) = (softmax(&p[0][pos]), softmax(&q[0][pos]));
            for (a, b) in p.iter().zip(&q) {
                let m = (a + b) / 2.0;
                js += 0.5 * (a * (a / m).ln() + b * (b / m).ln());
            }
        }
    }
    let js = js / (windows * seqlen) as f64;
    assert!(d.js > 1e-4, "the change must show: {}", d.js);
    assert!((d.js - js).abs() < 1e-6, "JS {} vs by hand {js}", d.js);
    assert_eq!(d.positions, windows * seqlen);
}
