//! The BERT fixture through the pipeline: compressed by every method (selection by group on
//! BERT's names), probed and compared as a masked model, exported as a Hugging Face folder and
//! read back with the same scores.

mod common;

use common::{
    entry, entry_meta, export, metric, run_loaded, run_ok, sparsity_names, text, whittle, Exported,
};

use std::path::{Path, PathBuf};

fn bert() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders/bert")
}

/// Text in the fixture's words (w5..w63) and a LAMA directory of two relations over them.
fn world(dir: &Path) {
    std::fs::create_dir_all(dir.join("facts/TREx")).unwrap();
    let mut docs = Vec::new();
    for d in 0..12 {
        let words: Vec<String> = (0..20)
            .map(|i| format!("w{}", 5 + (d * 13 + i * 7) % 59))
            .collect();
        docs.push(words.join(" "));
    }
    std::fs::write(dir.join("text.txt"), docs.join("\n\n")).unwrap();
    std::fs::write(
        dir.join("facts/relations.jsonl"),
        "{\"relation\": \"P1\", \"template\": \"[X] w12 [Y] w13\", \"label\": \"one\"}\n\
         {\"relation\": \"P2\", \"template\": \"w14 [X] w15 w16 [Y]\", \"label\": \"two\"}\n",
    )
    .unwrap();
    for (rel, pairs) in [
        ("P1", [(10, 20), (11, 21), (17, 20), (18, 22), (19, 23)]),
        ("P2", [(30, 40), (31, 41), (32, 40), (33, 42), (34, 43)]),
    ] {
        let lines: String = pairs
            .iter()
            .map(|(s, o)| format!("{{\"sub_label\": \"w{s}\", \"obj_label\": \"w{o}\"}}\n"))
            .collect();
        std::fs::write(dir.join(format!("facts/TREx/{rel}.jsonl")), lines).unwrap();
    }
}

/// The exported folder, loaded again and probed, scores as the stage it came from did.
fn same_recall_when_loaded(
    cache: &Path,
    run: &whittle::cache::RunRecord,
    stage: &str,
    hf: &Exported,
    world: &Path,
    dir: &Path,
) {
    let stages = "  recall: {kind: evaluate, model: m, task: knowledge, dataset: facts}\n";
    let again = run_loaded(cache, dir, stage, &hf.dir, &datasets(world), stages);
    for k in ["p@1", "p@5", "mrr"] {
        assert_eq!(
            metric(cache, &again, "recall", k),
            metric(cache, run, &format!("recall-{stage}"), k),
            "{stage} {k}"
        );
    }
}

fn datasets(world: &Path) -> String {
    let w = world.display();
    format!(
        "datasets:\n  text: {{path: {w}/text.txt, documents: separator, separator: \"\\n\\n\"}}\n  \
         facts: {{path: {w}/facts, format: lama}}\n"
    )
}

const COMPRESSED: [&str; 10] = [
    "magnitude",
    "global",
    "random",
    "head-rows",
    "wanda",
    "sparsegpt",
    "gptq",
    "rtn",
    "int8",
    "int8-attention",
];

fn pipeline(dir: &Path, world: &Path) -> PathBuf {
    let mut evals = String::new();
    for m in std::iter::once("base").chain(COMPRESSED) {
        evals += &format!(
            "  recall-{m}: {{kind: evaluate, model: {m}, task: knowledge, dataset: facts}}\n"
        );
    }
    let text = format!(
        r#"version: 1
models:
  bert: {bert}
{datasets}stages:
  base: {{kind: load, model: bert, dtype: f32}}
  calib: {{kind: calibrate, model: base, dataset: text, samples: 8, seqlen: 16, statistics: [norms, hessian]}}
  magnitude: {{kind: prune, model: base, method: magnitude, sparsity: 0.5}}
  global: {{kind: prune, model: base, method: magnitude, scope: global, sparsity: 0.5, modules: mlp}}
  random: {{kind: prune, model: base, method: random, seed: 3, sparsity: 0.5, modules: attention}}
  attn-out: {{kind: prune, model: base, method: magnitude, sparsity: 0.5, modules: attention_output}}
  head-rows: {{kind: prune, model: base, method: magnitude, pattern: rows, sparsity: 0.25, modules: lm_head}}
  wanda: {{kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}}
  sparsegpt: {{kind: prune, model: base, method: sparsegpt, sparsity: 0.5, calibration: calib}}
  gptq: {{kind: quantize, model: base, method: gptq, bits: 4, group_size: 16, calibration: calib}}
  rtn: {{kind: quantize, model: base, method: rtn, bits: 4, group_size: 16}}
  int8: {{kind: quantize, model: base, method: dynamic-int8}}
  int8-attention: {{kind: quantize, model: base, method: dynamic-int8, modules: attention}}
  div-wanda: {{kind: evaluate, model: wanda, task: divergence, dataset: text, seqlen: 16}}
  div-base: {{kind: evaluate, model: base, task: divergence, dataset: text, seqlen: 16}}
{evals}"#,
        bert = bert().display(),
        datasets = datasets(world),
    );
    let path = dir.join("bert.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bert_compresses_evaluates_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir);
    let cache = tmp.path().join("cache");
    let file = pipeline(tmp.path(), &world_dir);
    let run = run_ok(&cache, &file);

    // Every model is probed as a masked model over the 10 facts (none skipped: every object
    // is one word of the vocabulary).
    let p1 = |m: &str| metric(&cache, &run, &format!("recall-{m}"), "p@1");
    for m in std::iter::once("base").chain(COMPRESSED) {
        assert_eq!(metric(&cache, &run, &format!("recall-{m}"), "facts"), 10.0);
        eprintln!(
            "bert {m:>14}: P@1 {:.3}, MRR {:.4}",
            p1(m),
            metric(&cache, &run, &format!("recall-{m}"), "mrr")
        );
        let settings = &entry_meta(&cache, &run, &format!("recall-{m}"))["settings"];
        assert_eq!(settings["style"], "masked", "{m}");
        assert_eq!(settings["mask_token"], "[MASK]", "{m}");
    }
    // Compression changed the model's answers' scores; the base against itself not at all.
    for m in ["magnitude", "wanda", "sparsegpt", "gptq", "random"] {
        assert_ne!(
            metric(&cache, &run, &format!("recall-{m}"), "mrr"),
            metric(&cache, &run, "recall-base", "mrr"),
            "{m}"
        );
    }
    assert_eq!(metric(&cache, &run, "div-base", "js"), 0.0);
    assert!(metric(&cache, &run, "div-wanda", "js") > 0.0);
    for m in ["magnitude", "wanda", "sparsegpt"] {
        let s = entry_meta(&cache, &run, m)["actual_sparsity"]
            .as_f64()
            .unwrap();
        assert!((s - 0.5).abs() < 0.01, "{m}: {s}");
    }

    // Selection by group on BERT's names.
    let block = |l: usize, m: &str| format!("bert.encoder.layer.{l}.{m}.weight");
    let attention = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    ];
    let mlp = ["intermediate.dense", "output.dense"];
    let all: Vec<String> = (0..2)
        .flat_map(|l| attention.iter().chain(&mlp).map(move |m| block(l, m)))
        .collect();
    assert_eq!(sparsity_names(&cache, &run, "wanda"), all);
    assert_eq!(sparsity_names(&cache, &run, "magnitude"), all);
    let want_mlp: Vec<String> = (0..2)
        .flat_map(|l| mlp.iter().map(move |m| block(l, m)))
        .collect();
    assert_eq!(sparsity_names(&cache, &run, "global"), want_mlp);
    // Study K's attention of an encoder: query, key and value; the output dense is its own group.
    let want_attn: Vec<String> = (0..2)
        .flat_map(|l| attention[..3].iter().map(move |m| block(l, m)))
        .collect();
    assert_eq!(sparsity_names(&cache, &run, "random"), want_attn);
    let want_out: Vec<String> = (0..2).map(|l| block(l, attention[3])).collect();
    assert_eq!(sparsity_names(&cache, &run, "attn-out"), want_out);
    assert_eq!(
        sparsity_names(&cache, &run, "head-rows"),
        ["cls.predictions.decoder.weight"]
    );

    // Exported, the folder is BertForMaskedLM in the checkpoint's layout, and loaded again by
    // whittle it scores exactly the same.
    for stage in ["sparsegpt", "head-rows"] {
        let hf = export(&cache, &file, stage, tmp.path());
        assert_eq!(hf.config["architectures"][0], "BertForMaskedLM");
        // An untied head carries its own bias too (transformers unties it with the weight).
        for name in [
            "cls.predictions.decoder.weight",
            "cls.predictions.decoder.bias",
        ] {
            assert_eq!(
                hf.header.get(name).is_some(),
                stage == "head-rows",
                "{name}"
            );
        }
        assert_eq!(
            hf.config["tie_word_embeddings"],
            serde_json::json!(stage != "head-rows")
        );
        same_recall_when_loaded(&cache, &run, stage, &hf, &world_dir, tmp.path());
    }

    // Perplexity is a causal task: refused, naming what works.
    let ppl = tmp.path().join("ppl.yaml");
    std::fs::write(
        &ppl,
        format!(
            "version: 1\nmodels:\n  bert: {}\n{}stages:\n  m: {{kind: load, model: bert, dtype: f32}}\n  \
             ppl: {{kind: evaluate, model: m, task: perplexity, dataset: text, seqlen: 16}}\n",
            bert().display(),
            datasets(&world_dir)
        ),
    )
    .unwrap();
    let out = whittle(&cache, &["run", ppl.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let msg = text(&out);
    assert!(
        msg.contains("perplexity") && msg.contains("knowledge"),
        "{msg}"
    );

    // So is multiple choice: a masked model gives no log-likelihood of a continuation (nor does
    // the harness ask one of it).
    let data = tmp.path().join("choice.jsonl");
    std::fs::write(
        &data,
        "{\"q\": \"a b\", \"a\": \"c\", \"b\": \"d\", \"label\": 0}\n",
    )
    .unwrap();
    let task = tmp.path().join("pick.yaml");
    std::fs::write(
        &task,
        "context: \"{{q}}\"\nchoices: [\"{{a}}\", \"{{b}}\"]\ngold: {field: label}\n",
    )
    .unwrap();
    let mc = tmp.path().join("mc.yaml");
    std::fs::write(
        &mc,
        format!(
            "version: 1\nmodels:\n  bert: {}\n{}  choice: {}\nstages:\n  m: {{kind: load, model: bert, dtype: f32}}\n  \
             mc: {{kind: evaluate, model: m, task: multiple-choice, dataset: choice, task_file: {}}}\n",
            bert().display(),
            datasets(&world_dir),
            data.display(),
            task.display()
        ),
    )
    .unwrap();
    let out = whittle(&cache, &["run", mc.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let msg = text(&out);
    assert!(
        msg.contains("multiple choice") && msg.contains("masked") && msg.contains("knowledge"),
        "{msg}"
    );
}

/// `arch: bert` trains a `BertForMaskedLM` on the synthetic world with the masked-LM objective:
/// the loss falls well below the uniform guess, the folder loads as an encoder whose tokenizer
/// has `[MASK]` as its last id, and the masked probe runs on it. (That it learns the facts is
/// `tests/bert_train.rs`.)
#[test]
fn bert_trains_on_the_world_with_the_masked_objective() {
    use whittle::train::synth::{self, SynthConfig};
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("world");
    let corpus = synth::generate(&SynthConfig {
        entities: 12,
        train_docs_per_entity: 10,
        filler_min: 0,
        filler_max: 1,
        ..SynthConfig::default()
    })
    .unwrap();
    corpus.write(&w).unwrap();
    let text = format!(
        r#"version: 1
datasets:
  bio: {{path: {w}/train.txt, documents: separator, separator: "<|endoftext|>"}}
  held: {{path: {w}/heldout.txt, documents: separator, separator: "<|endoftext|>"}}
  facts: {{path: {w}/facts, format: lama}}
stages:
  base: {{kind: train, architecture: bert, dataset: bio, vocabulary: held, dim: 32, layers: 1, heads: 4, hidden: 64, seqlen: 32, batch: 8, steps: 150, warmup: 10, lr: 0.003}}
  recall-base: {{kind: evaluate, model: base, task: knowledge, dataset: facts}}
"#,
        w = w.display()
    );
    let file = tmp.path().join("train.yaml");
    std::fs::write(&file, text).unwrap();
    let cache = tmp.path().join("cache");
    let run = run_ok(&cache, &file);
    let meta = entry_meta(&cache, &run, "base");
    let vocab = meta["vocab_size"].as_u64().unwrap() as usize;
    let losses: Vec<f64> = serde_json::from_value(meta["losses"].clone()).unwrap();
    let uniform = (vocab as f64).ln();
    eprintln!(
        "bert: loss {:.3} at step 1, {:.3} at the end (uniform guess {uniform:.3})",
        losses[0], meta["final_loss"]
    );
    assert!(
        (losses[0] - uniform).abs() < 0.5,
        "{} vs {uniform}",
        losses[0]
    );
    assert!(meta["final_loss"].as_f64().unwrap() < uniform - 0.7);

    let e = entry(&cache, &run, "base");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.path("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
    let tok = whittle::model::Tokenizer::from_file(e.path("model/tokenizer.json")).unwrap();
    assert_eq!(tok.token_id("[MASK]"), Some(vocab as u32 - 1));
    assert_eq!(tok.vocab_size(), vocab);
    let probe = entry_meta(&cache, &run, "recall-base");
    assert_eq!(probe["settings"]["style"], "masked");
    assert_eq!(probe["metrics"]["facts"], 72);
}

/// ALBERT's shared layers through the pipeline: a shared matrix is compressed once (its name
/// listed once, however many blocks run it), Wanda, SparseGPT and GPTQ take statistics merged
/// over every block that runs it, sequential calibration is refused with what to use instead,
/// and the export is an `AlbertForMaskedLM` folder that scores the same when loaded again.
#[test]
fn albert_shares_compression_across_its_layers_and_round_trips() {
    let albert = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders/albert");
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir);
    let cache = tmp.path().join("cache");
    let methods = [
        "magnitude",
        "wanda",
        "sparsegpt",
        "gptq",
        "int8",
        "head-rows",
    ];
    let evals: String = std::iter::once("base")
        .chain(methods)
        .map(|m| {
            format!(
                "  recall-{m}: {{kind: evaluate, model: {m}, task: knowledge, dataset: facts}}\n"
            )
        })
        .collect();
    let file = tmp.path().join("albert.yaml");
    std::fs::write(
        &file,
        format!(
            r#"version: 1
models:
  albert: {albert}
{datasets}stages:
  base: {{kind: load, model: albert, dtype: f32}}
  calib: {{kind: calibrate, model: base, dataset: text, samples: 8, seqlen: 16, statistics: [norms, hessian]}}
  magnitude: {{kind: prune, model: base, method: magnitude, sparsity: 0.5}}
  wanda: {{kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib, calibration_mode: dense}}
  sparsegpt: {{kind: prune, model: base, method: sparsegpt, sparsity: 0.5, calibration: calib, calibration_mode: dense}}
  gptq: {{kind: quantize, model: base, method: gptq, bits: 4, group_size: 16, calibration: calib, calibration_mode: dense}}
  int8: {{kind: quantize, model: base, method: dynamic-int8}}
  head-rows: {{kind: prune, model: base, method: magnitude, pattern: rows, sparsity: 0.25, modules: lm_head}}
  div-wanda: {{kind: evaluate, model: wanda, task: divergence, dataset: text, seqlen: 16}}
{evals}"#,
            albert = albert.display(),
            datasets = datasets(&world_dir),
        ),
    )
    .unwrap();
    let run = run_ok(&cache, &file);

    // The fixture runs 6 blocks from 4 stored layers: each stored matrix is pruned once.
    let stored: Vec<String> = [(0, 0), (0, 1), (1, 0), (1, 1)]
        .iter()
        .flat_map(|(g, i)| {
            [
                "attention.query",
                "attention.key",
                "attention.value",
                "attention.dense",
                "ffn",
                "ffn_output",
            ]
            .map(|m| format!("albert.encoder.albert_layer_groups.{g}.albert_layers.{i}.{m}.weight"))
        })
        .collect();
    for m in ["magnitude", "wanda", "sparsegpt"] {
        assert_eq!(sparsity_names(&cache, &run, m), stored, "{m}");
        let s = entry_meta(&cache, &run, m)["actual_sparsity"]
            .as_f64()
            .unwrap();
        assert!((s - 0.5).abs() < 0.01, "{m}: {s}");
    }
    let p1 = |m: &str| metric(&cache, &run, &format!("recall-{m}"), "p@1");
    for m in std::iter::once("base").chain(methods) {
        assert_eq!(metric(&cache, &run, &format!("recall-{m}"), "facts"), 10.0);
        eprintln!(
            "albert {m:>10}: P@1 {:.3}, MRR {:.4}",
            p1(m),
            metric(&cache, &run, &format!("recall-{m}"), "mrr")
        );
    }
    for m in ["magnitude", "wanda", "sparsegpt", "gptq", "int8"] {
        assert_ne!(
            metric(&cache, &run, &format!("recall-{m}"), "mrr"),
            metric(&cache, &run, "recall-base", "mrr"),
            "{m}"
        );
    }
    assert!(metric(&cache, &run, "div-wanda", "js") > 0.0);

    // Exported as AlbertForMaskedLM in the checkpoint's layout; loaded again, the same scores.
    for stage in ["sparsegpt", "head-rows"] {
        let hf = export(&cache, &file, stage, tmp.path());
        assert_eq!(hf.config["architectures"][0], "AlbertForMaskedLM");
        for name in ["predictions.decoder.weight", "predictions.decoder.bias"] {
            assert_eq!(
                hf.header.get(name).is_some(),
                stage == "head-rows",
                "{name}"
            );
        }
        same_recall_when_loaded(&cache, &run, stage, &hf, &world_dir, tmp.path());
    }

    // Sequential calibration would compress a shared matrix once per block: refused, saying
    // what to use instead.
    let seq = tmp.path().join("sequential.yaml");
    std::fs::write(
        &seq,
        format!(
            "version: 1\nmodels:\n  albert: {}\n{}stages:\n  base: {{kind: load, model: albert, dtype: f32}}\n  \
             calib: {{kind: calibrate, model: base, dataset: text, samples: 8, seqlen: 16}}\n  \
             wanda: {{kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}}\n",
            albert.display(),
            datasets(&world_dir)
        ),
    )
    .unwrap();
    let out = whittle(&cache, &["run", seq.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("calibration_mode: dense") && msg.contains("run by 2 blocks"),
        "{msg}"
    );
}

/// RoBERTa and DistilBERT, the other two classes of the BERT family module: compressed by a
/// calibrated and an uncalibrated method and by head rows, probed with their own mask token,
/// exported as their own class (an untied head with its own bias) and read back with the same
/// scores.
#[test]
fn roberta_and_distilbert_compress_export_and_round_trip() {
    for (family, class, mask, head, head_bias) in [
        (
            "roberta",
            "RobertaForMaskedLM",
            "<mask>",
            "lm_head.decoder.weight",
            Some("lm_head.decoder.bias"),
        ),
        (
            "distilbert",
            "DistilBertForMaskedLM",
            "[MASK]",
            "vocab_projector.weight",
            None,
        ),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/encoders")
            .join(family);
        let tmp = tempfile::tempdir().unwrap();
        let world_dir = tmp.path().join("world");
        world(&world_dir);
        let cache = tmp.path().join("cache");
        let file = tmp.path().join(format!("{family}.yaml"));
        std::fs::write(
            &file,
            format!(
                r#"version: 1
models:
  enc: {dir}
{datasets}stages:
  base: {{kind: load, model: enc, dtype: f32}}
  calib: {{kind: calibrate, model: base, dataset: text, samples: 8, seqlen: 16}}
  wanda: {{kind: prune, model: base, method: wanda, sparsity: 0.5, calibration: calib}}
  head-rows: {{kind: prune, model: wanda, method: magnitude, pattern: rows, sparsity: 0.25, modules: lm_head}}
  recall-base: {{kind: evaluate, model: base, task: knowledge, dataset: facts}}
  recall-wanda: {{kind: evaluate, model: wanda, task: knowledge, dataset: facts}}
  recall-head-rows: {{kind: evaluate, model: head-rows, task: knowledge, dataset: facts}}
"#,
                dir = dir.display(),
                datasets = datasets(&world_dir),
            ),
        )
        .unwrap();
        let run = run_ok(&cache, &file);
        let settings = &entry_meta(&cache, &run, "recall-base")["settings"];
        assert_eq!(settings["mask_token"], mask, "{family}");
        assert_eq!(
            metric(&cache, &run, "recall-base", "facts"),
            10.0,
            "{family}"
        );
        let s = entry_meta(&cache, &run, "wanda")["actual_sparsity"]
            .as_f64()
            .unwrap();
        assert!((s - 0.5).abs() < 0.01, "{family}: {s}");
        assert_ne!(
            metric(&cache, &run, "recall-wanda", "mrr"),
            metric(&cache, &run, "recall-base", "mrr"),
            "{family}"
        );
        for stage in ["wanda", "head-rows"] {
            let hf = export(&cache, &file, stage, tmp.path());
            assert_eq!(hf.config["architectures"][0], class);
            let untied = stage == "head-rows";
            assert_eq!(hf.header.get(head).is_some(), untied, "{family} {stage}");
            if let Some(bias) = head_bias {
                assert_eq!(hf.header.get(bias).is_some(), untied, "{family} {stage}");
            }
            same_recall_when_loaded(&cache, &run, stage, &hf, &world_dir, tmp.path());
        }
    }
}
