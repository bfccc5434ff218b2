//! The LAMA probe against the real data and models: loader counts on ../shared/data/lama
//! (computed independently from the JSONL files), a fact SmolLM2 knows, skip counting, ranks
//! checked against a plain forward pass, and batch-size invariance.

mod common;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use whittle::eval::knowledge::{known_only, probe, probe_units, ProbeOptions, Ranking};
use whittle::eval::lama::{load_lama, GoogleRePrompts, LamaOptions, LamaSet, Split};
use whittle::eval::loglik::{PairEncoder, SpecialTokens};

use common::{load_model as load, logit_rows, no_tick, Loaded};

/// (relation id, template, [(subject, object)]).
type FixtureRelation<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A LAMA directory with one relation file per relation.
fn fixture(dir: &Path, relations: &[FixtureRelation]) -> LamaSet {
    std::fs::create_dir_all(dir.join("TREx")).unwrap();
    let mut lines = String::new();
    for (id, template, facts) in relations {
        lines += &serde_json::json!({"relation": id, "template": template}).to_string();
        lines += "\n";
        let facts: String = facts
            .iter()
            .map(|(s, o)| serde_json::json!({"sub_label": s, "obj_label": o}).to_string() + "\n")
            .collect();
        std::fs::write(dir.join("TREx").join(format!("{id}.jsonl")), facts).unwrap();
    }
    std::fs::write(dir.join("relations.jsonl"), lines).unwrap();
    load_lama(dir, &LamaOptions::default()).unwrap()
}

#[test]
fn loader_counts_on_the_real_lama() {
    let dir = require_shared!("data/lama");
    let all = LamaOptions {
        splits: vec![Split::Trex, Split::GoogleRe, Split::Squad],
        ..LamaOptions::default()
    };
    let set = load_lama(&dir, &all).unwrap();
    let count = |split: Split| -> (usize, usize, usize) {
        let rs: Vec<_> = set.relations.iter().filter(|r| r.split == split).collect();
        (
            rs.len(),
            rs.iter().map(|r| r.facts.len()).sum(),
            rs.iter().map(|r| r.excluded).sum(),
        )
    };
    // 46 relations listed, 28 with a file; 22,881 lines of which 14 repeat a (subject, object).
    assert_eq!(count(Split::Trex), (28, 22_867, 14));
    assert_eq!(set.missing.len(), 18);
    // 2,937 + 1,825 + 766 lines; one place_of_death pair repeats.
    assert_eq!(count(Split::GoogleRe), (3, 5_527, 1));
    assert_eq!(count(Split::Squad), (1, 305, 0));
    let p19 = set.relations.iter().find(|r| r.id == "P19").unwrap();
    assert_eq!(p19.facts.len(), 944);
    assert_eq!(p19.facts[0].cloze(), "Allan Peiper was born in [MASK] .");
    assert_eq!(p19.facts[0].object, "Alexandra");
    let dob = set
        .relations
        .iter()
        .find(|r| r.id == "date_of_birth")
        .unwrap();
    assert_eq!(dob.facts[0].cloze(), "Peter F. Martin (born [MASK]).");
    let squad = set.relations.iter().find(|r| r.id == "squad").unwrap();
    assert_eq!(
        squad.facts[0].cloze(),
        "To emphasize the 50th anniversary of the Super Bowl the [MASK] color was used."
    );

    let limited = LamaOptions {
        limit: Some(100),
        ..LamaOptions::default()
    };
    let set = load_lama(&dir, &limited).unwrap();
    assert_eq!(set.num_facts(), 2_800);
    let masked = LamaOptions {
        splits: vec![Split::GoogleRe],
        relations: Some(vec!["date_of_birth".into()]),
        google_re_prompts: GoogleRePrompts::MaskedSentences,
        limit: Some(2),
    };
    let set = load_lama(&dir, &masked).unwrap();
    assert_eq!(set.relations.len(), 1);
    assert_eq!(
        set.relations[0].facts[1].cloze(),
        "Maria Pilar Romero (born 22 May [MASK]) is a team handball player from Argentina ."
    );
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    let model_dir = require_shared!("models/smollm2-135m");
    let m = load(&model_dir, DType::F32);
    let enc = PairEncoder::new(&m.tok, &m.cfg, SpecialTokens::FromTokenizer).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let set = fixture(
        tmp.path(),
        &[
            ("P36", "The capital of [X] is [Y] .", &[("France", "Paris")]),
            // The object would come first: nothing to the left to predict it from.
            (
                "P1376",
                "[Y] is the capital of [X] .",
                &[("Paris", "France")],
            ),
        ],
    );
    let opts = ProbeOptions {
        ks: vec![1, 10],
        ..ProbeOptions::default()
    };
    assert_eq!(probe_units(&set, &opts), 1);
    let mut ticks = 0;
    let (metrics, results) = probe(&m.model, &enc, &set, &opts, &Device::Cpu, &mut |n| {
        ticks += n;
        Ok(())
    })
    .unwrap();
    assert_eq!(ticks, 1);
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r.prompt, "The capital of France is");
    assert_eq!(r.rank, 1, "{r:?}");
    assert_eq!(r.top_prediction, " Paris");
    assert_eq!(r.ranked, m.cfg.vocab_size);
    assert!(r.logprob < 0.0 && r.logprob > -3.0, "{}", r.logprob);
    assert_eq!(metrics.p_at[&1], 1.0);
    assert_eq!(metrics.mrr, 1.0);
    assert_eq!(
        (metrics.facts, metrics.skipped, metrics.relations),
        (1, 1, 1)
    );
    assert_eq!(metrics.per_relation["P1376"].skipped, 1);
    let line = serde_json::to_string(r).unwrap();
    assert!(
        line.contains("\"relation\":\"P36\"") && line.contains("\"rank\":1"),
        "{line}"
    );
}

/// Rank of the first token of `" " + object` after `prompt`, from one unpadded forward pass.
fn reference_rank(m: &Loaded, enc: &PairEncoder, prompt: &str, object: &str) -> (usize, u32) {
    let ctx = [enc.prefix(), &m.tok.encode(prompt, false).unwrap()[..]].concat();
    let whole = m.tok.encode(&format!("{prompt} {object}"), false).unwrap();
    let target = whole[ctx.len() - enc.prefix().len()];
    let rows = logit_rows(&m.model, &ctx);
    let last = &rows[ctx.len() - 1];
    let gold = last[target as usize];
    (1 + last.iter().filter(|&&v| v > gold).count(), target)
}

#[test]
fn vocabulary_ranks_match_a_plain_forward_and_ignore_batch_size() {
    let model_dir = require_shared!("models/stories260K");
    // f64 inside the model: batch shapes then differ by rounding at 1e-16, not f32 matmul blocking.
    let m = load(&model_dir, DType::F64);
    let enc = PairEncoder::new(&m.tok, &m.cfg, SpecialTokens::FromTokenizer).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let set = fixture(
        tmp.path(),
        &[
            (
                "P1",
                "Once upon a [Y] , there was [X] .",
                &[("a girl", "time"), ("a dog", "day"), ("a cat", "time")],
            ),
            (
                "P2",
                "[X] went to the park with her [Y] .",
                &[
                    ("Lily", "mom"),
                    ("One day the little girl named Sue", "friend"),
                ],
            ),
        ],
    );
    let opts = |batch_size| ProbeOptions {
        batch_size,
        ks: vec![1, 3],
        ..ProbeOptions::default()
    };
    let (m1, r1) = probe(&m.model, &enc, &set, &opts(1), &Device::Cpu, &mut no_tick()).unwrap();
    let (m3, r3) = probe(&m.model, &enc, &set, &opts(3), &Device::Cpu, &mut no_tick()).unwrap();
    assert_eq!(r1.len(), 5);
    for (a, b) in r1.iter().zip(&r3) {
        assert_eq!((a.rank, &a.top_prediction), (b.rank, &b.top_prediction));
        assert!(
            (a.logprob - b.logprob).abs() < 1e-5,
            "{} vs {}",
            a.logprob,
            b.logprob
        );
        let (rank, _) = reference_rank(&m, &enc, &a.prompt, &a.object);
        assert_eq!(a.rank, rank, "{a:?}");
    }
    assert_eq!(m1, m3);
    // Order of the results: relation by relation, facts in file order.
    let objects: Vec<&str> = r1.iter().map(|r| r.object.as_str()).collect();
    assert_eq!(objects, ["time", "day", "time", "mom", "friend"]);
    assert_eq!(r1[0].prompt, "Once upon a");
    // The TinyStories model's favourite opening.
    assert_eq!(r1[0].rank, 1);
}

#[test]
fn candidate_ranks_come_from_whole_object_likelihoods() {
    let model_dir = require_shared!("models/stories260K");
    // f64 inside the model: batch shapes then differ by rounding at 1e-16, not f32 matmul blocking.
    let m = load(&model_dir, DType::F64);
    let enc = PairEncoder::new(&m.tok, &m.cfg, SpecialTokens::FromTokenizer).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let set = fixture(
        tmp.path(),
        &[(
            "P1",
            "[X] upon a [Y] .",
            &[("Once", "time"), ("Once", "big red dog"), ("Twice", "time")],
        )],
    );
    let opts = |batch_size| ProbeOptions {
        ranking: Ranking::Candidates,
        batch_size,
        ks: vec![1],
        ..ProbeOptions::default()
    };
    assert_eq!(probe_units(&set, &opts(1)), 6);
    let (_, r1) = probe(&m.model, &enc, &set, &opts(1), &Device::Cpu, &mut no_tick()).unwrap();
    let (_, r4) = probe(&m.model, &enc, &set, &opts(4), &Device::Cpu, &mut no_tick()).unwrap();
    for (a, b) in r1.iter().zip(&r4) {
        assert_eq!(a.rank, b.rank);
        assert!((a.logprob - b.logprob).abs() < 1e-5, "{a:?} vs {b:?}");
    }
    // Two candidates: "time" and "big red dog"; after "Once upon a", "time" wins.
    assert_eq!(r1[0].ranked, 2);
    assert_eq!((r1[0].rank, r1[1].rank), (1, 2));
    assert_eq!(r1[1].top_prediction, "time");
    // As in running text (this tokenizer would split a lone " big" differently).
    let whole = m
        .tok
        .encode("Once upon a big red dog", false)
        .unwrap()
        .len();
    let ctx = m.tok.encode("Once upon a", false).unwrap().len();
    assert_eq!(r1[1].object_tokens, whole - ctx);
    // The gold's score is its full continuation log-likelihood.
    let req = enc.encode_pair("Once upon a ", "big red dog").unwrap();
    let s = whittle::eval::loglik::loglikelihood(
        &m.model,
        &[req],
        enc.max_len(),
        1,
        &Device::Cpu,
        &mut no_tick(),
    )
    .unwrap();
    assert!((r1[1].logprob - s[0].logprob).abs() < 1e-9);

    // Known-only keeps what the base model ranked first.
    let known = known_only(&set, &r1);
    let subjects: Vec<&str> = known.relations[0]
        .facts
        .iter()
        .map(|f| f.subject.as_str())
        .collect();
    assert!(subjects.len() < 3 && subjects[0] == "Once", "{subjects:?}");
}

/// Measurement, not a check: `cargo test --release --test eval_knowledge -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_smollm2_trex_p_at_1() {
    let model_dir = require_shared!("models/smollm2-135m");
    let lama = require_shared!("data/lama");
    let m = load(&model_dir, DType::F32);
    let enc = PairEncoder::new(&m.tok, &m.cfg, SpecialTokens::FromTokenizer).unwrap();
    let limit = std::env::var("LAMA_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let set = load_lama(
        &lama,
        &LamaOptions {
            limit: Some(limit),
            ..LamaOptions::default()
        },
    )
    .unwrap();
    let opts = ProbeOptions {
        ks: vec![1, 10],
        batch_size: 32,
        ..ProbeOptions::default()
    };
    let start = Instant::now();
    let (metrics, results) =
        probe(&m.model, &enc, &set, &opts, &Device::Cpu, &mut no_tick()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    for (id, r) in &metrics.per_relation {
        println!(
            "{id:6} facts {:4} P@1 {:.3} P@10 {:.3} MRR {:.3}",
            r.facts, r.p_at[&1], r.p_at[&10], r.mrr
        );
    }
    let multi = results.iter().filter(|r| r.object_tokens > 1).count();
    println!(
        "smollm2-135m T-REx (limit {limit}): {} facts in {} relations, {} skipped, {multi} multi-token objects",
        metrics.facts, metrics.relations, metrics.skipped
    );
    println!(
        "macro P@1 {:.4} P@10 {:.4} MRR {:.4}; micro P@1 {:.4}; {secs:.1} s",
        metrics.p_at[&1], metrics.p_at[&10], metrics.mrr, metrics.micro_p_at[&1]
    );
}
