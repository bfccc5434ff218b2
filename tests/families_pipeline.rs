//! GPT-2 and OPT through the pipeline: each trained on a small synthetic world until it knows
//! the facts, compressed by every method, evaluated, exported as a Hugging Face folder and read
//! back with the same scores.

mod common;

use common::{
    entry_meta, export, log_of, metric, run_loaded, run_ok, small_world, sparsity_records, text,
    whittle,
};

use std::path::{Path, PathBuf};
use std::process::Command;

fn datasets(world: &Path) -> String {
    let w = world.display();
    format!(
        r#"datasets:
  bio: {{path: {w}/train.txt, documents: separator, separator: "<|endoftext|>"}}
  held: {{path: {w}/heldout.txt, documents: separator, separator: "<|endoftext|>"}}
  facts: {{path: {w}/facts, format: lama}}
"#
    )
}

/// Every compressed model, by stage name.
const COMPRESSED: [&str; 10] = [
    "magnitude",
    "global",
    "random",
    "head-rows",
    "wanda",
    "wanda-dense",
    "sparsegpt",
    "gptq",
    "rtn",
    "int8",
];

fn pipeline(dir: &Path, world: &Path, arch: &str) -> PathBuf {
    let mut evals = String::new();
    for m in std::iter::once("base").chain(COMPRESSED) {
        evals += &format!(
            "  recall-{m}: {{kind: evaluate, model: {m}, task: knowledge, dataset: facts}}\n  \
             ppl-{m}: {{kind: evaluate, model: {m}, task: perplexity, mode: documents, \
             dataset: held, seqlen: 32}}\n"
        );
    }
    let text = format!(
        r#"version: 1
{datasets}stages:
  base: {{kind: train, architecture: {arch}, dataset: bio, vocabulary: held, dim: 48, layers: 2, heads: 4, hidden: 128, seqlen: 32, batch: 8, steps: 600, warmup: 15}}
  calib: {{kind: calibrate, model: base, dataset: bio, samples: 16, seqlen: 32, statistics: [norms, hessian]}}
  magnitude: {{kind: prune, model: base, method: magnitude, sparsity: 0.5}}
  global: {{kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.5, modules: mlp}}
  random: {{kind: prune, model: base, method: random, seed: 3, sparsity: 0.5, modules: attention}}
  head-rows: {{kind: prune, model: base, method: magnitude, pattern: rows, sparsity: 0.25, modules: lm_head}}
  wanda: {{kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}}
  wanda-dense: {{kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib, calibration_mode: dense}}
  sparsegpt: {{kind: prune, model: base, method: sparsegpt, sparsity: 0.5, calibration: calib}}
  gptq: {{kind: quantize, model: base, method: gptq, bits: 4, group_size: 16, calibration: calib}}
  rtn: {{kind: quantize, model: base, method: rtn, bits: 4, group_size: 16}}
  int8: {{kind: quantize, model: base, method: dynamic-int8}}
  div-wanda: {{kind: evaluate, model: wanda, task: divergence, dataset: held, seqlen: 32}}
{evals}"#,
        datasets = datasets(world),
    );
    let path = dir.join(format!("{arch}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The linear layers of the blocks, with their nn.Linear shapes (out, in), for `dim` 48, MLP
/// 128 and 2 blocks.
fn block_linears(arch: &str) -> Vec<(String, usize, usize)> {
    let (d, h) = (48, 128);
    let mut out = Vec::new();
    for l in 0..2 {
        let layers: Vec<(String, usize, usize)> = match arch {
            "gpt2" => vec![
                (format!("transformer.h.{l}.attn.c_attn.weight"), 3 * d, d),
                (format!("transformer.h.{l}.attn.c_proj.weight"), d, d),
                (format!("transformer.h.{l}.mlp.c_fc.weight"), h, d),
                (format!("transformer.h.{l}.mlp.c_proj.weight"), d, h),
            ],
            _ => {
                let p = format!("model.decoder.layers.{l}");
                vec![
                    (format!("{p}.self_attn.q_proj.weight"), d, d),
                    (format!("{p}.self_attn.k_proj.weight"), d, d),
                    (format!("{p}.self_attn.v_proj.weight"), d, d),
                    (format!("{p}.self_attn.out_proj.weight"), d, d),
                    (format!("{p}.fc1.weight"), h, d),
                    (format!("{p}.fc2.weight"), d, h),
                ]
            }
        };
        out.extend(layers);
    }
    out
}

fn family_compresses_evaluates_and_round_trips(arch: &str, class: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    let chance = small_world(&world_dir);
    let cache = tmp.path().join("cache");
    let file = pipeline(tmp.path(), &world_dir, arch);
    let started = std::time::Instant::now();
    let run = run_ok(&cache, &file);
    eprintln!(
        "{arch}: pipeline ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The model learned its world: recall by the knowledge probe far above the best constant
    // answer.
    let p1 = |m: &str| metric(&cache, &run, &format!("recall-{m}"), "p@1");
    let ppl = |m: &str| metric(&cache, &run, &format!("ppl-{m}"), "ppl");
    let base = p1("base");
    eprintln!(
        "{arch}: base P@1 {base:.3} (best constant answer {chance:.3}), held-out ppl {:.2}",
        ppl("base")
    );
    assert!(base > chance + 0.4, "{arch}: P@1 {base} vs {chance}");
    for m in COMPRESSED {
        eprintln!("{arch}: {m:>9}: P@1 {:.3}, ppl {:.2}", p1(m), ppl(m));
        assert!(ppl(m).is_finite() && ppl(m) > 1.0, "{arch} {m}");
    }
    // Half of every block matrix pruned changes the model but keeps it close; pruning half of
    // the attention weights at random ruins it; 8-bit weights barely change it.
    for m in ["magnitude", "wanda", "wanda-dense", "sparsegpt"] {
        assert_ne!(ppl(m), ppl("base"), "{arch} {m}");
        assert!(ppl(m) < 1.5 * ppl("base"), "{arch} {m}");
        assert!(ppl("random") > 2.0 * ppl(m), "{arch} {m}");
        let s = entry_meta(&cache, &run, m)["actual_sparsity"]
            .as_f64()
            .unwrap();
        assert!((s - 0.5).abs() < 0.01, "{arch} {m}: {s}");
    }
    assert!(
        (ppl("int8") / ppl("base") - 1.0).abs() < 0.05,
        "{arch} int8"
    );
    assert!(metric(&cache, &run, "div-wanda", "js") > 0.0);

    // Masks are per output row of each layer's nn.Linear view, every block matrix selected
    // once (GPT-2's fused c_attn as one 3·dim × dim matrix); Wanda prunes each row by half.
    let want = block_linears(arch);
    let records = sparsity_records(&cache, &run, "wanda");
    assert_eq!(records.len(), want.len(), "{arch}");
    for (r, (name, rows, cols)) in records.iter().zip(&want) {
        assert_eq!(r["name"].as_str().unwrap(), name);
        assert_eq!(
            (r["rows"].as_u64(), r["cols"].as_u64()),
            (Some(*rows as u64), Some(*cols as u64)),
            "{name}"
        );
        assert_eq!(
            r["row_zeros"]["min"].as_u64(),
            Some(*cols as u64 / 2),
            "{name}"
        );
        assert_eq!(
            r["row_zeros"]["max"].as_u64(),
            Some(*cols as u64 / 2),
            "{name}"
        );
    }
    let heads = sparsity_records(&cache, &run, "head-rows");
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0]["name"], "lm_head.weight");
    let groups = |m: &str| -> Vec<String> {
        sparsity_records(&cache, &run, m)
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mlp = if arch == "gpt2" { ".mlp." } else { ".fc" };
    assert!(groups("global").iter().all(|n| n.contains(mlp)), "{arch}");
    assert!(groups("random").iter().all(|n| !n.contains(mlp)), "{arch}");

    // Exported, the folder is the same class in the checkpoint's layout, and loaded again by
    // whittle it scores the same.
    for stage in ["sparsegpt", "gptq", "head-rows"] {
        let exported = export(&cache, &file, stage, tmp.path());
        let (config, header) = (&exported.config, &exported.header);
        assert_eq!(config["architectures"][0], class);
        if arch == "gpt2" {
            // Conv1D: in × out.
            assert_eq!(
                header["transformer.h.0.attn.c_attn.weight"]["shape"],
                serde_json::json!([48, 144])
            );
            assert_eq!(
                header["transformer.h.1.mlp.c_fc.weight"]["shape"],
                serde_json::json!([48, 128])
            );
        }
        // Only a replaced head is written; a tied one stays tied.
        assert_eq!(header.get("lm_head.weight").is_some(), stage == "head-rows");
        assert_eq!(
            config["tie_word_embeddings"],
            serde_json::json!(stage != "head-rows")
        );
        let hf = exported.dir;
        let r2 = run_loaded(
            &cache,
            tmp.path(),
            stage,
            &hf,
            &datasets(&world_dir),
            "  recall: {kind: evaluate, model: m, task: knowledge, dataset: facts}\n  \
             ppl: {kind: evaluate, model: m, task: perplexity, mode: documents, dataset: held, seqlen: 32}\n",
        );
        assert_eq!(
            metric(&cache, &r2, "recall", "p@1"),
            p1(stage),
            "{arch} {stage}"
        );
        assert_eq!(
            metric(&cache, &r2, "ppl", "ppl"),
            ppl(stage),
            "{arch} {stage}"
        );
        if stage == "sparsegpt" {
            transformers_check(&hf);
        }
    }
    streamed_matches_held(tmp.path(), &file, &world_dir, arch);
}

/// The trained model, exported and loaded under a memory budget smaller than itself, is read
/// block by block, and every stage gives the weights and numbers of the held model.
fn streamed_matches_held(dir: &Path, trained: &Path, world: &Path, arch: &str) {
    let cache = dir.join("cache");
    let hf = dir.join("hf-base");
    let t = trained.to_str().unwrap();
    let out = whittle(
        &cache,
        &["export", t, "base", "--out", hf.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let file = dir.join(format!("{arch}-streamed.yaml"));
    std::fs::write(
        &file,
        format!(
            "version: 1\nmodels:\n  m: {}\n{}stages:\n  base: {{kind: load, model: m, dtype: f32}}\n  \
             windows: {{kind: calibrate, model: base, dataset: bio, samples: 8, seqlen: 32, statistics: []}}\n  \
             wanda: {{kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: windows}}\n  \
             sparsegpt: {{kind: prune, model: base, method: sparsegpt, pattern: 2:4, calibration: windows}}\n  \
             gptq: {{kind: quantize, model: wanda, method: gptq, bits: 4, group_size: 16, calibration: windows}}\n  \
             ppl: {{kind: evaluate, model: sparsegpt, task: perplexity, mode: documents, dataset: held, seqlen: 32}}\n  \
             recall: {{kind: evaluate, model: gptq, task: knowledge, dataset: facts}}\n  \
             js: {{kind: evaluate, model: wanda, task: divergence, dataset: held, seqlen: 32}}\n",
            hf.display(),
            datasets(world)
        ),
    )
    .unwrap();
    let run = |cache: &Path, memory: Option<&str>| {
        let mut args = vec!["run", file.to_str().unwrap()];
        args.extend(memory.map(|m| ["--memory", m]).into_iter().flatten());
        let out = whittle(cache, &args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        common::last_run(cache)
    };
    let (held_cache, streamed_cache) = (dir.join("held"), dir.join("streamed"));
    let held = run(&held_cache, None);
    // Two blocks of width 48 are over 100 kB in f32: 64 kB of memory holds less than half.
    let streamed = run(&streamed_cache, Some("64K"));
    for stage in ["wanda", "sparsegpt", "gptq", "ppl", "recall", "js"] {
        let log = log_of(&streamed_cache, &streamed, stage);
        assert!(
            log.contains("reading it block by block"),
            "{arch} {stage}:\n{log}"
        );
    }
    for stage in ["wanda", "sparsegpt", "gptq"] {
        let a = entry_meta(&held_cache, &held, stage);
        let b = entry_meta(&streamed_cache, &streamed, stage);
        assert_eq!(a["weights"], b["weights"], "{arch} {stage}: tensor digests");
    }
    for stage in ["ppl", "recall", "js"] {
        let a = entry_meta(&held_cache, &held, stage);
        let b = entry_meta(&streamed_cache, &streamed, stage);
        assert_eq!(a["metrics"], b["metrics"], "{arch} {stage}");
    }
}

/// With `python3` that has transformers and torch: the exported folder loads as its class and
/// gives whittle's logits.
fn transformers_check(hf: &Path) {
    let has = Command::new("python3")
        .args(["-c", "import transformers, torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("skipping the transformers check: python3 with transformers and torch not found");
        return;
    }
    use candle_core::{DType, Device, Tensor};
    use whittle::model::{load_weights, Checkpoint, ModelConfig};
    let ckpt = Checkpoint::resolve(hf).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let weights = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let model = cfg
        .architecture()
        .build(&cfg, &weights, Vec::new())
        .unwrap()
        .into_causal("test")
        .unwrap();
    let tokens: Vec<u32> = (1..20).collect();
    let ids = Tensor::new(tokens.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let want: Vec<f32> = model
        .forward(&ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let script = format!(
        "import json, torch, transformers\n\
         m = transformers.AutoModelForCausalLM.from_pretrained({dir:?}, dtype=torch.float32)\n\
         print(type(m).__name__)\n\
         with torch.no_grad():\n    \
             out = m(torch.tensor([{tokens:?}])).logits\n\
         print(json.dumps(out.flatten().tolist()))\n",
        dir = hf.display().to_string(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let class = lines.next().unwrap();
    let got: Vec<f32> = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(got.len(), want.len());
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{class}: transformers vs whittle on the exported folder: max |logit difference| = {max:e}"
    );
    assert!(max < 1e-4, "{max}");
}

#[test]
fn gpt2_compresses_evaluates_and_round_trips() {
    family_compresses_evaluates_and_round_trips("gpt2", "GPT2LMHeadModel");
}

#[test]
fn opt_compresses_evaluates_and_round_trips() {
    family_compresses_evaluates_and_round_trips("opt", "OPTForCausalLM");
}
