//! Batched log-likelihood and multiple-choice scoring against real models and data: the shipped
//! task files on the first records of BoolQ, PIQA and WinoGrande, and scores checked against a
//! plain one-sequence-at-a-time computation over `Llama::forward`.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::{json, Value};
use whittle::eval::choice::{evaluate_choices, ChoiceTask};
use whittle::eval::loglik::{loglikelihood, PairEncoder, Request, Scorer, SpecialTokens};
use whittle::model::*;

use common::{load_model as load, log_prob_f64, logit_rows, no_tick};

/// Σ log P(continuation) by the definition: one unpadded sequence, full logits, log-softmax
/// written out in f64 per position.
fn reference_loglik(model: &Llama, context: &[u32], continuation: &[u32]) -> (f64, bool) {
    let full: Vec<u32> = context.iter().chain(continuation).copied().collect();
    let input = &full[..full.len() - 1];
    let rows = logit_rows(model, input);
    let mut total = 0.0;
    let mut greedy = true;
    for (j, &t) in continuation.iter().enumerate() {
        let row = &rows[context.len() - 1 + j];
        total += log_prob_f64(row, t);
        greedy &= row.iter().all(|&v| v <= row[t as usize]);
    }
    (total, greedy)
}

fn read_jsonl(path: &Path, n: usize) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(n)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn shipped(name: &str) -> ChoiceTask {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tasks")
        .join(name);
    ChoiceTask::from_file(path).unwrap()
}

#[test]
fn boolq_task_file_on_real_records() {
    let path = require_shared!("data/boolq/dev.jsonl");
    let task = shipped("boolq.yaml");
    assert_eq!(task.name(), "boolq");
    let items = task.prepare(&read_jsonl(&path, 3)).unwrap();
    let ctx = &items[0].contexts[0];
    assert!(ctx.starts_with("Ethanol fuel -- All biomass goes through at least some"));
    assert!(ctx.ends_with(
        "uses much less petroleum than producing gasoline.\n\
         Question: does ethanol take more energy make that produces?\nAnswer:"
    ));
    assert_eq!(items[0].continuations, [" no", " yes"]);
    assert_eq!(items[0].norm_bytes, [2, 3]);
    let golds: Vec<usize> = items.iter().map(|i| i.gold).collect();
    assert_eq!(golds, [0, 1, 1]);
}

#[test]
fn piqa_task_file_on_real_records_with_merged_labels() {
    let path = require_shared!("data/piqa/valid.jsonl");
    let labels = require_shared!("data/piqa/valid-labels.lst");
    let labels = std::fs::read_to_string(labels).unwrap();
    let mut records = read_jsonl(&path, 3);
    for (r, l) in records.iter_mut().zip(labels.lines()) {
        r["label"] = json!(l.trim().parse::<u64>().unwrap());
    }
    let items = shipped("piqa.yaml").prepare(&records).unwrap();
    assert_eq!(
        items[0].contexts,
        ["Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"]
    );
    assert_eq!(
        items[0].continuations[0],
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped \
         paper strips, you will also need to supply it with a water bottle and a food dish."
    );
    assert!(items[0].continuations[1].contains("ripped jeans material"));
    // Record 1's solutions keep their odd whitespace verbatim.
    assert_eq!(
        items[1].continuations,
        [
            " replace drawer with bobby pin ",
            " finish, woodgrain with  bobby pin "
        ]
    );
    assert_eq!(items[1].norm_bytes, [30, 34]);
    let golds: Vec<usize> = items.iter().map(|i| i.gold).collect();
    assert_eq!(golds, [0, 1, 1]);
}

#[test]
fn winogrande_task_file_on_real_records() {
    let path = require_shared!("data/winogrande/dev.jsonl");
    let items = shipped("winogrande.yaml")
        .prepare(&read_jsonl(&path, 3))
        .unwrap();
    assert_eq!(
        items[0].contexts,
        [
            "Sarah was a much better surgeon than Maria so Sarah",
            "Sarah was a much better surgeon than Maria so Maria"
        ]
    );
    assert_eq!(items[0].continuations, [" always got the easier cases."]);
    assert_eq!(
        items[2].contexts[1],
        "They were worried the wine would ruin the bed and the blanket, but the bed"
    );
    assert_eq!(items[2].continuations, [" was't ruined."]);
    let golds: Vec<usize> = items.iter().map(|i| i.gold).collect();
    assert_eq!(golds, [1, 0, 1]);
}

#[test]
fn arc_easy_and_siqa_fit_the_syntax() {
    let arc = require_shared!("data/arc-easy/dev.jsonl");
    let task = ChoiceTask::from_yaml_str(
        "context: \"Question: {{question.stem}}\\nAnswer:\"\n\
         choices_from: {list: question.choices, text: text}\n\
         gold: {field: answerKey, match: label}\n",
        "arc_easy.yaml",
    )
    .unwrap();
    let items = task.prepare(&read_jsonl(&arc, 2)).unwrap();
    assert_eq!(
        items[0].contexts,
        ["Question: Which technology was developed most recently?\nAnswer:"]
    );
    assert_eq!(
        items[0].continuations,
        [
            " cellular telephone",
            " television",
            " refrigerator",
            " airplane"
        ]
    );
    assert_eq!((items[0].gold, items[1].gold), (0, 2));

    let siqa = require_shared!("data/siqa/dev.jsonl");
    let labels = require_shared!("data/siqa/dev-labels.lst");
    let labels = std::fs::read_to_string(labels).unwrap();
    let mut records = read_jsonl(&siqa, 3);
    for (r, l) in records.iter_mut().zip(labels.lines()) {
        r["label"] = json!(l.trim());
    }
    let task = ChoiceTask::from_yaml_str(
        "context: \"Q: {{context}} {{question}}\\nA:\"\n\
         choices: [\"{{answerA}}\", \"{{answerB}}\", \"{{answerC}}\"]\n\
         gold: {field: label, values: [1, 2, 3]}\n",
        "siqa.yaml",
    )
    .unwrap();
    let items = task.prepare(&records).unwrap();
    assert_eq!(items[0].continuations[2], " Find somewhere to go");
    let golds: Vec<usize> = items.iter().map(|i| i.gold).collect();
    assert_eq!(golds, [2, 0, 1]);
}

#[test]
fn record_errors_name_the_task_record_and_field() {
    let task = shipped("boolq.yaml");
    let records = vec![
        json!({"passage": "p", "question": "q", "answer": true}),
        json!({"passage": "p", "answer": true}),
    ];
    let e = task.prepare(&records).unwrap_err().to_string();
    assert!(
        e.contains("boolq") && e.contains("record 1") && e.contains("`question`"),
        "{e}"
    );
}

#[test]
fn pair_encoding_moves_whitespace_and_handles_special_tokens() {
    let dir = require_shared!("models/smollm2-135m");
    let ckpt = Checkpoint::resolve(&dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let tok = Tokenizer::from_file(&ckpt.tokenizer).unwrap();
    let enc = PairEncoder::new(&tok, &cfg, SpecialTokens::FromTokenizer).unwrap();
    // ByteLevel post-processor: nothing in front.
    assert!(enc.prefix().is_empty());
    let r = enc
        .encode_pair("Question: is it?\nAnswer: ", "yes")
        .unwrap();
    assert_eq!(
        r.context,
        tok.encode("Question: is it?\nAnswer:", false).unwrap()
    );
    assert_eq!(tok.decode(&r.continuation).unwrap(), " yes");
    assert_eq!(r.continuation, tok.encode(" yes", false).unwrap());
    // An empty context: the EOS token stands in, as the harness's EOT.
    let r = enc.encode_pair("", "Hello").unwrap();
    assert_eq!(r.context, vec![cfg.eos_token_ids[0]]);
    assert_eq!(r.continuation, tok.encode("Hello", false).unwrap());

    let dir = require_shared!("models/stories260K");
    let ckpt = Checkpoint::resolve(&dir).unwrap();
    let cfg = ModelConfig::from_file(&ckpt.config).unwrap();
    let tok = Tokenizer::from_file(&ckpt.tokenizer).unwrap();
    let bos = tok.token_id("<s>").unwrap();
    let enc = PairEncoder::new(&tok, &cfg, SpecialTokens::FromTokenizer).unwrap();
    assert_eq!(enc.prefix(), [bos]);
    let r = enc.encode_pair("Once upon a", " time").unwrap();
    assert_eq!(r.context, tok.encode("Once upon a", true).unwrap());
    let whole = tok.encode("Once upon a time", true).unwrap();
    assert_eq!([&r.context[..], &r.continuation[..]].concat(), whole);
    assert_eq!(enc.encode_pair("", "Once").unwrap().context, [bos]);
    let harness = PairEncoder::new(&tok, &cfg, SpecialTokens::None).unwrap();
    assert!(harness.prefix().is_empty());
    assert_eq!(
        harness.encode_pair("Once upon a", " time").unwrap().context,
        tok.encode("Once upon a", false).unwrap()
    );
}

fn stories_requests(enc: &PairEncoder) -> Vec<Request> {
    [
        ("Once upon a", " time"),
        ("Once upon a", " dog"),
        (
            "Lily and Ben went to the park. They",
            " played on the swings all day long.",
        ),
        ("The cat", " sat"),
        (
            "One day, a little girl named Lily found a needle in her room. She",
            " knew",
        ),
        ("", "Once upon a time"),
        ("Tom had a red ball.", " He liked it."),
    ]
    .iter()
    .map(|(c, x)| enc.encode_pair(c, x).unwrap())
    .collect()
}

#[test]
fn batched_scores_equal_one_sequence_at_a_time_and_ignore_batch_size() {
    let dir = require_shared!("models/stories260K");
    // f64 inside the model, so that what differs between batch shapes is rounding at 1e-16, not
    // f32 matmul blocking (about 1e-6 per logit), and the bound below tests the padding logic.
    let m = load(&dir, DType::F64);
    let enc = PairEncoder::new(&m.tok, &m.cfg, SpecialTokens::FromTokenizer).unwrap();
    let reqs = stories_requests(&enc);
    let mut ticks = 0;
    let one = loglikelihood(&m.model, &reqs, enc.max_len(), 1, &Device::Cpu, &mut |n| {
        ticks += n;
        Ok(())
    })
    .unwrap();
    assert_eq!(ticks, reqs.len() as u64);
    let four = loglikelihood(
        &m.model,
        &reqs,
        enc.max_len(),
        4,
        &Device::Cpu,
        &mut no_tick(),
    )
    .unwrap();
    for (i, r) in reqs.iter().enumerate() {
        let (want, greedy) = reference_loglik(&m.model, &r.context, &r.continuation);
        assert!(
            (one[i].logprob - want).abs() < 1e-4,
            "request {i}: {} vs {want}",
            one[i].logprob
        );
        assert_eq!(one[i].greedy, greedy, "request {i}");
        assert!(
            (one[i].logprob - four[i].logprob).abs() < 1e-5,
            "request {i}: batch 1 {} vs batch 4 {}",
            one[i].logprob,
            four[i].logprob
        );
        assert_eq!(one[i].greedy, four[i].greedy);
    }
    // The TinyStories model is sure of its opening line.
    assert!(one[0].greedy && one[0].logprob > -0.5, "{:?}", one[0]);
    assert!(one[1].logprob < one[0].logprob - 5.0);
}

#[test]
fn long_inputs_are_cut_from_the_left() {
    let dir = require_shared!("models/stories260K");
    let m = load(&dir, DType::F32);
    let enc = PairEncoder::new(&m.tok, &m.cfg, SpecialTokens::FromTokenizer)
        .unwrap()
        .with_max_len(8);
    let r = enc
        .encode_pair(
            "Lily and Ben went to the park to play with a big ball.",
            " They laughed.",
        )
        .unwrap();
    let full: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
    assert!(full.len() > 9, "{}", full.len());
    let got = loglikelihood(
        &m.model,
        std::slice::from_ref(&r),
        8,
        2,
        &Device::Cpu,
        &mut no_tick(),
    )
    .unwrap();
    // The harness's window: the last 9 tokens, whose last 8 are the input.
    let window = &full[full.len() - 9..];
    let cut = window.len() - r.continuation.len();
    let (want, _) = reference_loglik(&m.model, &window[..cut], &r.continuation);
    assert!(
        (got[0].logprob - want).abs() < 1e-4,
        "{} vs {want}",
        got[0].logprob
    );
    let too_long = Request {
        context: vec![1],
        continuation: vec![5; 9],
    };
    assert!(loglikelihood(&m.model, &[too_long], 8, 1, &Device::Cpu, &mut no_tick()).is_err());
}

#[test]
fn a_fixture_task_on_stories260k_scores_as_computed_by_hand() {
    let dir = require_shared!("models/stories260K");
    let m = load(&dir, DType::F32);
    let enc = PairEncoder::new(&m.tok, &m.cfg, SpecialTokens::FromTokenizer).unwrap();
    let task = ChoiceTask::from_yaml_str(
        "context: \"{{start}}\"\nchoices: [\"{{a}}\", \"{{b}}\", \"{{c}}\"]\n\
         gold: {field: answer}\n",
        "fixture.yaml",
    )
    .unwrap();
    let records = vec![
        json!({"start": "Once upon a", "a": "dog", "b": "time", "c": "table", "answer": 1}),
        json!({"start": "Once upon a time, there was a little", "a": "girl", "b": "xylophone",
               "c": "the", "answer": 0}),
        json!({"start": "Lily was very", "a": "happy", "b": "purple car", "c": "of", "answer": 0}),
        // A wrong gold on purpose: acc counts it as a miss.
        json!({"start": "Once upon a", "a": "dog", "b": "time", "c": "table", "answer": 0}),
    ];
    let (metrics, samples) = evaluate_choices(
        Scorer::Causal {
            model: &m.model,
            pairs: &enc,
        },
        &task,
        &records,
        3,
        &Device::Cpu,
        &mut no_tick(),
    )
    .unwrap();
    for s in &samples {
        for (j, cont) in s.continuations.iter().enumerate() {
            let r = enc.encode_pair(&s.contexts[0], cont).unwrap();
            let (want, _) = reference_loglik(&m.model, &r.context, &r.continuation);
            assert!(
                (s.loglik[j] - want).abs() < 1e-4,
                "{} vs {want}",
                s.loglik[j]
            );
        }
        // The predictions follow the reference scores.
        let by_hand = s
            .loglik
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > s.loglik[b] { i } else { b });
        assert_eq!(s.pred, by_hand);
        let normed: Vec<f64> = s
            .loglik
            .iter()
            .zip(&s.norm_bytes)
            .map(|(l, &n)| l / n as f64)
            .collect();
        let by_hand = (0..normed.len()).fold(0, |b, i| if normed[i] > normed[b] { i } else { b });
        assert_eq!(s.pred_norm, by_hand);
    }
    let preds: Vec<usize> = samples.iter().map(|s| s.pred).collect();
    assert_eq!(preds, [1, 0, 0, 1], "{samples:#?}");
    assert_eq!(metrics.samples, 4);
    assert_eq!(metrics.acc, 0.75);
    let norm_hits = samples.iter().filter(|s| s.pred_norm == s.gold).count();
    assert_eq!(metrics.acc_norm, norm_hits as f64 / 4.0);
    // Per-sample lines serialize.
    let line = serde_json::to_string(&samples[0]).unwrap();
    assert!(
        line.contains("\"pred\":1") && line.contains("\"correct\":true"),
        "{line}"
    );
}

#[test]
fn shared_continuation_scores_each_context() {
    let dir = require_shared!("models/stories260K");
    let m = load(&dir, DType::F32);
    let enc = PairEncoder::new(&m.tok, &m.cfg, SpecialTokens::FromTokenizer).unwrap();
    let task = shipped("winogrande.yaml");
    let records = vec![json!({
        "sentence": "Lily gave the ball to Ben because _ wanted to play.",
        "option1": "Lily", "option2": "Ben", "answer": "2"
    })];
    let (metrics, samples) = evaluate_choices(
        Scorer::Causal {
            model: &m.model,
            pairs: &enc,
        },
        &task,
        &records,
        2,
        &Device::Cpu,
        &mut no_tick(),
    )
    .unwrap();
    let s = &samples[0];
    for (j, ctx) in s.contexts.iter().enumerate() {
        let r = enc.encode_pair(ctx, " wanted to play.").unwrap();
        let (want, _) = reference_loglik(&m.model, &r.context, &r.continuation);
        assert!((s.loglik[j] - want).abs() < 1e-4);
    }
    assert_eq!(s.pred, s.pred_norm);
    assert_eq!(metrics.acc, metrics.acc_norm);
}
