//! A word-level `tokenizer.json` over a corpus: one token per word or punctuation run.
//!
//! Pre-tokenizer `Whitespace` (`\w+|[^\w\s]+`), so a leading space never matters: `" Paris"` and
//! the `Paris` of a sentence are the same single token, as the knowledge probe needs. No
//! normalizer (case is kept). `<unk>` = 0 for words outside the vocabulary, `<s>` = 1 prepended by
//! the post-processor, `</s>` = 2; then the words in byte order. No decoder: the tokenizers crate
//! then joins tokens with single spaces, which gives back text written as the generator writes it.

use std::collections::BTreeSet;

use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer};

use super::TrainError;

pub const UNK: &str = "<unk>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const UNK_ID: u32 = 0;
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;

/// The words of `text` as the tokenizer splits them.
pub fn split_words(text: &str) -> Result<Vec<String>, TrainError> {
    let mut pts = PreTokenizedString::from(text);
    tokenizers::pre_tokenizers::whitespace::Whitespace
        .pre_tokenize(&mut pts)
        .map_err(|e| TrainError::Tokenizer(format!("cannot split text into words: {e}")))?;
    Ok(pts
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(w, _, _)| w.to_string())
        .collect())
}

/// A tokenizer whose vocabulary is every word of `docs` plus `extra` words.
pub fn build_tokenizer<S: AsRef<str>>(
    docs: &[S],
    extra: &BTreeSet<String>,
) -> Result<Tokenizer, TrainError> {
    let mut words = BTreeSet::new();
    for d in docs {
        words.extend(split_words(d.as_ref())?);
    }
    for w in extra {
        words.extend(split_words(w)?);
    }
    for special in [UNK, BOS, EOS] {
        words.remove(special);
    }
    let json = tokenizer_json(&words);
    json.parse::<Tokenizer>()
        .map_err(|e| TrainError::Tokenizer(format!("cannot build the word-level tokenizer: {e}")))
}

/// The `tokenizer.json` text for these words (ids 3.. in the set's order).
pub fn tokenizer_json(words: &BTreeSet<String>) -> String {
    let mut vocab = serde_json::Map::new();
    for (i, w) in [UNK, BOS, EOS]
        .into_iter()
        .chain(words.iter().map(String::as_str))
        .enumerate()
    {
        vocab.insert(w.to_string(), serde_json::json!(i));
    }
    let added = |id: u32, content: &str| {
        serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true,
        })
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(UNK_ID, UNK), added(BOS_ID, BOS), added(EOS_ID, EOS)],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": BOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": BOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": BOS, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {BOS: {"id": BOS, "ids": [BOS_ID], "tokens": [BOS]}},
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
    });
    // serde_json keeps insertion order (the `preserve_order` feature): the text is deterministic.
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        let docs = [
            "Mira lives in Paris . The weather was cold .",
            "Paris , Oslo",
        ];
        build_tokenizer(&docs, &BTreeSet::from(["Lima".to_string()])).unwrap()
    }

    #[test]
    fn words_are_tokens_and_leading_spaces_do_not_matter() {
        let t = tok();
        let id = |w: &str| t.token_to_id(w).unwrap();
        // Specials, then byte order: upper case before lower case, punctuation first.
        assert_eq!((id("<unk>"), id("<s>"), id("</s>")), (0, 1, 2));
        assert_eq!((id(","), id("."), id("Lima")), (3, 4, 5));
        assert_eq!(t.get_vocab_size(true), 3 + 12);
        let enc = t.encode("Mira lives in Paris .", true).unwrap();
        assert_eq!(
            enc.get_ids(),
            &[1, id("Mira"), id("lives"), id("in"), id("Paris"), id(".")]
        );
        let alone = t.encode(" Paris", false).unwrap();
        assert_eq!(alone.get_ids(), &[id("Paris")]);
        assert_eq!(t.encode("Zork", false).unwrap().get_ids(), &[0]);
    }

    #[test]
    fn decoding_joins_words_with_single_spaces() {
        let t = tok();
        let text = "Mira lives in Paris . The weather was cold .";
        let ids = t.encode(text, true).unwrap();
        assert_eq!(t.decode(ids.get_ids(), true).unwrap(), text);
        assert_eq!(
            t.decode(ids.get_ids(), false).unwrap(),
            format!("<s> {text}")
        );
    }

    #[test]
    fn saved_file_round_trips_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok().save(&path, true).unwrap();
        let again = tok().to_string(true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), again);
        let loaded = crate::model::Tokenizer::from_file(&path).unwrap();
        assert_eq!(loaded.encode("Oslo", true).unwrap(), vec![1, 7]);
        assert_eq!(loaded.token_id("</s>"), Some(2));
    }
}
