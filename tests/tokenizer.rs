//! Both tokenizer semantics against token ids the reference libraries produced
//! (`tests/fixtures/tokenizer/make.py`: the `tokenizers` library, and transformers 5).

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;
use whittle::model::{Tokenizer, TokenizerSemantics};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tokenizer/ids.json"
);
const WIKI: &str = "data/wikitext-2-raw/wiki.test.raw";

fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap()
}

/// The fixture's texts, those from shared files rebuilt as `make.py` builds them.
fn texts(fx: &Value, wiki: &Path) -> Vec<String> {
    // Python's text mode: CRLF reads as LF.
    let raw = std::fs::read_to_string(wiki).unwrap().replace("\r\n", "\n");
    let lines: Vec<&str> = raw.split_inclusive('\n').collect();
    fx["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            if let Some(s) = t["text"].as_str() {
                s.to_string()
            } else if let Some(n) = t["wikitext_lines"].as_u64() {
                lines[..n as usize].concat()
            } else {
                let n = t["wikitext_rows"].as_u64().unwrap() as usize;
                let rows: Vec<&str> = lines[..n]
                    .iter()
                    .map(|l| if *l == "\n" { "" } else { l })
                    .collect();
                rows.join("\n\n")
            }
        })
        .collect()
}

/// The model folder of a fixture variant: its tokenizer files, `tokenizer_config.json` patched
/// with the variant's keys or left out.
fn variant_dir(shared: &Path, m: &Value, tmp: &Path) -> PathBuf {
    let src = shared.join(m["dir"].as_str().unwrap());
    let dst = tmp.join(m["name"].as_str().unwrap().replace(' ', "_"));
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "tokenizer.json", "special_tokens_map.json"] {
        if src.join(f).is_file() {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
    }
    if let Some(patch) = m["config"].as_object() {
        let mut cfg: serde_json::Map<String, Value> = serde_json::from_str(
            &std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        cfg.extend(patch.clone());
        std::fs::write(
            dst.join("tokenizer_config.json"),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
    }
    dst
}

/// Every variant and text of the fixture under `semantics`, against the ids under `key`.
fn check(semantics: TokenizerSemantics, key: &str) {
    let shared = require_shared!("models/stories260K")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let wiki = require_shared!(WIKI);
    let fx = fixture();
    let texts = texts(&fx, &wiki);
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for m in fx["models"].as_array().unwrap() {
        let dir = variant_dir(&shared, m, tmp.path());
        let tok = Tokenizer::load(dir.join("tokenizer.json"), semantics).unwrap();
        let name = m["name"].as_str().unwrap();
        for (text, ids) in texts.iter().zip(m["ids"].as_array().unwrap()) {
            for (special, k) in [(true, key.to_string()), (false, format!("{key}_plain"))] {
                let want: Vec<u32> = serde_json::from_value(ids[&k].clone()).unwrap();
                let got = tok.encode(text, special).unwrap();
                assert_eq!(got, want, "{name}, {k}, text {text:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 6 * 20 * 2);
}

#[test]
fn tokenizer_semantics_tokenizers_matches_the_tokenizers_library() {
    check(TokenizerSemantics::Tokenizers, "tokenizers");
}

#[test]
fn tokenizer_semantics_transformers_matches_transformers_5() {
    check(TokenizerSemantics::Transformers, "transformers");
}

/// The two differences the semantics setting exists for, as the reference libraries give them.
#[test]
fn tokenizer_semantics_differ_on_a_leading_space_and_on_blank_lines_before_a_digit() {
    let stories = require_shared!("models/stories260K/tokenizer.json");
    let smol = require_shared!("models/smollm2-135m/tokenizer.json");
    let enc = |path: &Path, s: TokenizerSemantics, text: &str| {
        Tokenizer::load(path, s)
            .unwrap()
            .encode(text, true)
            .unwrap()
    };
    use TokenizerSemantics::*;
    assert_eq!(enc(&stories, Tokenizers, " hi"), [1, 410, 270, 417]);
    assert_eq!(enc(&stories, Transformers, " hi"), [1, 270, 417]);
    assert_eq!(enc(&smol, Tokenizers, "\n\n1"), [1116, 33]);
    assert_eq!(enc(&smol, Transformers, "\n\n1"), [198, 198, 33]);
    let t = Tokenizer::load(&smol, Transformers).unwrap();
    assert_eq!(t.class(), Some("GPT2Tokenizer"));
    // Decoding is the same either way on these models.
    assert_eq!(t.decode(&[446, 6356]).unwrap(), " = Robert");
}

#[test]
fn tokenizer_semantics_transformers_names_a_class_it_cannot_rebuild() {
    let src = require_shared!("models/stories260K/tokenizer.json");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(&src, tmp.path().join("tokenizer.json")).unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"tokenizer_class": "GemmaTokenizer"}"#,
    )
    .unwrap();
    let path = tmp.path().join("tokenizer.json");
    let e = Tokenizer::load(&path, TokenizerSemantics::Transformers)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GemmaTokenizer") && e.contains("tokenizer_semantics: tokenizers"),
        "{e}"
    );
    assert!(Tokenizer::load(&path, TokenizerSemantics::Tokenizers).is_ok());
}

/// The setting flows from `load` through a prune to the evaluation that tokenizes, into its key,
/// the weights' identity and the report's provenance.
#[test]
fn tokenizer_semantics_is_recorded_in_the_keys_and_the_provenance() {
    let shared = require_shared!("models/stories260K")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let wiki = require_shared!(WIKI);
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // The first four lines of WikiText-2: read as rows and joined, the fixture's last text.
    let raw = std::fs::read_to_string(&wiki).unwrap();
    let head: String = raw.split_inclusive('\n').take(4).collect();
    std::fs::write(dir.path().join("wiki.txt"), head).unwrap();
    let file = dir.path().join("semantics.yaml");
    std::fs::write(
        &file,
        format!(
            r#"
models:
  stories: {s}/models/stories260K
datasets:
  wiki: {{path: {d}/wiki.txt, documents: lines}}
stages:
  base: {{kind: load, model: stories}}
  hf5: {{kind: load, model: stories, tokenizer_semantics: transformers}}
  pruned5: {{kind: prune, model: hf5, method: magnitude, sparsity: 0.5}}
  ppl: {{kind: evaluate, model: base, task: perplexity, dataset: wiki, seqlen: 64}}
  ppl5: {{kind: evaluate, model: hf5, task: perplexity, dataset: wiki, seqlen: 64}}
  ppl-pruned5: {{kind: evaluate, model: pruned5, task: perplexity, dataset: wiki, seqlen: 64}}
  table: {{kind: report, inputs: [ppl, ppl5], formats: [md]}}
"#,
            s = shared.display(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    let run = common::run_ok(&cache, &file);
    let stories = fx["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "stories260K")
        .unwrap();
    let want = |key: &str| {
        let last = stories["ids"].as_array().unwrap().last().unwrap();
        last[key].as_array().unwrap().len() as u64
    };
    let stream = |instance: &str| {
        common::entry_meta(&cache, &run, instance)["settings"]["stream_tokens"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(stream("ppl"), want("tokenizers"));
    assert_eq!(stream("ppl5"), want("transformers"));
    assert_eq!(stream("ppl-pruned5"), want("transformers"));
    assert_ne!(want("tokenizers"), want("transformers"));

    let base = common::entry_meta(&cache, &run, "base");
    let hf5 = common::entry_meta(&cache, &run, "hf5");
    assert_eq!(base["tokenizer"]["semantics"], "tokenizers");
    assert_eq!(base["tokenizer"]["transformers_class"], Value::Null);
    assert_eq!(hf5["tokenizer"]["semantics"], "transformers");
    assert_eq!(hf5["tokenizer"]["transformers_class"], "LlamaTokenizerFast");
    assert!(base["weights"].get("tokenizer_semantics").is_none());
    assert_eq!(hf5["weights"]["tokenizer_semantics"], "transformers");
    let config = blake3::hash(
        &std::fs::read(shared.join("models/stories260K/tokenizer_config.json")).unwrap(),
    );
    assert_eq!(
        hf5["weights"]["tokenizer_files"]["tokenizer_config.json"],
        config.to_hex().as_str()
    );
    let pruned = common::entry_meta(&cache, &run, "pruned5");
    assert_eq!(pruned["weights"]["tokenizer_semantics"], "transformers");
    let content = |i: &str| common::entry(&cache, &run, i).content();
    assert_ne!(content("base"), content("hf5"));

    let rep = common::entry(&cache, &run, "table");
    let prov: Value =
        serde_json::from_slice(&std::fs::read(rep.path("provenance.json")).unwrap()).unwrap();
    let semantics: Vec<&str> = prov["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["tokenizer_semantics"].as_str().unwrap())
        .collect();
    assert_eq!(semantics.len(), 2);
    assert!(semantics.contains(&"tokenizers") && semantics.contains(&"transformers"));
    let md = std::fs::read_dir(rep.path(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .expect("a Markdown table");
    assert!(md.contains("(transformers semantics)"), "{md}");
}

/// Without a `tokenizer_class`, transformers 5 takes the class it registers for `config.json`'s
/// `model_type` (none for LLaMA: the file as written), and it loads a byte-level file declared
/// as `LlamaTokenizer` as written. The ids are transformers 5.25.0's on these folders (SmolLM2's
/// tokenizer.json under each config).
#[test]
fn tokenizer_semantics_transformers_takes_the_class_of_the_model_type() {
    let smol = require_shared!("models/smollm2-135m/tokenizer.json");
    let folder = |model_type: &str, tokenizer_config: Option<&str>| {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(&smol, tmp.path().join("tokenizer.json")).unwrap();
        std::fs::write(
            tmp.path().join("config.json"),
            format!(r#"{{"model_type": "{model_type}"}}"#),
        )
        .unwrap();
        if let Some(c) = tokenizer_config {
            std::fs::write(tmp.path().join("tokenizer_config.json"), c).unwrap();
        }
        tmp
    };
    let load =
        |dir: &Path| Tokenizer::load(dir.join("tokenizer.json"), TokenizerSemantics::Transformers);
    for (model_type, config, class, ids) in [
        ("gpt2", None, Some("GPT2Tokenizer"), vec![198, 198, 33]),
        // Qwen2's folders are not trusted to name their class.
        (
            "qwen2",
            Some(r#"{"tokenizer_class": "GPT2Tokenizer"}"#),
            Some("Qwen2Tokenizer"),
            vec![1116, 33],
        ),
        ("llama", None, None, vec![1116, 33]),
        (
            "llama",
            Some(r#"{"tokenizer_class": "LlamaTokenizerFast"}"#),
            None,
            vec![1116, 33],
        ),
    ] {
        let dir = folder(model_type, config);
        let t = load(dir.path()).unwrap();
        assert_eq!(t.class(), class, "{model_type} {config:?}");
        assert_eq!(
            t.encode("\n\n1", true).unwrap(),
            ids,
            "{model_type} {config:?}"
        );
    }
    // Mistral registers the generic backend, which overrules a LlamaTokenizer the folder names
    // (stories260K's Metaspace file, which LlamaTokenizer would rebuild: `[1, 270, 417]`).
    let stories = require_shared!("models/stories260K/tokenizer.json");
    for (model_type, class, ids) in [
        ("mistral", None, [1, 410, 270, 417].as_slice()),
        ("llama", Some("LlamaTokenizer"), &[1, 270, 417]),
    ] {
        let dir = folder(model_type, Some(r#"{"tokenizer_class": "LlamaTokenizer"}"#));
        std::fs::copy(&stories, dir.path().join("tokenizer.json")).unwrap();
        let t = load(dir.path()).unwrap();
        assert_eq!(t.class(), class, "{model_type}");
        assert_eq!(t.encode(" hi", true).unwrap(), ids, "{model_type}");
    }
    let dir = folder("t5", Some("{}"));
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("T5Tokenizer")
            && e.contains("Unigram")
            && e.contains("tokenizer_semantics: tokenizers"),
        "{e}"
    );
}

/// The folder of the class fixtures, and the ids file `name` there.
fn class_fixture(name: &str) -> (PathBuf, Value) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    let fx = serde_json::from_str(&std::fs::read_to_string(here.join(name)).unwrap()).unwrap();
    (here, fx)
}

/// A folder of a fixture variant: `tokenizer` as its tokenizer.json, a config.json of the
/// variant's `model_type`, and its `tokenizer_config` unless null. Returns the tokenizer's path.
fn variant_folder(tokenizer: &str, v: &Value) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, tokenizer).unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::json!({"model_type": v["model_type"]}).to_string(),
    )
    .unwrap();
    if !v["tokenizer_config"].is_null() {
        std::fs::write(
            tmp.path().join("tokenizer_config.json"),
            v["tokenizer_config"].to_string(),
        )
        .unwrap();
    }
    (tmp, path)
}

/// `BertTokenizer` as transformers 5 rebuilds it: a lowercasing WordPiece file under configs that
/// change case, accents and CJK splitting, with the class given by the config or by the model
/// type (BERT, DistilBERT); against the ids `tests/fixtures/tokenizer/make_bert.py` had
/// transformers give. The file read as written gives the tokenizers library's ids whatever the
/// config.
#[test]
fn bert_tokenizer_is_rebuilt_from_its_config_as_transformers_5_does() {
    let (here, fx) = class_fixture("bert_ids.json");
    let texts: Vec<String> = serde_json::from_value(fx["texts"].clone()).unwrap();
    let plain: Vec<Vec<u32>> = serde_json::from_value(fx["tokenizers_ids"].clone()).unwrap();
    let variants = fx["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 6);
    for v in variants {
        let name = v["name"].as_str().unwrap();
        let file = std::fs::read_to_string(here.join("bert/tokenizer.json")).unwrap();
        let (_tmp, path) = variant_folder(&file, v);
        let t = Tokenizer::load(&path, TokenizerSemantics::Transformers).unwrap();
        assert_eq!(t.class(), v["class"].as_str(), "{name}");
        let want: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).unwrap();
        let as_written = Tokenizer::load(&path, TokenizerSemantics::Tokenizers).unwrap();
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(t.encode(text, true).unwrap(), want[i], "{name}: {text:?}");
            assert_eq!(
                as_written.encode(text, true).unwrap(),
                plain[i],
                "{name}: {text:?}"
            );
        }
    }
}

/// `RobertaTokenizer`, `AlbertTokenizer`, `T5Tokenizer` and `Qwen2Tokenizer` as transformers 5
/// rebuilds them, on small files shaped like the published ones (byte-level BPE; SentencePiece
/// Unigram with a precompiled normalization map) under configs and patched files that change
/// what the classes rebuild; against the ids and decoded texts (special tokens skipped)
/// `tests/fixtures/tokenizer/make_classes.py` had transformers give, and the tokenizers library's
/// ids for each file as written.
#[test]
fn roberta_albert_t5_and_qwen2_tokenizers_are_rebuilt_as_transformers_5_does() {
    let (here, fx) = class_fixture("classes_ids.json");
    let texts: Vec<String> = serde_json::from_value(fx["texts"].clone()).unwrap();
    let variants = fx["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 18);
    for v in variants {
        let name = v["name"].as_str().unwrap();
        let family = v["file"].as_str().unwrap();
        let mut texts = texts.clone();
        texts.push(fx["masked"][family].as_str().unwrap().to_string());
        let mut file: Value = serde_json::from_str(
            &std::fs::read_to_string(here.join(format!("classes/{family}.json"))).unwrap(),
        )
        .unwrap();
        for (key, value) in v["patch"].as_object().unwrap() {
            file[key] = value.clone();
        }
        let (_tmp, path) = variant_folder(&file.to_string(), v);
        let t = Tokenizer::load(&path, TokenizerSemantics::Transformers).unwrap();
        assert_eq!(
            t.class().map(|c| c.trim_end_matches("Fast")),
            v["class"].as_str(),
            "{name}"
        );
        let want: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).unwrap();
        let decoded: Vec<String> = serde_json::from_value(v["decoded"].clone()).unwrap();
        for ((text, want), back) in texts.iter().zip(&want).zip(&decoded) {
            assert_eq!(&t.encode(text, true).unwrap(), want, "{name}: {text:?}");
            assert_eq!(
                &t.decode_skip_special(want).unwrap(),
                back,
                "{name}: {text:?}"
            );
        }
        if v["patch"].as_object().unwrap().is_empty() {
            let plain: Vec<Vec<u32>> = serde_json::from_value(fx["files"][family].clone()).unwrap();
            let as_written = Tokenizer::load(&path, TokenizerSemantics::Tokenizers).unwrap();
            for (text, want) in texts.iter().zip(&plain) {
                assert_eq!(
                    &as_written.encode(text, true).unwrap(),
                    want,
                    "{name} as written: {text:?}"
                );
            }
        }
    }
}

/// A trained folder names the generic class in its `tokenizer_config.json`, so transformers 5
/// (and whittle's transformers semantics) applies its word-level `tokenizer.json` as written
/// rather than rebuilding it as the model type's BPE, Unigram or WordPiece class (transformers
/// 5.25 split GPT-2's words into bytes and refused the T5 and BERT files before).
#[test]
fn trained_folders_are_read_as_written_under_transformers_semantics() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/facts/train.txt");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("train.yaml");
    let mut stages = String::new();
    for arch in ["gpt2", "t5", "bert"] {
        stages += &format!(
            "  {arch}: {{kind: train, architecture: {arch}, dataset: bio, dim: 16, layers: 1, \
             heads: 2, hidden: 32, seqlen: 16, batch: 4, steps: 2, warmup: 1}}\n"
        );
    }
    std::fs::write(
        &file,
        format!(
            "datasets:\n  bio: {{path: {}, documents: separator, separator: \"<|endoftext|>\"}}\n\
             stages:\n{stages}",
            data.display()
        ),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let run = common::run_ok(&cache, &file);
    for arch in ["gpt2", "t5", "bert"] {
        let entry = common::entry(&cache, &run, arch);
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(entry.path("model/tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            config["tokenizer_class"], "PreTrainedTokenizerFast",
            "{arch}"
        );
        let path = entry.path("model/tokenizer.json");
        let hf5 = Tokenizer::load(&path, TokenizerSemantics::Transformers).unwrap();
        let plain = Tokenizer::load(&path, TokenizerSemantics::Tokenizers).unwrap();
        assert_eq!(hf5.class(), None, "{arch}");
        let text = "Alice Smith was born in Paris .";
        assert_eq!(
            hf5.encode(text, true).unwrap(),
            plain.encode(text, true).unwrap(),
            "{arch}"
        );
    }
}
