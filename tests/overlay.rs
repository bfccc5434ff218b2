//! The packed overlay: every kind applies bit-identically to the dense result, is small, and a
//! damaged or unknown overlay is an error, never a panic or wrong weights.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use whittle::cache::Digest;
use whittle::compress::dynint8::quantize_weight;
use whittle::compress::rtn::rtn;
use whittle::compress::{Grouping, Mask, Matrix, QuantConfig};
use whittle::model::{
    load_weights, tensor_digest, CausalLm, Checkpoint, Llama, ModelConfig, TensorMap,
};
use whittle::overlay::{
    apply_chain, pack_codes, Overlay, OverlayError, OverlaySummary, OverlayWriter, INDEX_FILE,
};
use whittle::stages::weights::{Materialized, WeightsMeta};

fn random_matrix(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Matrix::new(
        rows,
        cols,
        (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect(),
    )
    .unwrap()
}

fn random_mask(rows: usize, cols: usize, p: f64, seed: u64) -> Mask {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Mask::from_fn(rows, cols, |_, _| rng.random_bool(p))
}

fn tensor(m: &Matrix) -> Tensor {
    m.to_tensor(&Device::Cpu).unwrap()
}

/// Little-endian bytes of a tensor: the bit-exact comparison.
fn bits(t: &Tensor) -> Vec<u8> {
    let mut out = Vec::new();
    t.write_bytes(&mut out).unwrap();
    out
}

fn apply(dir: &Path, tensors: &mut TensorMap) -> Result<(), OverlayError> {
    Overlay::open(dir)?.apply(tensors, &Device::Cpu).map(|_| ())
}

/// Writes one tensor with `put`, applies it on `parents`, and returns the result and summary.
fn round_trip(
    dtype: DType,
    parents: TensorMap,
    put: impl FnOnce(&mut OverlayWriter),
) -> (TensorMap, OverlaySummary, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("overlay");
    let mut w = OverlayWriter::new(&dir, dtype).unwrap();
    put(&mut w);
    let summary = w.finish().unwrap();
    let mut tensors = parents;
    apply(&dir, &mut tensors).unwrap();
    for (name, d) in &summary.digests {
        assert_eq!(
            *d,
            tensor_digest(&tensors[name]).unwrap(),
            "digest of {name}"
        );
    }
    (tensors, summary, tmp)
}

#[test]
fn masked_zeroes_exactly_the_pruned_entries() {
    for dtype in [DType::F32, DType::BF16] {
        let w = random_matrix(37, 70, 1); // 2590 bits: the last mask word is partial
        let parent = tensor(&w).to_dtype(dtype).unwrap();
        let mask = random_mask(37, 70, 0.5, 2);
        // Expected by hand: the parent's values, +0 where pruned (negatives included).
        let parent_f32: Vec<f32> = parent
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected: Vec<f32> = parent_f32
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if mask.is_pruned(i / 70, i % 70) {
                    0.0
                } else {
                    v
                }
            })
            .collect();
        let expected = Tensor::from_vec(expected, (37, 70), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let name = "model.layers.0.mlp.up_proj.weight";
        let parents = TensorMap::from([(name.to_string(), parent.clone())]);
        let (out, summary, _tmp) = round_trip(dtype, parents, |wr| {
            wr.put_masked(name, &parent, &mask).unwrap()
        });
        assert_eq!(out[name].dtype(), dtype);
        assert_eq!(bits(&out[name]), bits(&expected), "{dtype:?}");
        assert!(!bits(&out[name]).chunks(dtype.size_in_bytes()).any(|b| {
            // no −0: the sign bit alone set
            b.iter()
                .rev()
                .enumerate()
                .all(|(k, &x)| x == if k == 0 { 0x80 } else { 0 })
        }));
        assert_eq!(summary.tensors, 1);
        assert_eq!(summary.dense_bytes, 37 * 70 * 4);
    }
}

#[test]
fn masked_needs_the_tensor_beneath() {
    let w = random_matrix(8, 8, 3);
    let mask = random_mask(8, 8, 0.5, 4);
    let tmp = tempfile::tempdir().unwrap();
    let mut wr = OverlayWriter::new(tmp.path(), DType::F32).unwrap();
    wr.put_masked("a", &tensor(&w), &mask).unwrap();
    assert!(wr.put_masked("a", &tensor(&w), &mask).is_err(), "put twice");
    let bad = random_mask(8, 9, 0.5, 4);
    assert!(wr.put_masked("b", &tensor(&w), &bad).is_err(), "shape");
    wr.finish().unwrap();
    let e = apply(tmp.path(), &mut TensorMap::new()).unwrap_err();
    assert!(
        matches!(e, OverlayError::MissingParent(ref n) if n == "a"),
        "{e}"
    );
}

#[test]
fn sparse_keeps_updated_values_and_zeroes_pruned_ones() {
    for dtype in [DType::F32, DType::F16] {
        let w = random_matrix(19, 23, 5);
        let mask = random_mask(19, 23, 0.6, 6);
        let expected: Vec<f32> = (0..19 * 23)
            .map(|i| {
                if mask.is_pruned(i / 23, i % 23) {
                    0.0
                } else {
                    w.data[i]
                }
            })
            .collect();
        let expected = Tensor::from_vec(expected, (19, 23), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let (out, summary, _tmp) = round_trip(dtype, TensorMap::new(), |wr| {
            wr.put_sparse("s", &w, &mask).unwrap()
        });
        assert_eq!(bits(&out["s"]), bits(&expected), "{dtype:?}");
        let kept = 19 * 23 - mask.count();
        let mask_bytes = 24 + (19usize * 23).div_ceil(64) * 8;
        let index = std::fs::metadata(_tmp.path().join("overlay").join(INDEX_FILE))
            .unwrap()
            .len();
        assert_eq!(
            summary.stored_bytes,
            (mask_bytes + kept * dtype.size_in_bytes()) as u64 + index
        );
    }
}

fn quant_cfg(bits: u32, grouping: Grouping) -> QuantConfig {
    QuantConfig {
        bits,
        grouping,
        sym: false,
    }
}

#[test]
fn quantized_applies_as_the_dequantized_weights() {
    let cases = [
        // 7 x 13 = 91 codes x 3 bits = 273 bits: a partial last byte.
        (7, 13, quant_cfg(3, Grouping::PerChannel)),
        // Groups of 32 over 100 columns: a short last group.
        (16, 100, quant_cfg(4, Grouping::Group(32))),
        (5, 9, quant_cfg(2, Grouping::Group(4))),
        (
            3,
            11,
            QuantConfig {
                bits: 8,
                grouping: Grouping::Group(5),
                sym: true,
            },
        ),
    ];
    for (seed, (rows, cols, cfg)) in cases.into_iter().enumerate() {
        let w = random_matrix(rows, cols, 10 + seed as u64);
        let q = rtn(&w, &cfg).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let expected = tensor(&q.dequantize()).to_dtype(dtype).unwrap();
            let (out, _, _tmp) = round_trip(dtype, TensorMap::new(), |wr| {
                wr.put_quantized("q", &q).unwrap()
            });
            assert_eq!(bits(&out["q"]), bits(&expected), "{cfg:?} {dtype:?}");
        }
    }
}

#[test]
fn quantized_with_act_order_group_index() {
    let w = random_matrix(6, 10, 20);
    let mut q = rtn(&w, &quant_cfg(4, Grouping::Group(5))).unwrap();
    // Act-order groups: columns assigned out of order.
    q.group_index = Some(vec![1, 0, 1, 0, 0, 1, 1, 0, 0, 1]);
    let expected = tensor(&q.dequantize());
    let (out, _, _tmp) = round_trip(DType::F32, TensorMap::new(), |wr| {
        wr.put_quantized("q", &q).unwrap()
    });
    assert_eq!(bits(&out["q"]), bits(&expected));
    // By hand for one entry: row 2, column 0 is in group 1.
    let p = q.params(2, 1);
    let v: Vec<Vec<f32>> = out["q"].to_vec2().unwrap();
    assert_eq!(v[2][0], p.scale * (f32::from(q.codes[2 * 10]) - p.zero));

    let tmp = tempfile::tempdir().unwrap();
    let mut wr = OverlayWriter::new(tmp.path(), DType::F32).unwrap();
    let mut bad = q.clone();
    bad.codes[3] = 16; // does not fit 4 bits
    assert!(wr.put_quantized("bad", &bad).is_err());
}

#[test]
fn int8_applies_dequantized_and_marks_the_linear() {
    let w = random_matrix(12, 17, 30);
    let q = quantize_weight(&w).unwrap();
    let expected: Vec<f32> = q.codes.iter().map(|&c| q.scale * f32::from(c)).collect();
    let expected = Tensor::from_vec(expected, (12, 17), &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut wr = OverlayWriter::new(tmp.path(), DType::F32).unwrap();
    wr.put_int8("l", &q).unwrap();
    wr.finish().unwrap();
    let mut tensors = TensorMap::new();
    let applied = Overlay::open(tmp.path())
        .unwrap()
        .apply(&mut tensors, &Device::Cpu)
        .unwrap();
    assert_eq!(bits(&tensors["l"]), bits(&expected));
    assert_eq!(applied.replaced, vec!["l".to_string()]);
    let lin = &applied.int8["l"];
    assert_eq!(lin.scale().to_bits(), q.scale.to_bits());
    assert_eq!(lin.codes(), q.codes.as_slice());
    let codes: Vec<Vec<f64>> = lin
        .codes_tensor(DType::F64, &Device::Cpu)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(codes[1][2], f64::from(q.codes[17 + 2]));
}

#[test]
fn dense_stores_any_rank() {
    let t = Tensor::arange(0f32, 24., &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 4))
        .unwrap()
        .affine(0.37, -1.1)
        .unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let (out, summary, _tmp) =
            round_trip(dtype, TensorMap::new(), |wr| wr.put_dense("d", &t).unwrap());
        assert_eq!(out["d"].dims(), &[2, 3, 4]);
        assert_eq!(bits(&out["d"]), bits(&t.to_dtype(dtype).unwrap()));
        assert_eq!(summary.dense_bytes, 24 * 4);
    }
}

#[test]
fn a_later_overlay_drops_an_earlier_int8_marking() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let w = random_matrix(4, 8, 40);
    let other = random_matrix(4, 8, 41);
    let mut wr = OverlayWriter::new(&a, DType::F32).unwrap();
    wr.put_int8("x", &quantize_weight(&w).unwrap()).unwrap();
    wr.put_int8("y", &quantize_weight(&other).unwrap()).unwrap();
    wr.finish().unwrap();
    let mut wr = OverlayWriter::new(&b, DType::F32).unwrap();
    let dq = tensor(&quantize_weight(&w).unwrap().dequantize());
    let mask = random_mask(4, 8, 0.5, 42);
    wr.put_masked("x", &dq, &mask).unwrap();
    wr.finish().unwrap();
    let chain = [Overlay::open(&a).unwrap(), Overlay::open(&b).unwrap()];
    let mut tensors = TensorMap::new();
    let applied = apply_chain(&chain, &mut tensors, &Device::Cpu).unwrap();
    assert_eq!(applied.int8.keys().collect::<Vec<_>>(), vec!["y"]);
    // The masked overlay applied on top of the int8 one's dequantized weight.
    let x: Vec<f32> = tensors["x"].flatten_all().unwrap().to_vec1().unwrap();
    let dq: Vec<f32> = dq.flatten_all().unwrap().to_vec1().unwrap();
    assert!(x.iter().zip(&dq).all(|(a, b)| *a == 0.0 || a == b));
    assert!(x.iter().filter(|v| **v == 0.0).count() >= 8);
    // x deploys as sparse now: the mask (header and one u64 word) and its kept f32 values.
    let pruned = (0..32).filter(|&i| mask.is_pruned(i / 8, i % 8)).count() as u64;
    assert!(pruned > 0 && pruned < 32);
    assert_eq!(applied.deployed["x"], 24 + 8 + (32 - pruned) * 4);
    assert_eq!(
        Overlay::open(&b).unwrap().deployed().unwrap()["x"],
        applied.deployed["x"]
    );
}

#[test]
fn masks_and_4_bit_codes_are_small() {
    let (rows, cols) = (256, 512);
    let w = random_matrix(rows, cols, 50);
    let tmp = tempfile::tempdir().unwrap();
    let mut wr = OverlayWriter::new(tmp.path().join("m"), DType::F32).unwrap();
    wr.put_masked("m", &tensor(&w), &random_mask(rows, cols, 0.5, 51))
        .unwrap();
    let s = wr.finish().unwrap();
    let ratio = s.dense_bytes as f64 / s.stored_bytes as f64;
    eprintln!(
        "mask: {} stored vs {} dense ({ratio:.1}x)",
        s.stored_bytes, s.dense_bytes
    );
    assert!(ratio >= 20.0, "{ratio}");

    for (grouping, lo) in [(Grouping::PerChannel, 7.7), (Grouping::Group(128), 7.2)] {
        let q = rtn(&w, &quant_cfg(4, grouping)).unwrap();
        let mut wr =
            OverlayWriter::new(tmp.path().join(format!("{grouping:?}")), DType::F32).unwrap();
        wr.put_quantized("q", &q).unwrap();
        let s = wr.finish().unwrap();
        let ratio = s.dense_bytes as f64 / s.stored_bytes as f64;
        eprintln!(
            "4-bit {grouping:?}: {} stored vs {} dense ({ratio:.2}x)",
            s.stored_bytes, s.dense_bytes
        );
        // Codes take exactly half a byte each; scales and zeros add 5 bytes per group.
        let groups = rows * cols.div_ceil(q.group_size);
        assert_eq!(s.stored["q"], (rows * cols / 2 + groups * 5) as u64);
        assert!(ratio >= lo && ratio < 8.0, "{ratio}");
    }
    // The packed stream is the documented one.
    let q = rtn(&w, &quant_cfg(4, Grouping::PerChannel)).unwrap();
    let blob = std::fs::read(tmp.path().join("PerChannel").join("t0000.bin")).unwrap();
    assert_eq!(blob[0], q.codes[0] | q.codes[1] << 4);
    assert_eq!(&blob[..rows * cols / 2], pack_codes(&q.codes, 4).as_slice());
}

/// One blob of every kind, for the damage tests.
fn write_every_kind(dir: &Path) -> TensorMap {
    let w = random_matrix(9, 13, 60);
    let parent = tensor(&w);
    let mut wr = OverlayWriter::new(dir, DType::F32).unwrap();
    wr.put_masked("masked", &parent, &random_mask(9, 13, 0.5, 61))
        .unwrap();
    wr.put_sparse("sparse", &w, &random_mask(9, 13, 0.5, 62))
        .unwrap();
    wr.put_quantized(
        "quantized",
        &rtn(&w, &quant_cfg(3, Grouping::Group(4))).unwrap(),
    )
    .unwrap();
    wr.put_int8("int8", &quantize_weight(&w).unwrap()).unwrap();
    wr.put_dense("dense", &parent).unwrap();
    wr.finish().unwrap();
    TensorMap::from([("masked".to_string(), parent)])
}

fn edit_index(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(INDEX_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn damaged_blobs_are_errors() {
    for k in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let parents = write_every_kind(tmp.path());
        let blob = tmp.path().join(format!("t{k:04}.bin"));
        let bytes = std::fs::read(&blob).unwrap();

        // A flipped bit: the digest catches it.
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        std::fs::write(&blob, &flipped).unwrap();
        let e = apply(tmp.path(), &mut parents.clone()).unwrap_err();
        assert!(matches!(e, OverlayError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(&format!("t{k:04}.bin")), "{e}");

        // Truncated: the length check catches it.
        std::fs::write(&blob, &bytes[..bytes.len() - 3]).unwrap();
        let e = apply(tmp.path(), &mut parents.clone()).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");

        // Truncated with a matching index: the decoder itself refuses.
        let short = &bytes[..bytes.len() - 3];
        edit_index(tmp.path(), |v| {
            let r = &mut v["tensors"][k];
            r["bytes"] = short.len().into();
            r["blake3"] = blake3::hash(short).to_hex().to_string().into();
        });
        let e = apply(tmp.path(), &mut parents.clone()).unwrap_err();
        assert!(matches!(e, OverlayError::Corrupt { .. }), "kind {k}: {e}");

        // A missing blob names the file.
        std::fs::remove_file(&blob).unwrap();
        let e = apply(tmp.path(), &mut parents.clone()).unwrap_err();
        assert!(e.to_string().contains(&format!("t{k:04}.bin")), "{e}");
    }
}

#[test]
fn a_lying_index_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let parents = write_every_kind(tmp.path());
    let cases: [(usize, &str, serde_json::Value); 5] = [
        (2, "shape", serde_json::json!([usize::MAX, 3])),
        (
            2,
            "encoding",
            serde_json::json!({"kind": "quantized", "bits": 3, "group_size": 4, "n_groups": 9, "sym": false, "act_order": false}),
        ),
        (3, "shape", serde_json::json!([13, 9, 1])),
        (0, "shape", serde_json::json!([13, 9])),
        (4, "file", serde_json::json!("../t0000.bin")),
    ];
    for (k, key, value) in cases {
        let copy = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(tmp.path()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, copy.path().join(f.file_name().unwrap())).unwrap();
        }
        edit_index(copy.path(), |v| v["tensors"][k][key] = value.clone());
        let e = apply(copy.path(), &mut parents.clone());
        assert!(e.is_err(), "tensor {k} with {key} = {value}");
    }
}

#[test]
fn an_unknown_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_every_kind(tmp.path());
    edit_index(tmp.path(), |v| v["format"] = 2.into());
    let e = Overlay::open(tmp.path()).unwrap_err();
    assert!(matches!(e, OverlayError::Version { found: 2, .. }), "{e}");
    assert!(e.to_string().contains("format version 2"), "{e}");
    std::fs::write(tmp.path().join(INDEX_FILE), "{ not json").unwrap();
    assert!(matches!(
        Overlay::open(tmp.path()).unwrap_err(),
        OverlayError::Json { .. }
    ));
}

#[test]
fn int8_linears_run_as_the_integer_product_in_the_materialized_model() {
    let dir = require_shared!("models/stories260K");
    let ckpt = Checkpoint::resolve(&dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let base = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let names: Vec<String> = (0..cfg.num_layers)
        .flat_map(|l| {
            [
                format!("model.layers.{l}.self_attn.q_proj.weight"),
                format!("model.layers.{l}.mlp.down_proj.weight"),
            ]
        })
        .collect();
    let int8 = |name: &str| quantize_weight(&Matrix::from_tensor(&base[name]).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut wr = OverlayWriter::new(tmp.path(), DType::F32).unwrap();
    for name in &names {
        wr.put_int8(name, &int8(name)).unwrap();
    }
    wr.finish().unwrap();
    let mut tensors = base.clone();
    let chain = apply_chain(
        &[Overlay::open(tmp.path()).unwrap()],
        &mut tensors,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(chain.int8.len(), names.len());
    let m = Materialized {
        checkpoint: ckpt,
        config: cfg.clone(),
        tensors: whittle::stages::weights::Tensors::Held(tensors),
        meta: WeightsMeta {
            config: Digest([0; 32]),
            tokenizer: Digest([0; 32]),
            dtype: "f32".into(),
            tensors: Default::default(),
            tokenizer_semantics: Default::default(),
            tokenizer_files: Default::default(),
        },
        dtype: DType::F32,
        int8: chain.int8,
        deployed: chain.deployed,
        spill: None,
    };
    let tokens = Tensor::new(&[[1u32, 403, 407, 261, 378, 9, 13, 52]], &Device::Cpu).unwrap();
    let logits = |model: &dyn CausalLm| -> Vec<f32> {
        model
            .forward(&tokens)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let got = logits(m.model().unwrap().causal("test").unwrap());
    // Independently: the int8 layers built from the base weights, not from the overlay.
    let mut expected = Llama::new(&cfg, &m.tensors.to_map().unwrap()).unwrap();
    for name in &names {
        expected = expected.with_dynamic_int8(name, int8(name)).unwrap();
    }
    assert_eq!(got, logits(&expected));
    let float = logits(&Llama::new(&cfg, &m.tensors.to_map().unwrap()).unwrap());
    assert_ne!(got, float, "the int8 layers change the output");
}
