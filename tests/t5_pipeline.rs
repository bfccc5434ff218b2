//! T5 through the pipeline: the tiny random-weight v1.1 checkpoint of tests/fixtures/t5 (with the
//! tokenizer that spells id 63 `<extra_id_0>`) compressed by every method, probed with sentinel
//! probes, exported as a Hugging Face folder and read back with the same scores.

mod common;

use common::{
    entry, entry_meta, export, metric, run_loaded, run_ok, sparsity_names, text, whittle, Exported,
};

use std::path::{Path, PathBuf};

/// Every compressed model, by stage name.
const COMPRESSED: [&str; 9] = [
    "magnitude",
    "global",
    "random",
    "head-rows",
    "wanda",
    "sparsegpt",
    "gptq",
    "rtn",
    "int8",
];

/// The checkpoint `variant` (`v1_0`, `v1_1`), documents (word-level `tN` text) and a LAMA
/// directory of two relations.
fn inputs(dir: &Path, variant: &str) -> (PathBuf, PathBuf, PathBuf) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join(variant).join(f), model.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures.join("sentinel_tokenizer.json"),
        model.join("tokenizer.json"),
    )
    .unwrap();
    // 24 documents of 40 words from a fixed linear congruence: varied, reproducible.
    let mut x: u64 = 7;
    let docs: Vec<String> = (0..24)
        .map(|_| {
            (0..40)
                .map(|_| {
                    x = (x * 1103515245 + 12345) % (1 << 31);
                    format!("t{}", 1 + x % 62)
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let text = dir.join("docs.txt");
    std::fs::write(&text, docs.join("\n<|endoftext|>\n")).unwrap();
    let lama = dir.join("lama");
    std::fs::create_dir_all(lama.join("TREx")).unwrap();
    let relations = [
        (
            "P1",
            "[X] t17 [Y] t9 t30 .",
            [("t5", "t32"), ("t6", "t12"), ("t7", "t40")],
        ),
        (
            "P2",
            "t11 [X] t3 [Y]",
            [("t20", "t7"), ("t21", "t8"), ("t22", "t7")],
        ),
    ];
    let mut lines = String::new();
    for (id, template, facts) in relations {
        lines += &serde_json::json!({"relation": id, "template": template}).to_string();
        lines += "\n";
        let facts: String = facts
            .iter()
            .map(|(s, o)| serde_json::json!({"sub_label": s, "obj_label": o}).to_string() + "\n")
            .collect();
        std::fs::write(lama.join("TREx").join(format!("{id}.jsonl")), facts).unwrap();
    }
    std::fs::write(lama.join("relations.jsonl"), lines).unwrap();
    (model, text, lama)
}

fn datasets(text: &Path, lama: &Path) -> String {
    format!(
        "datasets:\n  docs: {{path: {}, documents: separator, separator: \"<|endoftext|>\"}}\n  \
         facts: {{path: {}, format: lama}}\n",
        text.display(),
        lama.display()
    )
}

#[test]
fn t5_compresses_probes_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, docs, lama) = inputs(tmp.path(), "v1_1");
    let cache = tmp.path().join("cache");
    let mut evals = String::new();
    for m in std::iter::once("base").chain(COMPRESSED) {
        evals += &format!(
            "  recall-{m}: {{kind: evaluate, model: {m}, task: knowledge, dataset: facts}}\n  \
             cands-{m}: {{kind: evaluate, model: {m}, task: knowledge, dataset: facts, \
             ranking: candidates}}\n"
        );
    }
    let yaml = format!(
        r#"version: 1
models:
  t5: {model}
{datasets}stages:
  base: {{kind: load, model: t5, dtype: f32}}
  calib: {{kind: calibrate, model: base, dataset: docs, samples: 8, seqlen: 16, statistics: [norms, hessian]}}
  magnitude: {{kind: prune, model: base, method: magnitude, sparsity: 0.5}}
  global: {{kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.5, modules: mlp}}
  random: {{kind: prune, model: base, method: random, seed: 3, sparsity: 0.5, modules: attention}}
  head-rows: {{kind: prune, model: base, method: magnitude, pattern: rows, sparsity: 0.25, modules: lm_head}}
  wanda: {{kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}}
  sparsegpt: {{kind: prune, model: base, method: sparsegpt, sparsity: 0.5, calibration: calib}}
  gptq: {{kind: quantize, model: base, method: gptq, bits: 4, group_size: 16, calibration: calib}}
  rtn: {{kind: quantize, model: base, method: rtn, bits: 4, group_size: 16}}
  int8: {{kind: quantize, model: base, method: dynamic-int8}}
  div-wanda: {{kind: evaluate, model: wanda, task: divergence, dataset: docs, seqlen: 16}}
  div-base: {{kind: evaluate, model: base, task: divergence, dataset: docs, seqlen: 16}}
{evals}"#,
        model = model.display(),
        datasets = datasets(&docs, &lama),
    );
    let file = tmp.path().join("t5.yaml");
    std::fs::write(&file, yaml).unwrap();
    let run = run_ok(&cache, &file);

    let p1 = |m: &str| metric(&cache, &run, &format!("recall-{m}"), "p@1");
    let mrr = |m: &str| metric(&cache, &run, &format!("recall-{m}"), "mrr");
    let cand = |m: &str| metric(&cache, &run, &format!("cands-{m}"), "mrr");
    for m in std::iter::once("base").chain(COMPRESSED) {
        eprintln!(
            "t5 {m:>9}: vocabulary P@1 {:.3} MRR {:.4}, candidates MRR {:.4}",
            p1(m),
            mrr(m),
            cand(m)
        );
        assert_eq!(metric(&cache, &run, &format!("recall-{m}"), "facts"), 6.0);
    }
    // Compression changes a random model's answers (its MRR over the whole vocabulary).
    for m in ["magnitude", "random", "wanda", "sparsegpt", "gptq", "rtn"] {
        assert_ne!(mrr(m), mrr("base"), "{m}");
    }
    // Teacher-forced decoder distributions: the base against itself is exactly 0, Wanda's
    // half-pruned model drifts.
    let js = |m: &str| metric(&cache, &run, m, "js");
    eprintln!(
        "t5 divergence: wanda JS {:.5}, base {:.5}",
        js("div-wanda"),
        js("div-base")
    );
    assert_eq!(js("div-base"), 0.0);
    assert!(js("div-wanda") > 0.0 && js("div-wanda") <= std::f64::consts::LN_2);
    for m in ["magnitude", "wanda", "sparsegpt"] {
        let s = entry_meta(&cache, &run, m)["actual_sparsity"]
            .as_f64()
            .unwrap();
        assert!((s - 0.5).abs() < 0.01, "{m}: {s}");
    }

    // Every block linear once, encoder then decoder, self- and cross-attention; groups select
    // their own.
    let names = sparsity_names(&cache, &run, "wanda");
    assert_eq!(names.len(), 2 * 7 + 3 * 11, "{names:?}");
    assert_eq!(names[0], "encoder.block.0.layer.0.SelfAttention.q.weight");
    assert!(names.contains(&"decoder.block.2.layer.1.EncDecAttention.v.weight".to_string()));
    let global = sparsity_names(&cache, &run, "global");
    assert_eq!(global.len(), 5 * 3);
    assert!(global.iter().all(|n| n.contains(".DenseReluDense.")));
    let random = sparsity_names(&cache, &run, "random");
    assert_eq!(random.len(), 2 * 4 + 3 * 8);
    assert!(random.iter().all(|n| n.contains("Attention.")));
    assert_eq!(
        sparsity_names(&cache, &run, "head-rows"),
        ["lm_head.weight"]
    );

    // Exported, the folder is a T5ForConditionalGeneration in the checkpoint's layout, and
    // loaded again by whittle it scores the same.
    for stage in ["sparsegpt", "gptq", "head-rows"] {
        let hf = tmp.path().join(format!("hf-{stage}"));
        let f = file.to_str().unwrap();
        let out = whittle(&cache, &["export", f, stage, "--out", hf.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], "T5ForConditionalGeneration");
        let again = tmp.path().join(format!("again-{stage}.yaml"));
        std::fs::write(
            &again,
            format!(
                "version: 1\nmodels:\n  exported: {}\n{}stages:\n  m: {{kind: load, model: exported, dtype: f32}}\n  \
                 recall: {{kind: evaluate, model: m, task: knowledge, dataset: facts}}\n  \
                 cands: {{kind: evaluate, model: m, task: knowledge, dataset: facts, ranking: candidates}}\n",
                hf.display(),
                datasets(&docs, &lama)
            ),
        )
        .unwrap();
        let r2 = run_ok(&cache, &again);
        assert_eq!(metric(&cache, &r2, "recall", "mrr"), mrr(stage), "{stage}");
        assert_eq!(metric(&cache, &r2, "cands", "mrr"), cand(stage), "{stage}");
    }
}

/// The head of a tied T5 v1.0 replaced (rows pruned) is exported untied, carrying the
/// d_model^-½ its input was scaled by while tied (an untied head's input is not): read back, the
/// model ranks as it did in the pipeline.
#[test]
fn t5_tied_head_exports_with_its_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, docs, lama) = inputs(tmp.path(), "v1_0");
    let cache = tmp.path().join("cache");
    let yaml = format!(
        "version: 1\nmodels:\n  t5: {}\n{}stages:\n  base: {{kind: load, model: t5, dtype: f32}}\n  \
         head-rows: {{kind: prune, model: base, method: magnitude, pattern: rows, sparsity: 0.25, modules: lm_head}}\n  \
         recall: {{kind: evaluate, model: head-rows, task: knowledge, dataset: facts}}\n  \
         cands: {{kind: evaluate, model: head-rows, task: knowledge, dataset: facts, ranking: candidates}}\n",
        model.display(),
        datasets(&docs, &lama)
    );
    let file = tmp.path().join("t5.yaml");
    std::fs::write(&file, yaml).unwrap();
    let run = run_ok(&cache, &file);
    let Exported {
        dir: hf, config, ..
    } = export(&cache, &file, "head-rows", tmp.path());
    assert_eq!(config["tie_word_embeddings"], false);
    // The written head is the pruned embedding times 32^-½.
    let exported =
        candle_core::safetensors::load(hf.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let shared: Vec<f32> = exported["shared.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let head: Vec<f32> = exported["lm_head.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let zero_rows = head
        .chunks(32)
        .filter(|r| r.iter().all(|&x| x == 0.0))
        .count();
    assert_eq!(zero_rows, 16, "a quarter of the 64 rows pruned");
    for (h, s) in head.iter().zip(&shared) {
        assert!(
            *h == 0.0 || (h - s * 32f32.powf(-0.5)).abs() <= 1e-7,
            "{h} vs {s}"
        );
    }
    let r2 = run_loaded(
        &cache,
        tmp.path(),
        "head-rows",
        &hf,
        &datasets(&docs, &lama),
        "  recall: {kind: evaluate, model: m, task: knowledge, dataset: facts}\n  \
         cands: {kind: evaluate, model: m, task: knowledge, dataset: facts, ranking: candidates}\n",
    );
    for (task, m) in [("recall", "mrr"), ("cands", "mrr"), ("recall", "p@10")] {
        let (a, b) = (metric(&cache, &run, task, m), metric(&cache, &r2, task, m));
        assert_eq!(a, b, "{task} {m}");
    }
}

/// Multiple choice on a T5 through the pipeline: the context is the encoder's source, each
/// choice the decoder's output. The stage reports acc and acc_norm, and its per-sample scores
/// are those of the library's seq2seq scorer run here on the same weights.
#[test]
fn t5_answers_multiple_choice() {
    use whittle::eval::choice::{evaluate_choices, ChoiceTask};
    use whittle::eval::loglik::{Scorer, Seq2SeqPairEncoder};
    let tmp = tempfile::tempdir().unwrap();
    let (model, docs, lama) = inputs(tmp.path(), "v1_1");
    let cache = tmp.path().join("cache");
    let records: Vec<serde_json::Value> = (0..6u32)
        .map(|i| {
            serde_json::json!({
                "q": format!("t{} t{} t9", 2 + i, 20 + i),
                "a": format!("t{}", 30 + i),
                "b": format!("t{} t{}", 40 + i, 50 + i),
                "label": i % 2,
            })
        })
        .collect();
    let data = tmp.path().join("choice.jsonl");
    let lines: String = records.iter().map(|r| r.to_string() + "\n").collect();
    std::fs::write(&data, lines).unwrap();
    let task_text = "context: \"{{q}}\"\nchoices: [\"{{a}}\", \"{{b}}\"]\ngold: {field: label}\n";
    let task_file = tmp.path().join("pick.yaml");
    std::fs::write(&task_file, task_text).unwrap();
    let yaml = format!(
        "version: 1\nmodels:\n  t5: {}\n{}  choice: {}\nstages:\n  base: {{kind: load, model: t5, dtype: f32}}\n  \
         pruned: {{kind: prune, model: base, method: magnitude, sparsity: 0.5}}\n  \
         mc-base: {{kind: evaluate, model: base, task: multiple-choice, dataset: choice, task_file: {t}, batch_size: 3}}\n  \
         mc-pruned: {{kind: evaluate, model: pruned, task: multiple-choice, dataset: choice, task_file: {t}}}\n",
        model.display(),
        datasets(&docs, &lama),
        data.display(),
        t = task_file.display(),
    );
    let file = tmp.path().join("mc.yaml");
    std::fs::write(&file, yaml).unwrap();
    let run = run_ok(&cache, &file);
    for stage in ["mc-base", "mc-pruned"] {
        let meta = entry_meta(&cache, &run, stage);
        assert_eq!(meta["metrics"]["samples"], 6, "{meta}");
        for m in ["acc", "acc_norm"] {
            let v = meta["metrics"][m].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{stage} {m} = {v}");
        }
        assert!(
            meta["settings"]["scoring"]
                .as_str()
                .unwrap()
                .contains("</s>"),
            "{meta}"
        );
    }

    // The base model's samples, against the library on the checkpoint itself.
    let ckpt = whittle::model::Checkpoint::resolve(&model).unwrap();
    let cfg = whittle::model::ModelConfig::from_file(&ckpt.config).unwrap();
    let weights = whittle::model::load_weights(
        &ckpt,
        &cfg,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let lm = cfg
        .architecture()
        .build(&cfg, &weights, Vec::new())
        .unwrap();
    let whittle::model::LanguageModel::Seq2Seq(lm) = lm else {
        panic!("T5 built as {:?}", lm.objective())
    };
    let tok = whittle::model::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let pairs = Seq2SeqPairEncoder::new(&tok, &cfg);
    let task = ChoiceTask::from_yaml_str(task_text, "pick.yaml").unwrap();
    let (want, want_samples) = evaluate_choices(
        Scorer::Seq2Seq {
            model: &*lm,
            pairs: &pairs,
        },
        &task,
        &records,
        1,
        &candle_core::Device::Cpu,
        &mut |_| Ok(()),
    )
    .unwrap();
    let e = entry(&cache, &run, "mc-base");
    let got: Vec<serde_json::Value> = std::fs::read_to_string(e.path("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 6);
    for (g, w) in got.iter().zip(&want_samples) {
        let lls: Vec<f64> = serde_json::from_value(g["loglik"].clone()).unwrap();
        for (a, b) in lls.iter().zip(&w.loglik) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        assert_eq!(g["pred"], w.pred);
    }
    let meta = entry_meta(&cache, &run, "mc-base");
    assert_eq!(meta["metrics"]["acc"].as_f64().unwrap(), want.acc);
}
