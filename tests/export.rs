//! `whittle export`: a pruned stories260K written as a Hugging Face folder and read back.

mod common;

use common::{text, whittle};

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};

use whittle::cache::{Cache, FileHasher};
use whittle::compress::{magnitude::magnitude, Matrix};
use whittle::export::{materialize_stage, write_safetensors};
use whittle::model::{load_weights, CausalLm, Checkpoint, Llama, ModelConfig, TensorMap};

fn pipeline(dir: &Path, shared: &Path, sparsity: f64) -> PathBuf {
    let text = format!(
        r#"
{stories}stages:
  base: {{kind: load, model: stories}}
  calib: {{kind: calibrate, model: base, dataset: stories, samples: 2, seqlen: 16}}
  pruned: {{kind: prune, model: base, method: magnitude, sparsity: {sparsity}}}
"#,
        stories = common::stories_sections(shared)
    );
    let path = dir.join(format!("export-{sparsity}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn logits(model: &dyn CausalLm, tokens: &[u32]) -> Vec<f32> {
    let t = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&t)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_pruned_model_exports_and_reloads_identically() {
    let shared = require_shared!("");
    let base_dir = shared.join("models/stories260K");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let file = pipeline(tmp.path(), &shared, 0.5);
    let f = file.to_str().unwrap();
    let out = whittle(&cache, &["run", f]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let hf = tmp.path().join("hf");
    let out = whittle(
        &cache,
        &["export", f, "pruned", "--out", hf.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("exported pruned"), "{}", text(&out));

    // The folder: config and tokenizer files as the original's, safetensors tagged for PyTorch.
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert_eq!(
        json(&hf.join("config.json")),
        json(&base_dir.join("config.json"))
    );
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert_eq!(
            std::fs::read(hf.join(f)).unwrap(),
            std::fs::read(base_dir.join(f)).unwrap(),
            "{f}"
        );
    }
    let st = std::fs::read(hf.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + header_len) % 8, 0, "data starts aligned");
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + header_len]).unwrap();
    assert_eq!(header["__metadata__"], serde_json::json!({"format": "pt"}));
    assert_eq!(header["model.norm.weight"]["dtype"], "F32");
    assert!(
        header.get("lm_head.weight").is_none(),
        "tied head stays tied"
    );

    // Reloaded with whittle's own loader: the logits of the materialized pruned model.
    let ckpt = Checkpoint::resolve(&hf).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let exported = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let cache_h = Cache::open(&cache).unwrap();
    let plan = whittle::plan::build(
        whittle::pipeline::load(&file).unwrap(),
        &FileHasher::load(&cache_h).unwrap(),
    )
    .unwrap();
    let (pruned, _) = materialize_stage(&plan, &cache_h, "pruned", &Device::Cpu).unwrap();
    let tokens = [1u32, 403, 407, 261, 378, 9, 13, 52, 280, 2];
    let a = logits(&Llama::new(&cfg, &exported).unwrap(), &tokens);
    let b = logits(pruned.model().unwrap().causal("test").unwrap(), &tokens);
    assert_eq!(a, b);

    // Against an independent pruning of the original weights: half of each block matrix is
    // zero, the rest and every other tensor untouched.
    let base_ckpt = Checkpoint::resolve(&base_dir).unwrap();
    let base: TensorMap = load_weights(&base_ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        exported.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>()
    );
    let mut matrices = 0;
    for (name, t) in &base {
        let got = values(&exported[name]);
        let linear = name.contains("_proj.");
        if !linear {
            assert_eq!(got, values(t), "{name} is not pruned");
            continue;
        }
        matrices += 1;
        let mut w = Matrix::from_tensor(t).unwrap();
        let mask = magnitude(&w, 0.5).unwrap();
        mask.apply(&mut w).unwrap();
        assert_eq!(got, w.data, "{name}");
        let zeros = got.iter().filter(|v| **v == 0.0).count();
        let frac = zeros as f64 / got.len() as f64;
        assert!((0.5..0.51).contains(&frac), "{name}: {frac}");
    }
    assert_eq!(matrices, 5 * 7);

    python_check(&hf, &tokens, &a);

    // Errors a user meets.
    let busy = whittle(
        &cache,
        &["export", f, "pruned", "--out", hf.to_str().unwrap()],
    );
    assert_eq!(busy.status.code(), Some(2));
    assert!(text(&busy).contains("not empty"), "{}", text(&busy));
    let hf2 = tmp.path().join("hf2");
    let out2 = hf2.to_str().unwrap();
    let typo = whittle(&cache, &["export", f, "prunned", "--out", out2]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        text(&typo).contains("did you mean `pruned`"),
        "{}",
        text(&typo)
    );
    let calib = whittle(&cache, &["export", f, "calib", "--out", out2]);
    assert!(
        text(&calib).contains("produces no weights"),
        "{}",
        text(&calib)
    );
    let other = pipeline(tmp.path(), &shared, 0.3);
    let uncached = whittle(
        &cache,
        &["export", other.to_str().unwrap(), "pruned", "--out", out2],
    );
    assert_eq!(uncached.status.code(), Some(2));
    assert!(
        text(&uncached).contains("run `whittle run"),
        "{}",
        text(&uncached)
    );
    assert!(!text(&uncached).contains("panicked"));
    assert!(!hf2.exists(), "nothing written on error");
}

/// Loads the folder with `transformers` when it is installed and compares the logits.
fn python_check(hf: &Path, tokens: &[u32], expected: &[f32]) {
    let has = Command::new("python3")
        .args(["-c", "import transformers, torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("skipping the transformers check: python3 with transformers and torch not found");
        return;
    }
    let script = format!(
        "import json, torch, transformers\n\
         m = transformers.AutoModelForCausalLM.from_pretrained({dir:?}, torch_dtype=torch.float32)\n\
         with torch.no_grad():\n    \
             out = m(torch.tensor([{tokens:?}])).logits\n\
         print(json.dumps(out.flatten().tolist()))\n",
        dir = hf.display().to_string(),
        tokens = tokens,
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let got: Vec<f32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got.len(), expected.len());
    let max = got
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("transformers vs whittle: max |logit difference| = {max:e}");
    assert!(max < 1e-3, "{max}");
}

/// The dtypes in a safetensors header, by tensor name.
fn header_dtypes(path: &Path) -> Vec<String> {
    let st = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    let mut d: Vec<String> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap().to_string())
        .collect();
    d.dedup();
    d
}

#[test]
fn weights_keep_the_checkpoint_dtype_only_when_it_holds_them_exactly() {
    let shared = require_shared!("");
    let base_dir = shared.join("models/stories260K");
    let tmp = tempfile::tempdir().unwrap();
    // stories260K as an f16 checkpoint, computed with in f32.
    let f16_dir = tmp.path().join("stories-f16");
    std::fs::create_dir(&f16_dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(base_dir.join(f), f16_dir.join(f)).unwrap();
    }
    let ckpt = Checkpoint::resolve(&base_dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let w = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    write_safetensors(&f16_dir.join("model.safetensors"), &w, DType::F16).unwrap();
    let file = tmp.path().join("f16.yaml");
    std::fs::write(
        &file,
        format!(
            "models:\n  s: {}\nstages:\n  base: {{kind: load, model: s, dtype: f32}}\n  \
             pruned: {{kind: prune, model: base, method: magnitude, sparsity: 0.5}}\n  \
             q4: {{kind: quantize, model: base, method: rtn, bits: 4, group_size: 16}}\n",
            f16_dir.display()
        ),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let f = file.to_str().unwrap();
    let out = whittle(&cache, &["run", f]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Zeroing f16 values keeps them f16: written as the checkpoint was.
    let pruned = tmp.path().join("pruned");
    let out = whittle(
        &cache,
        &["export", f, "pruned", "--out", pruned.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(header_dtypes(&pruned.join("model.safetensors")), ["F16"]);
    assert!(!text(&out).contains("note:"), "{}", text(&out));

    // A 4-bit grid dequantized in f32 does not fit f16: written in f32, and the config says so.
    let q4 = tmp.path().join("q4");
    let out = whittle(&cache, &["export", f, "q4", "--out", q4.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("note: written in f32"),
        "{}",
        text(&out)
    );
    assert_eq!(header_dtypes(&q4.join("model.safetensors")), ["F32"]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q4.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float32");

    // Both reload to exactly the weights whittle computed with.
    let cache_h = Cache::open(&cache).unwrap();
    let plan = whittle::plan::build(
        whittle::pipeline::load(&file).unwrap(),
        &FileHasher::load(&cache_h).unwrap(),
    )
    .unwrap();
    for (stage, dir) in [("pruned", &pruned), ("q4", &q4)] {
        let (m, _) = materialize_stage(&plan, &cache_h, stage, &Device::Cpu).unwrap();
        let back = load_weights(
            &Checkpoint::resolve(dir).unwrap(),
            &cfg,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        for (name, t) in &m.tensors.to_map().unwrap() {
            assert_eq!(values(&back[name]), values(t), "{stage}: {name}");
        }
    }
}
