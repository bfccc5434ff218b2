//! Exact Match, token F1 and ROUGE-1 of a generated answer against its references.
//!
//! - EM and F1 follow the official SQuAD evaluation script: both sides go through
//!   [`normalize_answer`] (lowercase; drop ASCII punctuation, i.e. Python's `string.punctuation`;
//!   drop the articles *a*, *an*, *the* as whole words; collapse whitespace), then EM compares the
//!   strings and F1 the bags of whitespace tokens (counts clipped, as `Counter &` does).
//! - ROUGE-1 is the F-measure of unigram overlap as Google's `rouge_score` package computes it with
//!   its default tokenizer and no stemming: lowercase, every run of characters outside `[a-z0-9]`
//!   becomes a space (so non-ASCII letters split and vanish), split on whitespace.
//!
//! Every metric takes the maximum over the references, as SQuAD's `metric_max_over_ground_truths`
//! and `rouge_score`'s `score_multi` do; with no reference at all the score is 0. Scores are
//! fractions in [0, 1].

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// SQuAD's `remove_articles`: `\b(a|an|the)\b`, word boundaries in the Unicode sense as Python 3's
/// `re` draws them for `str` patterns.
static ARTICLES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("a valid pattern"));

/// The SQuAD answer normalisation: lowercase, remove punctuation, remove articles, collapse
/// whitespace (in the official script's order).
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    let no_articles = ARTICLES.replace_all(&no_punct, " ");
    python_split(&no_articles).collect::<Vec<_>>().join(" ")
}

/// Python's `str.split()` with no argument: runs of whitespace separate, empty pieces vanish.
/// Python's `isspace` also counts the separators U+001C..U+001F, which Rust's does not.
fn python_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|t| !t.is_empty())
}

/// 1 if the normalised prediction equals some normalised reference, else 0.
pub fn exact_match(prediction: &str, references: &[String]) -> f64 {
    let pred = normalize_answer(prediction);
    let hit = references.iter().any(|r| normalize_answer(r) == pred);
    if hit {
        1.0
    } else {
        0.0
    }
}

/// SQuAD token F1, the best over the references.
///
/// When either side normalises to no tokens at all, F1 is 1 if both do and 0 otherwise (the rule of
/// the official SQuAD 2.0 script; the 1.1 script returns 0 even when both are empty, a case that
/// only arises for a reference made of articles and punctuation alone).
pub fn token_f1(prediction: &str, references: &[String]) -> f64 {
    let pred = normalize_answer(prediction);
    let pred: Vec<&str> = python_split(&pred).collect();
    references
        .iter()
        .map(|r| {
            let gold = normalize_answer(r);
            let gold: Vec<&str> = python_split(&gold).collect();
            f1_of_tokens(&pred, &gold)
        })
        .fold(0.0, f64::max)
}

/// ROUGE-1 F-measure (`rouge_score`, default tokenizer, no stemming), the best over the references.
pub fn rouge1_f(prediction: &str, references: &[String]) -> f64 {
    let pred = rouge_tokens(prediction);
    references
        .iter()
        .map(|r| {
            let target = rouge_tokens(r);
            let overlap = clipped_overlap(&pred, &target) as f64;
            // rouge_score divides by max(count, 1) and returns 0 when precision + recall is 0.
            let precision = overlap / pred.len().max(1) as f64;
            let recall = overlap / target.len().max(1) as f64;
            harmonic_mean(precision, recall)
        })
        .fold(0.0, f64::max)
}

/// `rouge_score.tokenize.tokenize(text, stemmer=None)`.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let spaced: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                ' '
            }
        })
        .collect();
    spaced.split_whitespace().map(str::to_string).collect()
}

fn f1_of_tokens<S: AsRef<str>>(pred: &[S], gold: &[S]) -> f64 {
    if pred.is_empty() || gold.is_empty() {
        return if pred.is_empty() && gold.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let same = clipped_overlap(pred, gold);
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    harmonic_mean(precision, recall)
}

/// Σ over distinct tokens of min(count in a, count in b): the size of `Counter(a) & Counter(b)`.
fn clipped_overlap<S: AsRef<str>>(a: &[S], b: &[S]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in a {
        *counts.entry(t.as_ref()).or_default() += 1;
    }
    let mut same = 0;
    for t in b {
        if let Some(c) = counts.get_mut(t.as_ref()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    same
}

fn harmonic_mean(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn normalisation_follows_the_squad_script() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        // Articles only as whole words; `an` inside `annual` and `a` in `area` stay.
        assert_eq!(normalize_answer("An annual area, a the"), "annual area");
        // Punctuation is removed before articles, so `the-end` joins into one word.
        assert_eq!(normalize_answer("the-end of (a) story"), "theend of story");
        // Only ASCII punctuation: the en dash and curly quote stay.
        assert_eq!(normalize_answer("1914–1918 ’war’"), "1914–1918 ’war’");
        assert_eq!(normalize_answer("\t\n ?!. "), "");
        // Unicode lowercase; `à` is a word character, so `a` before it is no article.
        assert_eq!(normalize_answer("ÉCOLE àa a"), "école àa");
        // Python's split() also separates on U+001F.
        assert_eq!(normalize_answer("x\u{1f}y"), "x y");
    }

    #[test]
    fn exact_match_is_the_best_over_references() {
        assert_eq!(
            exact_match("the Eiffel tower.", &refs(&["Eiffel Tower"])),
            1.0
        );
        assert_eq!(exact_match("Eiffel", &refs(&["Eiffel Tower"])), 0.0);
        assert_eq!(exact_match("Paris", &refs(&["London", "paris"])), 1.0);
        assert_eq!(exact_match("Paris", &[]), 0.0);
        // Both normalise to nothing.
        assert_eq!(exact_match("", &refs(&["the."])), 1.0);
    }

    #[test]
    fn f1_by_hand() {
        // pred {eiffel, tower, in, paris}, gold {eiffel, tower}: p = 2/4, r = 1, F1 = 2/3.
        let f = token_f1("The Eiffel Tower in Paris", &refs(&["Eiffel Tower"]));
        assert!(close(f, 2.0 / 3.0), "{f}");
        // Repeated tokens are clipped: pred [paris ×3], gold [paris, france]: same = 1,
        // p = 1/3, r = 1/2, F1 = 2·(1/6)/(5/6) = 0.4.
        let f = token_f1("Paris paris PARIS", &refs(&["Paris, France"]));
        assert!(close(f, 0.4), "{f}");
        // The best reference wins: gold [london] → 0, gold [paris] → 1.
        assert_eq!(token_f1("Paris", &refs(&["London", "Paris"])), 1.0);
        // Empty sides.
        assert_eq!(token_f1("", &refs(&["Paris"])), 0.0);
        assert_eq!(token_f1("Paris", &refs(&[""])), 0.0);
        assert_eq!(token_f1("a the", &refs(&["?!"])), 1.0);
        assert_eq!(token_f1("Paris", &[]), 0.0);
        // No overlap.
        assert_eq!(token_f1("Berlin", &refs(&["Paris"])), 0.0);
        // Unicode tokens compare after lowercasing.
        assert_eq!(token_f1("Zürich", &refs(&["ZÜRICH"])), 1.0);
    }

    #[test]
    fn rouge_tokenizer_keeps_only_ascii_alphanumerics() {
        assert_eq!(rouge_tokens("Hello, World-2!"), ["hello", "world", "2"]);
        // `ü` is outside [a-z0-9]: the word splits around it.
        assert_eq!(rouge_tokens("Zürich café"), ["z", "rich", "caf"]);
        // Unlike SQuAD's normalisation, articles stay.
        assert_eq!(rouge_tokens("The cat"), ["the", "cat"]);
        assert!(rouge_tokens("—’!").is_empty());
    }

    #[test]
    fn rouge1_by_hand() {
        // pred [the, cat, sat, on, the, mat] (6), target [the, cat, is, on, the, mat] (6):
        // overlap the×2, cat, on, mat = 5; p = r = 5/6.
        let f = rouge1_f("The cat sat on the mat.", &refs(&["the cat is on the mat"]));
        assert!(close(f, 5.0 / 6.0), "{f}");
        // Clipping: pred [the ×3] vs target [the, cat]: overlap 1, p = 1/3, r = 1/2 → 0.4.
        let f = rouge1_f("the the the", &refs(&["the cat"]));
        assert!(close(f, 0.4), "{f}");
        // Best of several references.
        let f = rouge1_f("a b", &refs(&["c", "a c", "a b"]));
        assert_eq!(f, 1.0);
        // Empty on either side, or both: 0 (rouge_score's max(count, 1) denominators).
        assert_eq!(rouge1_f("", &refs(&["cat"])), 0.0);
        assert_eq!(rouge1_f("cat", &refs(&["..."])), 0.0);
        assert_eq!(rouge1_f("", &refs(&[""])), 0.0);
        assert_eq!(rouge1_f("cat", &[]), 0.0);
    }
}
