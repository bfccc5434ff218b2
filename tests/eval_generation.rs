//! Generation tasks on real models: the KV-cache decoder against an uncached loop and against
//! candle-transformers, stop strings, token limits, EOS, context truncation, the shipped task
//! files, and the scores of predictions whose answers are known.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::{json, Value};
use whittle::eval::generation::{evaluate_generation, GenerationError, GenerationTask};
use whittle::eval::text_metrics::{exact_match, rouge1_f, token_f1};
use whittle::model::*;

fn load(dir: &Path) -> common::Loaded {
    common::load_model(dir, DType::F32)
}

fn task_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tasks")
        .join(name)
}

/// Greedy decoding the slow way: the whole sequence through `Llama::forward` at every step, no
/// cache. No EOS: exactly `n` tokens.
fn uncached_greedy(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&ids).unwrap();
        let last: Vec<f32> = logits.i((0, seq.len() - 1)).unwrap().to_vec1().unwrap();
        let mut best = 0;
        for (i, &x) in last.iter().enumerate() {
            if x > last[best] {
                best = i;
            }
        }
        seq.push(best as u32);
    }
    seq[prompt.len()..].to_vec()
}

use common::no_tick as no_ticks;

fn task(yaml: &str) -> GenerationTask {
    GenerationTask::from_yaml_str(yaml, "test task").unwrap()
}

#[test]
fn cached_greedy_equals_uncached_and_candle_transformers() {
    use candle_transformers::models::llama as ct;
    let dir = require_shared!("models/stories260K");
    let m = load(&dir);
    let prompt = m.tok.encode("Once upon a time, there was a", true).unwrap();
    let n = 24;
    let ours = greedy_until(&m.model, &prompt, n, &[], &mut |_| Ok(false)).unwrap();
    assert_eq!(ours.finish, Finish::Length);
    assert_eq!(ours.tokens, uncached_greedy(&m.model, &prompt, n));

    // candle-transformers' LLaMA on the same file, with its own KV cache.
    let dev = Device::Cpu;
    let json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let ct_cfg = serde_json::from_str::<ct::LlamaConfig>(&json)
        .unwrap()
        .into_config(false);
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &dev);
    let reference = ct::Llama::load(vb, &ct_cfg).unwrap();
    let mut cache = ct::Cache::new(true, DType::F32, &ct_cfg, &dev).unwrap();
    let (mut input, mut pos, mut theirs) = (prompt.clone(), 0, Vec::new());
    for _ in 0..n {
        let ids = Tensor::new(input.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        // Their forward returns the last position's logits only.
        let logits = reference.forward(&ids, pos, &mut cache).unwrap();
        let next = logits.squeeze(0).unwrap().argmax(0).unwrap();
        let next = next.to_scalar::<u32>().unwrap();
        pos += input.len();
        theirs.push(next);
        input = vec![next];
    }
    assert_eq!(ours.tokens, theirs);
    // Not a degenerate continuation: several different tokens.
    let mut distinct = theirs.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 5, "{theirs:?}");
}

#[test]
fn eos_ends_decoding_and_is_left_out() {
    let dir = require_shared!("models/stories260K");
    let m = load(&dir);
    let prompt = m.tok.encode("Lily saw a big dog.", true).unwrap();
    let free = uncached_greedy(&m.model, &prompt, 16);
    // Declare as EOS the first token that the free run produces for the first time past step 2.
    let k = (3..free.len())
        .find(|&k| !free[..k].contains(&free[k]))
        .unwrap();
    let out = greedy_until(&m.model, &prompt, 16, &[9999, free[k]], &mut |_| Ok(false)).unwrap();
    assert_eq!(out.finish, Finish::Eos);
    assert_eq!(out.tokens, free[..k]);
    // `greedy` keeps its old contract.
    assert_eq!(
        greedy(&m.model, &prompt, 16, Some(free[k])).unwrap(),
        free[..k]
    );
}

#[test]
fn config_eos_is_the_tokenizer_eos_for_the_shipped_models() {
    // generation.rs takes EOS from config.json alone; this is why that loses nothing here.
    for name in ["models/stories260K", "models/smollm2-135m"] {
        let dir = require_shared!(name);
        let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let tc: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        let eos = tok.token_id(tc["eos_token"].as_str().unwrap()).unwrap();
        assert_eq!(cfg.eos_token_ids, [eos], "{name}");
    }
}

#[test]
fn stop_strings_cut_the_prediction_where_they_first_appear() {
    let dir = require_shared!("models/stories260K");
    let m = load(&dir);
    let record = json!({"text": "Once upon a time", "answer": "x"});
    let prompt = m.tok.encode("Once upon a time", true).unwrap();
    let free = uncached_greedy(&m.model, &prompt, 40);
    let full = m.tok.decode_skip_special(&free).unwrap();
    // The fourth word of the continuation, with its leading space, as the stop string.
    let words: Vec<&str> = full.split(' ').collect();
    let stop = format!(" {}", words[3]);
    let at = full.find(&stop).unwrap();
    assert!(at > 0);
    // The first prefix of the tokens whose text shows the stop string.
    let k = (1..=free.len())
        .find(|&k| {
            m.tok
                .decode_skip_special(&free[..k])
                .unwrap()
                .contains(&stop)
        })
        .unwrap();
    let t = task(&format!(
        "name: t\nprompt: '{{{{text}}}}'\nreferences: answer\nstop: [{stop:?}, '@@@']\n\
         max_new_tokens: 40"
    ));
    let (metrics, samples) =
        evaluate_generation(&m.model, &m.tok, &t, &[record], None, &mut no_ticks()).unwrap();
    let s = &samples[0];
    assert_eq!(s.prediction, full[..at]);
    assert!(!s.prediction.contains(&stop));
    assert_eq!(s.generated_tokens, k);
    assert_eq!(s.finish, Finish::Stop);
    assert_eq!(metrics.generated_tokens, k);
    assert_eq!(s.prompt_tokens, prompt.len());
}

#[test]
fn token_limit_and_scores_of_predictions_with_known_answers() {
    let dir = require_shared!("models/stories260K");
    let m = load(&dir);
    let prompt_text = "Tom and Sue went to the park.";
    let free = uncached_greedy(&m.model, &m.tok.encode(prompt_text, true).unwrap(), 6);
    let expected = m.tok.decode_skip_special(&free).unwrap();
    assert!(!expected.trim().is_empty());
    // Record 0's references contain the prediction itself; record 1's share no word with it.
    let records = [
        json!({"id": "q0", "p": prompt_text, "refs": ["zzz qqq", expected.to_uppercase()]}),
        json!({"id": 7, "p": prompt_text, "refs": "zzz qqq"}),
    ];
    let t = task("name: t\nprompt: '{{p}}'\nreferences: refs\nmax_new_tokens: 40");
    let mut ticks = Vec::new();
    let (metrics, samples) =
        evaluate_generation(&m.model, &m.tok, &t, &records, Some(6), &mut |n| {
            ticks.push(n);
            Ok(())
        })
        .unwrap();
    assert_eq!(ticks, [1, 1]);
    for s in &samples {
        assert_eq!(s.prediction, expected);
        assert_eq!(s.generated_tokens, 6);
        assert_eq!(s.finish, Finish::Length);
        assert_eq!(s.input, prompt_text);
        assert_eq!(s.truncated_tokens, 0);
    }
    assert_eq!(
        (samples[0].em, samples[0].f1, samples[0].rouge1),
        (1.0, 1.0, 1.0)
    );
    assert_eq!(
        (samples[1].em, samples[1].f1, samples[1].rouge1),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(samples[0].references.len(), 2);
    assert_eq!(samples[1].references, ["zzz qqq"]);
    assert_eq!(samples[0].id.as_deref(), Some("q0"));
    assert_eq!(samples[1].id.as_deref(), Some("7"));
    assert_eq!((metrics.em, metrics.f1, metrics.rouge1), (0.5, 0.5, 0.5));
    assert_eq!((metrics.samples, metrics.generated_tokens), (2, 12));

    // A partial answer: the reference is the prediction's first normalised word plus an unseen
    // one, so F1 = 2·(1/n)·(1/2)/((1/n) + (1/2)) with n the prediction's normalised word count.
    let first = exact_words(&expected);
    let n = first.len() as f64;
    let partial = json!({"p": prompt_text, "refs": format!("{} zzz", first[0])});
    let (_, s) =
        evaluate_generation(&m.model, &m.tok, &t, &[partial], Some(6), &mut no_ticks()).unwrap();
    let (p, r) = (1.0 / n, 0.5);
    let want = 2.0 * p * r / (p + r);
    assert!(
        (s[0].f1 - want).abs() < 1e-12,
        "{} vs {want} ({first:?})",
        s[0].f1
    );
    assert_eq!(s[0].f1, token_f1(&s[0].prediction, &s[0].references));
    assert_eq!(s[0].rouge1, rouge1_f(&s[0].prediction, &s[0].references));
    assert_eq!(s[0].em, exact_match(&s[0].prediction, &s[0].references));

    // One JSON line per sample.
    let line = serde_json::to_string(&samples[0]).unwrap();
    assert!(!line.contains('\n'));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["finish"], "length");
    assert_eq!(v["id"], "q0");
}

/// Lowercased words of `s` with punctuation stripped and articles dropped, when none of its
/// words needs more than that (asserted): SQuAD normalisation for simple text, by hand.
fn exact_words(s: &str) -> Vec<String> {
    let words: Vec<String> = s
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| c.is_ascii_punctuation())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty() && !["a", "an", "the"].contains(&w.as_str()))
        .collect();
    assert!(
        words.iter().all(|w| w.chars().all(char::is_alphanumeric)),
        "{words:?}"
    );
    assert!(
        words.len() >= 2 && words[1..].iter().all(|w| w != &words[0]),
        "{words:?}"
    );
    words
}

#[test]
fn long_prompts_keep_their_last_tokens() {
    let dir = require_shared!("models/stories260K");
    let m = load(&dir);
    // Real stories, not a repeated sentence: what follows depends on where the prompt was cut.
    let Some(path) = common::shared("data/tinystories/sample.txt") else {
        return;
    };
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("<|endoftext|>", "");
    let ids = m.tok.encode(&text, true).unwrap();
    let context = m.cfg.max_position_embeddings;
    assert!(ids.len() > context, "{} tokens", ids.len());
    let max_new = 2;
    let kept = &ids[ids.len() - (context - max_new)..];
    let want = uncached_greedy(&m.model, kept, max_new);
    let t = task("name: t\nprompt: '{{p}}'\nreferences: r\nmax_new_tokens: 2");
    let (metrics, s) = evaluate_generation(
        &m.model,
        &m.tok,
        &t,
        &[json!({"p": text, "r": "x"})],
        None,
        &mut no_ticks(),
    )
    .unwrap();
    assert_eq!(s[0].truncated_tokens, ids.len() - (context - max_new));
    assert_eq!(s[0].prompt_tokens, context - max_new);
    assert_eq!(s[0].prediction, m.tok.decode_skip_special(&want).unwrap());
    assert_eq!(metrics.truncated_prompts, 1);

    // No room at all for a prompt.
    let e = evaluate_generation(
        &m.model,
        &m.tok,
        &t,
        &[json!({"p": "x", "r": "x"})],
        Some(context),
        &mut no_ticks(),
    )
    .unwrap_err();
    assert!(matches!(e, GenerationError::NoRoom { .. }), "{e}");
}

#[test]
fn records_that_do_not_fit_the_task_are_named() {
    let dir = require_shared!("models/stories260K");
    let m = load(&dir);
    let t = task("name: t\nprompt: '{{p}}'\nreferences: r\nmax_new_tokens: 2");
    let run = |records: &[Value]| {
        evaluate_generation(&m.model, &m.tok, &t, records, None, &mut no_ticks())
            .unwrap_err()
            .to_string()
    };
    let ok = json!({"p": "Hi", "r": "x"});
    let e = run(&[ok.clone(), json!({"r": "x"})]);
    assert!(e.contains("record 1") && e.contains("`p`"), "{e}");
    let e = run(&[ok.clone(), ok.clone(), json!({"p": "Hi", "r": [1]})]);
    assert!(e.contains("record 2") && e.contains("`r`"), "{e}");
    assert!(run(&[]).contains("no records"));
    // A cancelled run stops at the tick.
    let err = evaluate_generation(&m.model, &m.tok, &t, &[ok], None, &mut |_| {
        Err(whittle::cancel::Cancelled)
    })
    .unwrap_err();
    assert!(whittle::cancel::is_cancelled(&err), "{err}");
    let e = err.to_string();
    assert!(e.contains("cancelled"), "{e}");
}

#[test]
fn alpaca_task_file_uses_the_standard_prompts() {
    let dir = require_shared!("models/stories260K");
    let m = load(&dir);
    let t = GenerationTask::from_file(&task_file("alpaca.yaml")).unwrap();
    assert_eq!(t.name, "alpaca");
    let with_input = json!({"instruction": "Sum the numbers.", "input": "2 and 3", "output": "5"});
    let without = json!({"instruction": "Name a color.", "input": "", "output": "Blue."});
    let want_with = "Below is an instruction that describes a task, paired with an input that \
        provides further context. Write a response that appropriately completes the request.\n\n\
        ### Instruction:\nSum the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n";
    let want_without = "Below is an instruction that describes a task. Write a response that \
        appropriately completes the request.\n\n### Instruction:\nName a color.\n\n\
        ### Response:\n";
    let (metrics, s) = evaluate_generation(
        &m.model,
        &m.tok,
        &t,
        &[with_input, without],
        Some(3),
        &mut no_ticks(),
    )
    .unwrap();
    assert_eq!(s[0].input, want_with);
    assert_eq!(s[1].input, want_without);
    assert_eq!(s[0].references, ["5"]);
    assert_eq!(
        s[1].prompt_tokens,
        m.tok.encode(want_without, true).unwrap().len()
    );
    assert_eq!(metrics.samples, 2);
}

#[test]
fn squad_task_file_on_smollm2_answers_a_simple_question() {
    let dir = require_shared!("models/smollm2-135m");
    let m = load(&dir);
    let t = GenerationTask::from_file(&task_file("squad.yaml")).unwrap();
    assert_eq!(
        (t.stop.as_slice(), t.max_new_tokens),
        (&["\n".to_string()][..], 32)
    );
    let record = json!({
        "id": "fixture-1",
        "title": "France",
        "context": "France is a country in Europe. Its capital is Paris, on the Seine.",
        "question": "What is the capital of France?",
        "answers": ["Paris", "Paris, on the Seine"],
    });
    let (metrics, s) =
        evaluate_generation(&m.model, &m.tok, &t, &[record], None, &mut no_ticks()).unwrap();
    let s = &s[0];
    eprintln!("smollm2 squad fixture: {:?} ({:?})", s.prediction, s.finish);
    assert!(s
        .input
        .ends_with("\nQuestion: What is the capital of France?\nAnswer:"));
    assert!(!s.prediction.contains('\n'));
    assert!(s.prediction.contains("Paris"), "{:?}", s.prediction);
    assert!(s.f1 > 0.0 && metrics.f1 == s.f1);
}
