//! The quickstart's embedded model: the committed corpus is what the generator writes, training
//! learns the facts and writes a folder the runtime loads, and pruning shows the finding.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use whittle::compress::{magnitude, Matrix};
use whittle::eval::perplexity::perplexity;
use whittle::model::{load_weights, Checkpoint, LinearId, Llama, ModelConfig, Proj, TensorMap};
use whittle::train::recall::fact_recall;
use whittle::train::synth::{self, Corpus, SynthConfig};
use whittle::train::tokenizer::build_tokenizer;
use whittle::train::{train, TrainConfig, TrainSummary};

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/facts")
}

#[test]
fn committed_corpus_is_what_the_generator_writes() {
    let corpus = synth::generate(&SynthConfig::default()).unwrap();
    let mut total = 0;
    for (rel, text) in corpus.files() {
        let path = committed().join(&rel);
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `whittle synth --out data/facts`",
                path.display()
            )
        });
        assert!(
            on_disk == text.as_bytes(),
            "{} differs from the generator's output; run `whittle synth --out data/facts`",
            path.display()
        );
        total += on_disk.len();
    }
    assert!(total < 1 << 20, "the committed corpus is {total} bytes");
    // The probe's layout: one TREx file per relation line, with every object a word of the text.
    let relations = std::fs::read_to_string(committed().join("facts/relations.jsonl")).unwrap();
    let train_text = std::fs::read_to_string(committed().join("train.txt")).unwrap();
    for line in relations.lines() {
        let rel: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = rel["relation"].as_str().unwrap();
        let facts =
            std::fs::read_to_string(committed().join(format!("facts/TREx/{id}.jsonl"))).unwrap();
        assert_eq!(facts.lines().count(), corpus.entities.len(), "{id}");
        for fact in facts.lines() {
            let fact: serde_json::Value = serde_json::from_str(fact).unwrap();
            let obj = fact["obj_label"].as_str().unwrap();
            assert!(train_text.contains(&format!(" {obj} ")), "{id}: {obj}");
        }
    }
}

#[test]
fn synth_command_writes_the_committed_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_whittle"))
        .args(["synth", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for rel in [
        "train.txt",
        "heldout.txt",
        "facts/relations.jsonl",
        "facts/TREx/plays.jsonl",
    ] {
        assert_eq!(
            std::fs::read(dir.path().join(rel)).unwrap(),
            std::fs::read(committed().join(rel)).unwrap(),
            "{rel}"
        );
    }
}

/// A small world and model that train in a few seconds: twelve people, biographies of facts with
/// at most one filler sentence.
fn small() -> (SynthConfig, TrainConfig) {
    let synth = SynthConfig {
        entities: 12,
        train_docs_per_entity: 10,
        filler_min: 0,
        filler_max: 1,
        ..SynthConfig::default()
    };
    // 8 windows of 32 tokens keep every activation under 64k values, where candle's CPU backend
    // would hand elementwise ops to its spinning thread pool (slow on a busy 2-core machine).
    let cfg = TrainConfig {
        seqlen: 32,
        batch: 8,
        steps: 500,
        warmup: 15,
        ..TrainConfig::default()
    };
    (synth, cfg)
}

struct Trained {
    corpus: Corpus,
    summary: TrainSummary,
    dir: tempfile::TempDir,
}

fn train_world(synth_cfg: &SynthConfig, cfg: &TrainConfig) -> Trained {
    let corpus = synth::generate(synth_cfg).unwrap();
    let tok = build_tokenizer(&corpus.train, &corpus.words()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let summary = train(
        &corpus.train,
        &tok,
        cfg,
        &Device::Cpu,
        dir.path(),
        &mut |_, _| Ok(()),
    )
    .unwrap();
    Trained {
        corpus,
        summary,
        dir,
    }
}

/// The written folder, loaded as any checkpoint is.
fn load(dir: &Path) -> (ModelConfig, TensorMap, tokenizers::Tokenizer) {
    let ckpt = Checkpoint::resolve(dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let weights = load_weights(&ckpt, &cfg, DType::F32, &Device::Cpu).unwrap();
    let tok = tokenizers::Tokenizer::from_file(&ckpt.tokenizer).unwrap();
    (cfg, weights, tok)
}

#[test]
fn small_model_learns_the_facts_and_loads_as_a_checkpoint() {
    let (synth_cfg, cfg) = small();
    let t = train_world(&synth_cfg, &cfg);
    let s = &t.summary;
    assert_eq!(s.losses.len(), cfg.steps);
    // Uniform guessing over the vocabulary costs ln(vocab) nats; the model must do far better.
    let uniform = (s.vocab_size as f32).ln();
    assert!(
        (s.losses[0] - uniform).abs() < 0.5,
        "first loss {}",
        s.losses[0]
    );
    assert!(
        s.final_loss < 0.4 * s.losses[0],
        "loss {} -> {}",
        s.losses[0],
        s.final_loss
    );

    let (mcfg, weights, tok) = load(t.dir.path());
    assert_eq!(mcfg.hidden_size, cfg.dim);
    assert_eq!(mcfg.vocab_size, s.vocab_size);
    let model = Llama::new(&mcfg, &weights).unwrap();
    let recall = fact_recall(&model, &tok, &t.corpus.facts, &Device::Cpu).unwrap();
    let chance = t.corpus.chance_p_at_1();
    eprintln!(
        "P@1 {:.3} (chance {chance:.3}), loss {:.3}",
        recall.p_at_1, s.final_loss
    );
    assert!(
        recall.p_at_1 > chance + 0.4,
        "P@1 {} vs chance {chance}: {:?}",
        recall.p_at_1,
        recall.per_relation
    );
}

#[test]
fn training_repeats_bit_for_bit() {
    let (synth_cfg, cfg) = small();
    let cfg = TrainConfig { steps: 8, ..cfg };
    let a = train_world(&synth_cfg, &cfg);
    let b = train_world(&synth_cfg, &cfg);
    let bits = |t: &Trained| {
        t.summary
            .losses
            .iter()
            .map(|l| l.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&a), bits(&b));
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        let read = |t: &Trained| std::fs::read(t.dir.path().join(file)).unwrap();
        assert!(read(&a) == read(&b), "{file} differs between two runs");
    }
    let other = train_world(&synth_cfg, &TrainConfig { seed: 1, ..cfg });
    assert_ne!(bits(&a), bits(&other), "the seed must matter");
}

#[test]
fn a_failing_step_callback_stops_training() {
    let (synth_cfg, cfg) = small();
    let corpus = synth::generate(&synth_cfg).unwrap();
    let tok = build_tokenizer(&corpus.train, &corpus.words()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut seen = 0;
    let err = train(
        &corpus.train,
        &tok,
        &cfg,
        &Device::Cpu,
        dir.path(),
        &mut |step, _| {
            seen = step;
            if step == 3 {
                Err(whittle::train::TrainError::Stopped {
                    step,
                    reason: "cancelled".into(),
                })
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert_eq!(seen, 3);
    assert!(err.to_string().contains("cancelled"), "{err}");
    assert!(!dir.path().join("model.safetensors").exists());
}

/// Global magnitude pruning of every linear layer inside the blocks (not embeddings or head).
fn prune_global(cfg: &ModelConfig, weights: &TensorMap, sparsity: f64) -> TensorMap {
    let ids: Vec<LinearId> = (0..cfg.num_layers)
        .flat_map(|l| Proj::ALL.map(|p| LinearId::new(l, p)))
        .collect();
    let mats: Vec<Matrix> = ids
        .iter()
        .map(|id| Matrix::from_tensor(&weights[&id.weight_name()]).unwrap())
        .collect();
    let masks = magnitude::magnitude_global(&mats.iter().collect::<Vec<_>>(), sparsity).unwrap();
    let mut out = weights.clone();
    for ((id, mut m), mask) in ids.iter().zip(mats).zip(masks) {
        mask.apply(&mut m).unwrap();
        out.insert(id.weight_name(), m.to_tensor(&Device::Cpu).unwrap());
    }
    out
}

/// The quickstart's model, trained with the default configuration, then pruned: the table in the
/// report. Slow in debug builds: `cargo test --release --test train -- --ignored --nocapture`.
#[test]
#[ignore]
fn quickstart_model_shows_the_finding() {
    let t = train_world(&SynthConfig::default(), &TrainConfig::default());
    let s = &t.summary;
    println!(
        "trained {} parameters on {} tokens ({} corpus tokens, vocab {}) in {:.1}s; loss {:.3} -> {:.3}",
        s.parameters, s.tokens_seen, s.corpus_tokens, s.vocab_size, s.seconds, s.losses[0], s.final_loss
    );
    let (mcfg, weights, tok) = load(t.dir.path());
    let heldout = tok
        .encode_fast(t.corpus.heldout.join("\n\n"), true)
        .unwrap()
        .get_ids()
        .to_vec();
    let seqlen = TrainConfig::default().seqlen;
    println!("chance P@1 {:.3}", t.corpus.chance_p_at_1());
    println!("sparsity  P@1    held-out ppl");
    let mut rows = Vec::new();
    for s10 in 0..=8 {
        let sparsity = s10 as f64 / 10.0;
        let model = Llama::new(&mcfg, &prune_global(&mcfg, &weights, sparsity)).unwrap();
        let recall = fact_recall(&model, &tok, &t.corpus.facts, &Device::Cpu).unwrap();
        let ppl = perplexity(
            &model,
            &heldout,
            seqlen,
            None,
            16,
            &Device::Cpu,
            &mut |_| Ok(()),
        )
        .unwrap();
        println!("{sparsity:.1}       {:.3}  {:.3}", recall.p_at_1, ppl.ppl);
        rows.push((recall.p_at_1, ppl.ppl));
    }
    let (dense_p, dense_ppl) = rows[0];
    assert!(dense_p > 0.8, "dense P@1 {dense_p}");
    // At 40% and 50% sparsity recall has fallen by far more, relatively, than perplexity rose.
    for (p, ppl) in &rows[4..=5] {
        let (recall_loss, ppl_rise) = (1.0 - p / dense_p, ppl / dense_ppl - 1.0);
        assert!(recall_loss > 1.5 * ppl_rise, "{rows:?}");
    }
}
