//! A `tokenizer.json` rebuilt as transformers 5 rebuilds it.
//!
//! transformers 5's `AutoTokenizer` does not apply `tokenizer.json` as written when
//! `tokenizer_config.json` names a class with a constructor of its own: it keeps the file's
//! vocabulary, merges, added tokens and post-processor, and takes the normalizer, pre-tokenizer
//! and decoder from the class. The rules here follow transformers 5.x
//! (`models/llama/tokenization_llama.py`, `models/gpt2/tokenization_gpt2.py`,
//! `tokenization_utils_tokenizers.py`):
//! - the class is `tokenizer_config.json`'s `tokenizer_class`; without one (or without the
//!   file), the class transformers registers for `config.json`'s `model_type` (GPT-2 and OPT:
//!   `GPT2Tokenizer`; BERT and DistilBERT: `BertTokenizer`; RoBERTa, ALBERT, T5 and Qwen2 their
//!   own), and for LLaMA, Mistral or an unknown type the file as written;
//! - `PreTrainedTokenizerFast` / `TokenizersBackend`, or `LlamaTokenizer(Fast)` over a
//!   `tokenizer.json` that is byte-level (transformers' `"ByteLevel"` test on the file): the file
//!   as written;
//! - `LlamaTokenizer(Fast)`: no normalizer; a `Metaspace("▁")` pre-tokenizer that prepends `▁`
//!   only where the text does not already start with one (`always` with `legacy: true`, `first`
//!   otherwise, `never` with `add_prefix_space: false`); the BPE without an unknown token;
//! - `GPT2Tokenizer(Fast)`: no normalizer and a lone `ByteLevel` pre-tokenizer (a file's
//!   `Digits` split goes), `add_prefix_space` from the config (false);
//! - `BertTokenizer(Fast)`: the file's vocabulary as a WordPiece model with the config's
//!   `unk_token`; a `BertNormalizer` from `do_lower_case` (true), `strip_accents` (unset: strip
//!   when lowercasing) and `tokenize_chinese_chars` (true); `BertPreTokenizer`; a WordPiece
//!   decoder; and the post-processor `cls $A sep` (pair `cls $A sep $B:1 sep:1`) of the config's
//!   `cls_token` and `sep_token`, whatever the file's;
//! - the post-processor is rebuilt from `bos_token` / `eos_token` when the config sets
//!   `add_bos_token` or `add_eos_token`; the added tokens are the config's
//!   `added_tokens_decoder` if it has one, else the file's; named special tokens missing from
//!   them are added.

use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, AddedVocabulary, DecoderWrapper, Model, ModelWrapper, NormalizerWrapper,
    PostProcessorWrapper, Tokenizer,
};

/// Beside `tokenizer.json`: the class and its settings.
pub const CONFIG_FILE: &str = "tokenizer_config.json";
/// Beside `tokenizer.json`: the named special tokens (read when the config has no
/// `added_tokens_decoder`, as transformers 5 does).
pub const SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";

/// The named special tokens transformers reads from the config.
const NAMED_SPECIAL: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Classes transformers 5 loads `tokenizer.json` as written for.
const AS_WRITTEN: [&str; 2] = ["PreTrainedTokenizerFast", "TokenizersBackend"];
/// The classes transformers 5 registers for the model types whittle loads, used when
/// `tokenizer_config.json` names none (`llama` and `mistral` register none: the file as written).
const BY_MODEL_TYPE: [(&str, &str); 8] = [
    ("gpt2", "GPT2Tokenizer"),
    ("opt", "GPT2Tokenizer"),
    ("qwen2", "Qwen2Tokenizer"),
    ("t5", "T5Tokenizer"),
    ("bert", "BertTokenizer"),
    ("distilbert", "BertTokenizer"),
    ("roberta", "RobertaTokenizer"),
    ("albert", "AlbertTokenizer"),
];

/// Classes whose rebuilding rules are implemented here.
const REBUILT: [&str; 6] = [
    "LlamaTokenizer",
    "LlamaTokenizerFast",
    "GPT2Tokenizer",
    "GPT2TokenizerFast",
    "BertTokenizer",
    "BertTokenizerFast",
];

/// The class transformers 5 would rebuild the tokenizer in `dir` as (`None`: the file as
/// written); an error when its rules are not implemented. Reads `tokenizer_config.json`, and
/// `config.json` (for its `model_type`) or `tokenizer.json` (is it byte-level?) when they decide.
pub fn check(dir: &Path) -> Result<Option<String>, String> {
    let config = read_object(&dir.join(CONFIG_FILE))?.unwrap_or_default();
    class_of(&config, dir)
}

fn class_of(config: &Map<String, Value>, dir: &Path) -> Result<Option<String>, String> {
    let (class, from) = match config.get("tokenizer_class") {
        None | Some(Value::Null) => {
            let model = read_object(&dir.join("config.json"))?.unwrap_or_default();
            let model_type = model.get("model_type").and_then(Value::as_str);
            match BY_MODEL_TYPE.iter().find(|(t, _)| Some(*t) == model_type) {
                Some((t, c)) => (*c, format!("config.json's model_type `{t}` registers")),
                None => return Ok(None),
            }
        }
        Some(Value::String(c)) => (c.as_str(), format!("{CONFIG_FILE} names")),
        Some(other) => {
            return Err(format!(
                "{CONFIG_FILE}: `tokenizer_class` must be a string, found {other}"
            ))
        }
    };
    if AS_WRITTEN.contains(&class) {
        return Ok(None);
    }
    if class.trim_end_matches("Fast") == "LlamaTokenizer" && byte_level(dir)? {
        // transformers loads a byte-level file declared as LlamaTokenizer as written.
        return Ok(None);
    }
    if REBUILT.contains(&class) {
        return Ok(Some(class.to_string()));
    }
    Err(format!(
        "{from} `{class}`, whose transformers 5 rules are not implemented (known: \
         LlamaTokenizer, GPT2Tokenizer, BertTokenizer, PreTrainedTokenizerFast); use \
         `tokenizer_semantics: tokenizers`"
    ))
}

/// The class's defaults for the named special tokens the files leave out.
fn special_defaults(class: &str) -> &'static [(&'static str, &'static str)] {
    match class.trim_end_matches("Fast") {
        "LlamaTokenizer" => &[
            ("unk_token", "<unk>"),
            ("bos_token", "<s>"),
            ("eos_token", "</s>"),
        ],
        "BertTokenizer" => &[
            ("unk_token", "[UNK]"),
            ("sep_token", "[SEP]"),
            ("pad_token", "[PAD]"),
            ("cls_token", "[CLS]"),
            ("mask_token", "[MASK]"),
        ],
        // GPT2Tokenizer
        _ => &[
            ("unk_token", "<|endoftext|>"),
            ("bos_token", "<|endoftext|>"),
            ("eos_token", "<|endoftext|>"),
        ],
    }
}

/// transformers' test for a byte-level `tokenizer.json`: the text `"ByteLevel"` in the file.
fn byte_level(dir: &Path) -> Result<bool, String> {
    match std::fs::read_to_string(dir.join("tokenizer.json")) {
        Ok(text) => Ok(text.contains("\"ByteLevel\"")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot read tokenizer.json: {e}")),
    }
}

/// `tok` (loaded from `dir/tokenizer.json`) as transformers 5 rebuilds it; also returns the class
/// whose rules applied (`None`: the file as written). Errors are messages about the files in
/// `dir`.
pub fn rebuild(mut tok: Tokenizer, dir: &Path) -> Result<(Tokenizer, Option<String>), String> {
    let config = read_object(&dir.join(CONFIG_FILE))?.unwrap_or_default();
    let Some(class) = class_of(&config, dir)? else {
        return Ok((tok, None));
    };
    let flag = |key: &str| -> Result<Option<bool>, String> {
        match config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!(
                "{CONFIG_FILE}: `{key}` must be true or false, found {other}"
            )),
        }
    };
    let bert = matches!(class.as_str(), "BertTokenizer" | "BertTokenizerFast");
    let specials = named_specials(&config, dir, special_defaults(&class))?;
    match class.as_str() {
        "LlamaTokenizer" | "LlamaTokenizerFast" => {
            let add_prefix_space = flag("add_prefix_space")?.unwrap_or(true);
            let legacy = flag("legacy")?.unwrap_or(false);
            let scheme = match (add_prefix_space, legacy) {
                (false, _) => PrependScheme::Never,
                (true, true) => PrependScheme::Always,
                (true, false) => PrependScheme::First,
            };
            let mut bpe = bpe_of(&tok, &class)?;
            bpe.unk_token = None;
            bpe.fuse_unk = true;
            bpe.byte_fallback = true;
            bpe.dropout = None;
            tok.with_model(bpe);
            tok.with_normalizer(None::<NormalizerWrapper>);
            tok.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
            let mut decoders: Vec<DecoderWrapper> = vec![
                Replace::new("▁", " ")
                    .map_err(|e| format!("internal: {e}"))?
                    .into(),
                ByteFallback::new().into(),
                Fuse::new().into(),
            ];
            if add_prefix_space {
                decoders.push(Strip::new(' ', 1, 0).into());
            }
            tok.with_decoder(Some(DecoderSequence::new(decoders)));
        }
        "GPT2Tokenizer" | "GPT2TokenizerFast" => {
            let add_prefix_space = flag("add_prefix_space")?.unwrap_or(false);
            let mut bpe = bpe_of(&tok, &class)?;
            bpe.unk_token = None;
            bpe.continuing_subword_prefix = Some(String::new());
            bpe.end_of_word_suffix = Some(String::new());
            bpe.fuse_unk = false;
            bpe.dropout = None;
            tok.with_model(bpe);
            tok.with_normalizer(None::<NormalizerWrapper>);
            tok.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
            tok.with_decoder(Some(ByteLevel::default()));
        }
        _ if bert => {
            // The file's vocabulary in a WordPiece model of the class's settings.
            let unk = specials
                .iter()
                .find(|(k, _)| k == "unk_token")
                .map_or("[UNK]".to_string(), |(_, t)| t.content.clone());
            // As `WordPiece(vocab, unk_token=...)` builds it: `##` and 100 characters a word.
            let wordpiece: WordPiece = serde_json::from_value(serde_json::json!({
                "unk_token": unk,
                "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100,
                "vocab": tok.get_model().get_vocab(),
            }))
            .map_err(|e| format!("internal: {e}"))?;
            tok.with_model(wordpiece);
            tok.with_normalizer(Some(BertNormalizer::new(
                true,
                flag("tokenize_chinese_chars")?.unwrap_or(true),
                flag("strip_accents")?,
                flag("do_lower_case")?.unwrap_or(true),
            )));
            tok.with_pre_tokenizer(Some(BertPreTokenizer));
            tok.with_decoder(Some(WordPieceDecoder::default()));
        }
        other => return Err(format!("internal: no rules for `{other}`")),
    }
    added_tokens(&mut tok, &config, &specials)?;
    if bert {
        // The class's `[CLS] $A [SEP]`, whatever the file's post-processor says.
        let id = |key: &str, fallback: u32| {
            specials
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, t)| {
                    (
                        t.content.clone(),
                        tok.token_to_id(&t.content).unwrap_or(fallback),
                    )
                })
                .ok_or_else(|| format!("internal: no `{key}`"))
        };
        let (cls, sep) = (id("cls_token", 2)?, id("sep_token", 3)?);
        let t = TemplateProcessing::builder()
            .try_single(format!("{}:0 $A:0 {}:0", cls.0, sep.0))
            .and_then(|b| b.try_pair(format!("{0}:0 $A:0 {1}:0 $B:1 {1}:1", cls.0, sep.0)))
            .map_err(|e| format!("internal: {e}"))?
            .special_tokens(vec![cls, sep])
            .build()
            .map_err(|e| format!("internal: {e}"))?;
        tok.with_post_processor(Some(t));
        return Ok((tok, Some(class)));
    }
    if flag("add_bos_token")?.is_some() || flag("add_eos_token")?.is_some() {
        let bos = flag("add_bos_token")?
            .unwrap_or(false)
            .then(|| special(&specials, "bos_token", &tok))
            .transpose()?;
        let eos = flag("add_eos_token")?
            .unwrap_or(false)
            .then(|| special(&specials, "eos_token", &tok))
            .transpose()?;
        tok.with_post_processor(Some(template(bos, eos)?));
    }
    Ok((tok, Some(class)))
}

fn read_object(path: &Path) -> Result<Option<Map<String, Value>>, String> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {name}: {e}")),
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(format!("{name}: expected a JSON object")),
        Err(e) => Err(format!("{name} is not valid JSON: {e}")),
    }
}

fn bpe_of(tok: &Tokenizer, class: &str) -> Result<BPE, String> {
    match tok.get_model() {
        ModelWrapper::BPE(b) => Ok(b.clone()),
        _ => Err(format!(
            "{CONFIG_FILE} names `{class}`, which transformers 5 builds as a BPE model, but \
             tokenizer.json holds another kind; use `tokenizer_semantics: tokenizers`"
        )),
    }
}

/// A token as the config writes it: a string or an `AddedToken` object.
fn added_token(v: &Value, special: bool) -> Option<AddedToken> {
    match v {
        Value::String(s) => Some(AddedToken::from(s.clone(), special)),
        Value::Object(o) => {
            let content = o.get("content")?.as_str()?;
            let b = |k: &str, d: bool| o.get(k).and_then(Value::as_bool).unwrap_or(d);
            let special = b("special", special);
            Some(AddedToken {
                content: content.to_string(),
                single_word: b("single_word", false),
                lstrip: b("lstrip", false),
                rstrip: b("rstrip", false),
                normalized: b("normalized", !special),
                special,
            })
        }
        _ => None,
    }
}

/// The named special tokens: `special_tokens_map.json` over the config, unless the config has
/// `added_tokens_decoder` (then the config alone).
fn named_specials(
    config: &Map<String, Value>,
    dir: &Path,
    defaults: &[(&str, &str)],
) -> Result<Vec<(String, AddedToken)>, String> {
    let mut merged: Map<String, Value> = defaults
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    merged.extend(config.clone());
    if !config.contains_key("added_tokens_decoder") {
        if let Some(map) = read_object(&dir.join(SPECIAL_TOKENS_FILE))? {
            merged.extend(map);
        }
    }
    Ok(NAMED_SPECIAL
        .iter()
        .filter_map(|k| {
            let t = added_token(merged.get(*k)?, true)?;
            Some((k.to_string(), AddedToken { special: true, ..t }))
        })
        .collect())
}

fn special(
    specials: &[(String, AddedToken)],
    key: &str,
    tok: &Tokenizer,
) -> Result<(String, u32), String> {
    let (_, t) = specials
        .iter()
        .find(|(k, _)| k == key)
        .ok_or_else(|| format!("{CONFIG_FILE} asks for `add_{key}` but names no `{key}`"))?;
    let id = tok.token_to_id(&t.content).ok_or_else(|| {
        format!(
            "{CONFIG_FILE}: `{key}` `{}` is not in the vocabulary",
            t.content
        )
    })?;
    Ok((t.content.clone(), id))
}

/// The added tokens, in id order, rebuilt against the new normalizer.
fn added_tokens(
    tok: &mut Tokenizer,
    config: &Map<String, Value>,
    specials: &[(String, AddedToken)],
) -> Result<(), String> {
    let mut tokens: Vec<(u32, AddedToken)> = match config.get("added_tokens_decoder") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(id, v)| {
                let id = id.parse::<u32>().ok();
                match (id, added_token(v, false)) {
                    (Some(id), Some(t)) => Ok((id, t)),
                    _ => Err(format!(
                        "{CONFIG_FILE}: `added_tokens_decoder` entry `{id:?}` is not an id and a token"
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(format!(
                "{CONFIG_FILE}: `added_tokens_decoder` must be an object of id → token"
            ))
        }
        None => tok.get_added_tokens_decoder().into_iter().collect(),
    };
    tokens.sort_by_key(|(id, _)| *id);
    let mut list: Vec<AddedToken> = tokens.into_iter().map(|(_, t)| t).collect();
    for (_, t) in specials {
        if !list.iter().any(|x| x.content == t.content) {
            list.push(AddedToken {
                normalized: false,
                ..t.clone()
            });
        }
    }
    tok.with_added_vocabulary(AddedVocabulary::new());
    tok.add_tokens(&list);
    Ok(())
}

/// transformers' `update_post_processor`: `bos $A eos` with the flags given.
fn template(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> Result<PostProcessorWrapper, String> {
    let part =
        |t: &Option<(String, u32)>, type_id: u32| t.as_ref().map(|(s, _)| format!("{s}:{type_id}"));
    let single: Vec<String> = [part(&bos, 0), Some("$A:0".into()), part(&eos, 0)]
        .into_iter()
        .flatten()
        .collect();
    let pair: Vec<String> = single
        .iter()
        .cloned()
        .chain(
            [part(&bos, 1), Some("$B:1".into()), part(&eos, 1)]
                .into_iter()
                .flatten(),
        )
        .collect();
    let specials: Vec<(String, u32)> = [bos, eos].into_iter().flatten().collect();
    let t = TemplateProcessing::builder()
        .try_single(single.join(" "))
        .and_then(|b| b.try_pair(pair.join(" ")))
        .map_err(|e| format!("internal: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| format!("internal: {e}"))?;
    Ok(t.into())
}
