//! A `tokenizer.json` rebuilt as transformers 5 rebuilds it.
//!
//! transformers 5's `AutoTokenizer` does not apply `tokenizer.json` as written when the class it
//! picks has a constructor of its own: it keeps the file's vocabulary, merges (or Unigram scores
//! and SentencePiece normalization map) and added tokens, and takes the normalizer,
//! pre-tokenizer, decoder and sometimes the post-processor from the class. The rules here follow
//! transformers 5.25 (`models/auto/tokenization_auto.py`, `tokenization_utils_tokenizers.py` and
//! each class's `tokenization_*.py`):
//! - the class: the one the folder names (`tokenizer_config.json`'s `tokenizer_class`, else
//!   `config.json`'s); for a Qwen2 model the registered `Qwen2Tokenizer` whatever the folder
//!   names, for a Mistral model the file as written; with no class named, the one registered
//!   for `config.json`'s `model_type` (GPT-2 and OPT: `GPT2Tokenizer`; BERT and DistilBERT:
//!   `BertTokenizer`; RoBERTa, ALBERT, T5 and Qwen2 their own; LLaMA: the file as written);
//! - `PreTrainedTokenizerFast` / `TokenizersBackend`, or `LlamaTokenizer(Fast)` over a
//!   `tokenizer.json` that is byte-level (transformers' `"ByteLevel"` test on the file): the file
//!   as written;
//! - `LlamaTokenizer`: no normalizer; a `Metaspace("▁")` pre-tokenizer that prepends `▁` only
//!   where the text does not already start with one (`always` with `legacy: true`, `first`
//!   otherwise, `never` with `add_prefix_space: false`); the BPE without an unknown token;
//! - `GPT2Tokenizer`, `RobertaTokenizer`: no normalizer and a lone `ByteLevel` pre-tokenizer (a
//!   file's `Digits` split goes), `add_prefix_space` from the config (false); RoBERTa's
//!   post-processor is always `RobertaProcessing` of the config's `cls_token` and `sep_token`;
//! - `Qwen2Tokenizer`: NFC, then Qwen2's split pattern and a `ByteLevel` without its own
//!   pattern;
//! - `BertTokenizer`: the file's vocabulary as a WordPiece model with the config's `unk_token`;
//!   a `BertNormalizer` from `do_lower_case` (true), `strip_accents` (unset: strip when
//!   lowercasing) and `tokenize_chinese_chars` (true); `BertPreTokenizer`; a WordPiece decoder;
//!   and always the post-processor `cls $A sep` (pair `cls $A sep $B:1 sep:1`);
//! - `AlbertTokenizer`: the Unigram with unknown id 1; the normalizers ``` `` ``` and `''` → `"`,
//!   NFKD and accent stripping unless `keep_accents`, lowercasing with `do_lower_case` (true),
//!   then the file's precompiled map; whitespace split and `Metaspace` (`always`, or `never`
//!   with `add_prefix_space: false`); the file's post-processor, else `[CLS] $A [SEP]`;
//! - `T5Tokenizer`: the Unigram with unknown id 2; only the file's precompiled map as
//!   normalizer; whitespace split and `Metaspace` (`always`); always `$A </s>`; the sentinels
//!   `<extra_id_0>`… (`extra_ids`, 100, or the config's `additional_special_tokens`) added as
//!   special tokens where missing;
//! - every class: the post-processor is the file's unless the class sets its own (above);
//!   `add_bos_token` / `add_eos_token` are ignored, as transformers 5 drops them whenever there is
//!   a `tokenizer.json`; the added tokens are the config's `added_tokens_decoder` if it has one,
//!   else the file's; named special tokens missing from them are added.

use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::strip::StripAccents;
use tokenizers::normalizers::unicode::{NFC, NFKD};
use tokenizers::normalizers::utils::{Lowercase, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, AddedVocabulary, DecoderWrapper, Model, ModelWrapper, NormalizerWrapper,
    PostProcessorWrapper, SplitDelimiterBehavior, Tokenizer,
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

/// What transformers 5 registers for a model type: a class of its own, or its generic backend.
#[derive(Clone, Copy)]
enum Registered {
    Class(&'static str),
    Backend,
}

/// transformers 5's registrations for the model types whittle loads (`llama` registers nothing).
const REGISTERED: [(&str, Registered); 9] = [
    ("gpt2", Registered::Class("GPT2Tokenizer")),
    ("opt", Registered::Class("GPT2Tokenizer")),
    ("qwen2", Registered::Class("Qwen2Tokenizer")),
    ("t5", Registered::Class("T5Tokenizer")),
    ("bert", Registered::Class("BertTokenizer")),
    ("distilbert", Registered::Class("BertTokenizer")),
    ("roberta", Registered::Class("RobertaTokenizer")),
    ("albert", Registered::Class("AlbertTokenizer")),
    ("mistral", Registered::Backend),
];

/// Model types whose folders transformers 5 holds to name a wrong class: it takes the registered
/// one whatever the folder names (`MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS`).
const HUB_CLASS_IGNORED: [&str; 1] = ["qwen2"];

/// The classes whose transformers 5 rules are implemented here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Llama,
    Gpt2,
    Bert,
    Roberta,
    Albert,
    T5,
    Qwen2,
}

impl Class {
    /// `XTokenizerFast` is an alias of `XTokenizer` in transformers 5.
    fn from_name(name: &str) -> Option<Class> {
        Some(match name.trim_end_matches("Fast") {
            "LlamaTokenizer" => Class::Llama,
            "GPT2Tokenizer" => Class::Gpt2,
            "BertTokenizer" => Class::Bert,
            "RobertaTokenizer" => Class::Roberta,
            "AlbertTokenizer" => Class::Albert,
            "T5Tokenizer" => Class::T5,
            "Qwen2Tokenizer" => Class::Qwen2,
            _ => return None,
        })
    }

    /// The class's defaults for the named special tokens the files leave out.
    fn special_defaults(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Class::Llama => &[
                ("unk_token", "<unk>"),
                ("bos_token", "<s>"),
                ("eos_token", "</s>"),
            ],
            Class::Gpt2 => &[
                ("unk_token", "<|endoftext|>"),
                ("bos_token", "<|endoftext|>"),
                ("eos_token", "<|endoftext|>"),
            ],
            Class::Bert => &[
                ("unk_token", "[UNK]"),
                ("sep_token", "[SEP]"),
                ("pad_token", "[PAD]"),
                ("cls_token", "[CLS]"),
                ("mask_token", "[MASK]"),
            ],
            Class::Roberta => &[
                ("bos_token", "<s>"),
                ("eos_token", "</s>"),
                ("sep_token", "</s>"),
                ("cls_token", "<s>"),
                ("unk_token", "<unk>"),
                ("pad_token", "<pad>"),
                ("mask_token", "<mask>"),
            ],
            Class::Albert => &[
                ("bos_token", "[CLS]"),
                ("eos_token", "[SEP]"),
                ("unk_token", "<unk>"),
                ("sep_token", "[SEP]"),
                ("pad_token", "<pad>"),
                ("cls_token", "[CLS]"),
                ("mask_token", "[MASK]"),
            ],
            Class::T5 => &[
                ("eos_token", "</s>"),
                ("unk_token", "<unk>"),
                ("pad_token", "<pad>"),
            ],
            Class::Qwen2 => &[
                ("unk_token", "<|endoftext|>"),
                ("eos_token", "<|endoftext|>"),
                ("pad_token", "<|endoftext|>"),
            ],
        }
    }
}

/// The class transformers 5 would rebuild the tokenizer in `dir` as (`None`: the file as
/// written); an error when its rules are not implemented. Reads `tokenizer_config.json`, and
/// `config.json` (for its `model_type`) or `tokenizer.json` (is it byte-level?) when they decide.
pub fn check(dir: &Path) -> Result<Option<String>, String> {
    let config = read_object(&dir.join(CONFIG_FILE))?.unwrap_or_default();
    Ok(class_of(&config, dir)?.map(|(name, _)| name))
}

/// The class `AutoTokenizer.from_pretrained` of transformers 5.25 picks, by its own steps: the
/// class the folder names (`tokenizer_config.json`'s `tokenizer_class`, else `config.json`'s),
/// overruled by the one registered for `config.json`'s `model_type` where they differ and that
/// type is one whose folders it distrusts, or by the generic backend where the type registers
/// that; with no class named, the registered one.
fn class_of(config: &Map<String, Value>, dir: &Path) -> Result<Option<(String, Class)>, String> {
    let model = read_object(&dir.join("config.json"))?.unwrap_or_default();
    let model_type = model.get("model_type").and_then(Value::as_str);
    let registered = REGISTERED
        .iter()
        .find(|(t, _)| Some(*t) == model_type)
        .map(|(_, r)| *r);
    let named = match (config.get("tokenizer_class"), model.get("tokenizer_class")) {
        (Some(Value::String(c)), _) => Some((c.as_str(), format!("{CONFIG_FILE} names"))),
        (None | Some(Value::Null), Some(Value::String(c))) => {
            Some((c.as_str(), "config.json names".to_string()))
        }
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        (Some(other), _) | (_, Some(other)) => {
            return Err(format!(
                "`tokenizer_class` must be a string, found {other} ({CONFIG_FILE} or config.json)"
            ))
        }
    };
    let type_registers = || {
        format!(
            "config.json's model_type `{}` registers",
            model_type.unwrap_or_default()
        )
    };
    let distrusted = model_type.is_some_and(|t| HUB_CLASS_IGNORED.contains(&t));
    let (name, from) = match (named, registered) {
        (Some((c, _)), _)
            if c.trim_end_matches("Fast") == "LlamaTokenizer"
                && !distrusted
                && byte_level(dir)? =>
        {
            // transformers loads a byte-level file declared as LlamaTokenizer as written.
            return Ok(None);
        }
        (Some((c, from)), Some(r)) => match r {
            Registered::Class(r) if r == c.trim_end_matches("Fast") => (c, from),
            Registered::Class(r) if distrusted => (r, type_registers()),
            Registered::Class(_) => (c, from),
            Registered::Backend => return Ok(None),
        },
        (Some((c, from)), None) => (c, from),
        (None, Some(Registered::Class(r))) => (r, type_registers()),
        (None, Some(Registered::Backend) | None) => return Ok(None),
    };
    if AS_WRITTEN.contains(&name) {
        return Ok(None);
    }
    match Class::from_name(name) {
        Some(class) => Ok(Some((name.to_string(), class))),
        None => Err(format!(
            "{from} `{name}`, whose transformers 5 rules are not implemented (known: \
             LlamaTokenizer, GPT2Tokenizer, BertTokenizer, RobertaTokenizer, AlbertTokenizer, \
             T5Tokenizer, Qwen2Tokenizer, PreTrainedTokenizerFast); use \
             `tokenizer_semantics: tokenizers`"
        )),
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

/// Qwen2Tokenizer's pre-tokenizing pattern.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tok` (loaded from `dir/tokenizer.json`) as transformers 5 rebuilds it; also returns the class
/// whose rules applied (`None`: the file as written). Errors are messages about the files in
/// `dir`.
pub fn rebuild(mut tok: Tokenizer, dir: &Path) -> Result<(Tokenizer, Option<String>), String> {
    let config = read_object(&dir.join(CONFIG_FILE))?.unwrap_or_default();
    let Some((name, class)) = class_of(&config, dir)? else {
        return Ok((tok, None));
    };
    let flag = |key: &str, default: bool| -> Result<bool, String> {
        match config.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format!(
                "{CONFIG_FILE}: `{key}` must be true or false, found {other}"
            )),
        }
    };
    let specials = named_specials(&config, dir, class.special_defaults())?;
    let charsmap = precompiled(&tok)?;
    let file_post = tok.get_post_processor().cloned();
    let metaspace = |always: bool| {
        let scheme = if always {
            PrependScheme::Always
        } else {
            PrependScheme::Never
        };
        Metaspace::new('▁', scheme, true)
    };
    let mut sentinels = Vec::new();
    match class {
        Class::Llama => {
            let add_prefix_space = flag("add_prefix_space", true)?;
            let scheme = match (add_prefix_space, flag("legacy", false)?) {
                (false, _) => PrependScheme::Never,
                (true, true) => PrependScheme::Always,
                (true, false) => PrependScheme::First,
            };
            let mut bpe = bpe_of(&tok, &name)?;
            bpe.unk_token = None;
            bpe.fuse_unk = true;
            bpe.byte_fallback = true;
            bpe.dropout = None;
            tok.with_model(bpe);
            tok.with_normalizer(None::<NormalizerWrapper>);
            tok.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
            let mut decoders: Vec<DecoderWrapper> = vec![
                replace("▁", " ")?.into(),
                ByteFallback::new().into(),
                Fuse::new().into(),
            ];
            if add_prefix_space {
                decoders.push(Strip::new(' ', 1, 0).into());
            }
            tok.with_decoder(Some(DecoderSequence::new(decoders)));
        }
        Class::Gpt2 | Class::Roberta => {
            let model = byte_level_bpe(&tok, &name)?;
            tok.with_model(model);
            tok.with_normalizer(None::<NormalizerWrapper>);
            let add_prefix_space = flag("add_prefix_space", false)?;
            tok.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
            tok.with_decoder(Some(ByteLevel::default()));
        }
        Class::Qwen2 => {
            let model = byte_level_bpe(&tok, &name)?;
            tok.with_model(model);
            tok.with_normalizer(Some(NFC));
            let split = Split::new(
                SplitPattern::Regex(QWEN2_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| format!("internal: {e}"))?;
            let add_prefix_space = flag("add_prefix_space", false)?;
            tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
                split.into(),
                ByteLevel::new(add_prefix_space, true, false).into(),
            ])));
            tok.with_decoder(Some(ByteLevel::default()));
        }
        Class::Bert => {
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
            let strip_accents = match config.get("strip_accents") {
                None | Some(Value::Null) => None,
                Some(_) => Some(flag("strip_accents", false)?),
            };
            tok.with_normalizer(Some(BertNormalizer::new(
                true,
                flag("tokenize_chinese_chars", true)?,
                strip_accents,
                flag("do_lower_case", true)?,
            )));
            tok.with_pre_tokenizer(Some(BertPreTokenizer));
            tok.with_decoder(Some(WordPieceDecoder::default()));
        }
        Class::Albert => {
            let model = unigram_of(&tok, &name, 1)?;
            tok.with_model(model);
            let mut normalizers: Vec<NormalizerWrapper> =
                vec![replace("``", "\"")?.into(), replace("''", "\"")?.into()];
            if !flag("keep_accents", false)? {
                normalizers.push(NFKD.into());
                normalizers.push(StripAccents.into());
            }
            if flag("do_lower_case", true)? {
                normalizers.push(Lowercase.into());
            }
            normalizers.extend(charsmap);
            tok.with_normalizer(Some(NormalizerSequence::new(normalizers)));
            let add_prefix_space = flag("add_prefix_space", true)?;
            tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
                WhitespaceSplit.into(),
                metaspace(add_prefix_space).into(),
            ])));
            tok.with_decoder(Some(metaspace(add_prefix_space)));
        }
        Class::T5 => {
            let model = unigram_of(&tok, &name, 2)?;
            tok.with_model(model);
            tok.with_normalizer(charsmap);
            tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
                WhitespaceSplit.into(),
                metaspace(true).into(),
            ])));
            tok.with_decoder(Some(metaspace(true)));
            sentinels = t5_sentinels(&config)?;
        }
    }
    added_tokens(&mut tok, &config, &specials, &sentinels)?;
    // A named special token and its id, for the post-processors the classes build.
    let special = |key: &str| -> Result<(String, u32), String> {
        let (_, t) = specials
            .iter()
            .find(|(k, _)| k == key)
            .ok_or_else(|| format!("{CONFIG_FILE} names no `{key}`, which `{name}` needs"))?;
        let id = tok.token_to_id(&t.content).ok_or_else(|| {
            format!(
                "`{key}` `{}` is not in the vocabulary, and `{name}` needs it",
                t.content
            )
        })?;
        Ok((t.content.clone(), id))
    };
    let id = |key: &str| special(key).map(|(_, id)| id);
    // The post-processor: the file's unless the class sets its own after loading it (transformers
    // 5 drops `add_bos_token` / `add_eos_token` whenever there is a tokenizer.json).
    let post: Option<PostProcessorWrapper> = match class {
        Class::Llama | Class::Gpt2 | Class::Qwen2 => file_post,
        Class::Bert => {
            let (cls, sep) = (special("cls_token")?, special("sep_token")?);
            Some(template(
                &format!("{0}:0 $A:0 {1}:0", cls.0, sep.0),
                &format!("{0}:0 $A:0 {1}:0 $B:1 {1}:1", cls.0, sep.0),
                vec![cls, sep],
            )?)
        }
        Class::Roberta => Some(
            RobertaProcessing::new(special("sep_token")?, special("cls_token")?)
                .trim_offsets(flag("trim_offsets", true)?)
                .add_prefix_space(flag("add_prefix_space", false)?)
                .into(),
        ),
        // The class writes `[CLS]` and `[SEP]` by name, with the ids of its cls and sep tokens.
        Class::Albert => match file_post {
            Some(p) => Some(p),
            None => Some(template(
                "[CLS]:0 $A:0 [SEP]:0",
                "[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
                vec![
                    ("[CLS]".into(), id("cls_token")?),
                    ("[SEP]".into(), id("sep_token")?),
                ],
            )?),
        },
        // Likewise `</s>`, with the id of its eos token.
        Class::T5 => Some(template(
            "$A:0 </s>:0",
            "$A:0 </s>:0 $B:0 </s>:0",
            vec![("</s>".into(), id("eos_token")?)],
        )?),
    };
    tok.with_post_processor(post);
    Ok((tok, Some(name)))
}

/// The BPE of GPT2Tokenizer, RobertaTokenizer and Qwen2Tokenizer: the file's vocabulary and
/// merges, no unknown token, no prefix or suffix, no byte fallback.
fn byte_level_bpe(tok: &Tokenizer, class: &str) -> Result<BPE, String> {
    let mut bpe = bpe_of(tok, class)?;
    bpe.unk_token = None;
    bpe.continuing_subword_prefix = Some(String::new());
    bpe.end_of_word_suffix = Some(String::new());
    bpe.fuse_unk = false;
    bpe.byte_fallback = false;
    bpe.dropout = None;
    Ok(bpe)
}

/// The file's Unigram vocabulary and scores, with the class's fixed unknown id.
fn unigram_of(tok: &Tokenizer, class: &str, unk_id: usize) -> Result<Unigram, String> {
    let ModelWrapper::Unigram(u) = tok.get_model() else {
        return Err(format!(
            "the class is `{class}`, which transformers 5 builds as a Unigram model, but \
             tokenizer.json holds another kind; use `tokenizer_semantics: tokenizers`"
        ));
    };
    let vocab: Vec<(String, f64)> = u.iter().cloned().collect();
    Unigram::from(vocab, Some(unk_id), false)
        .map_err(|e| format!("the class is `{class}`, whose unknown token is id {unk_id}: {e}"))
}

/// The file's SentencePiece normalization map (a `Precompiled` normalizer, alone or in a
/// sequence), which the SentencePiece classes keep.
fn precompiled(tok: &Tokenizer) -> Result<Option<NormalizerWrapper>, String> {
    let Some(n) = tok.get_normalizer() else {
        return Ok(None);
    };
    let v = serde_json::to_value(n).map_err(|e| format!("internal: {e}"))?;
    let list = match v.get("type").and_then(Value::as_str) {
        Some("Sequence") => v["normalizers"].as_array().cloned().unwrap_or_default(),
        _ => vec![v],
    };
    list.into_iter()
        .find(|n| n["type"] == "Precompiled" && n.get("precompiled_charsmap").is_some())
        .map(|n| serde_json::from_value(n).map_err(|e| format!("internal: {e}")))
        .transpose()
}

/// T5Tokenizer's sentinels: the config's `additional_special_tokens` (with `<extra_id_0>`…
/// appended when it lists none), else `extra_ids` (100) of them.
fn t5_sentinels(config: &Map<String, Value>) -> Result<Vec<AddedToken>, String> {
    let extra_ids = match config.get("extra_ids") {
        None | Some(Value::Null) => 100,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("{CONFIG_FILE}: `extra_ids` must be a count, found {v}"))?,
    };
    let numbered = (0..extra_ids).map(|i| AddedToken::from(format!("<extra_id_{i}>"), true));
    let Some(listed) = config.get("additional_special_tokens") else {
        return Ok(numbered.collect());
    };
    let mut listed: Vec<AddedToken> = listed
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| added_token(v, true))
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or_default()
        .ok_or_else(|| {
            format!("{CONFIG_FILE}: `additional_special_tokens` must be a list of tokens")
        })?;
    let sentinels = listed
        .iter()
        .filter(|t| t.content.contains("<extra_id_"))
        .count();
    if sentinels == 0 {
        listed.extend(numbered);
    } else if extra_ids > 0 && extra_ids != sentinels as u64 {
        return Err(format!(
            "{CONFIG_FILE}: `extra_ids` is {extra_ids} but `additional_special_tokens` lists \
             {sentinels} `<extra_id_…>` tokens; transformers refuses this folder too"
        ));
    }
    Ok(listed
        .into_iter()
        .map(|t| AddedToken {
            special: true,
            normalized: false,
            ..t
        })
        .collect())
}

fn replace(pattern: &str, content: &str) -> Result<Replace, String> {
    Replace::new(pattern, content).map_err(|e| format!("internal: {e}"))
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
            "the class is `{class}`, which transformers 5 builds as a BPE model, but \
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

/// The added tokens, in id order, rebuilt against the new normalizer: the config's or the
/// file's, then the named special tokens and the class's `extra` ones that are not among them.
fn added_tokens(
    tok: &mut Tokenizer,
    config: &Map<String, Value>,
    specials: &[(String, AddedToken)],
    extra: &[AddedToken],
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
    for t in specials.iter().map(|(_, t)| t).chain(extra) {
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

/// A `TemplateProcessing` of `single` and `pair` (the tokenizers library's template syntax).
fn template(
    single: &str,
    pair: &str,
    specials: Vec<(String, u32)>,
) -> Result<PostProcessorWrapper, String> {
    let t = TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| format!("internal: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| format!("internal: {e}"))?;
    Ok(t.into())
}
