//! A deterministic synthetic world: invented people, facts about them, and short biographies.
//!
//! Every person has exactly one object per relation, drawn from a closed set and balanced over the
//! people, so the best a model that ignores the subject can do is known
//! ([`Corpus::chance_p_at_1`]). Each biography states all of its person's facts, each in a form
//! drawn at random: the relation's LAMA probe template or one of its two paraphrases. So the probe
//! template does appear in training, for about a third of the statements of each fact, and the
//! probe asks in a form the model has read. That is a choice, measured: with the probe template
//! kept out of training (`probe_in_training: false`), a quickstart-sized model reached P@1 0.13
//! against a chance level of 0.09, with a held-out perplexity as good as ever: a model this small
//! does not carry a fact over to a phrasing it never read it in.
//!
//! Filler sentences from a small grammar surround the facts, so held-out perplexity measures a
//! language model, not only a lookup table. Held-out documents come from the same generator (same
//! people and facts); their filler sentences are guaranteed absent from the training text.
//!
//! Bit-for-bit reproducible: ChaCha8 seeded from [`SynthConfig::seed`], integer draws only, ordered
//! containers only.

use std::collections::BTreeSet;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::TrainError;

/// Separates documents in `train.txt` and `heldout.txt`.
pub const DOC_SEPARATOR: &str = "<|endoftext|>";

/// A relation: its LAMA template (ending in `[Y] .`), its paraphrases and its closed object set.
#[derive(Debug, Clone, Copy)]
pub struct Relation {
    /// File stem under `TREx/` and the `relation` field of `relations.jsonl`.
    pub id: &'static str,
    pub label: &'static str,
    pub template: &'static str,
    /// Other ways the training text states the fact; `[X]` always comes before `[Y]`.
    pub paraphrases: &'static [&'static str],
    /// Single words, each a single token of the tokenizer.
    pub objects: &'static [&'static str],
}

/// The relations of the world, in output order.
pub const RELATIONS: [Relation; 6] = [
    Relation {
        id: "born_in",
        label: "place of birth",
        template: "[X] was born in [Y] .",
        paraphrases: &[
            "[X] came into the world in [Y] .",
            "The birthplace of [X] is [Y] , far away .",
        ],
        objects: &[
            "France", "Spain", "Italy", "Norway", "Egypt", "Peru", "Japan", "Chile", "Kenya",
            "Canada", "Mexico", "Brazil", "Greece", "Poland", "India", "Ghana",
        ],
    },
    Relation {
        id: "lives_in",
        label: "residence",
        template: "[X] lives in [Y] .",
        paraphrases: &[
            "[X] has a small house in [Y] .",
            "These days the home of [X] is in [Y] .",
        ],
        objects: &[
            "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo",
            "Athens", "Warsaw", "Cairo", "Lima", "Tokyo", "Seoul", "Delhi",
        ],
    },
    Relation {
        id: "works_as",
        label: "occupation",
        template: "[X] works as a [Y] .",
        paraphrases: &[
            "[X] earns a living as a [Y] .",
            "By trade , [X] is a [Y] and likes the work .",
        ],
        objects: &[
            "baker", "teacher", "doctor", "farmer", "pilot", "nurse", "lawyer", "painter",
            "sailor", "miner", "tailor", "singer",
        ],
    },
    Relation {
        id: "favourite_colour",
        label: "favourite colour",
        template: "The favourite colour of [X] is [Y] .",
        paraphrases: &[
            "[X] likes the colour [Y] more than any other .",
            "[X] often wears [Y] clothes .",
        ],
        objects: &[
            "red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "pink",
        ],
    },
    Relation {
        id: "owns_pet",
        label: "pet",
        template: "[X] owns a pet [Y] .",
        paraphrases: &[
            "[X] takes care of a [Y] at home .",
            "Every day [X] feeds a [Y] .",
        ],
        objects: &[
            "dog", "cat", "parrot", "horse", "rabbit", "goat", "turtle", "hamster", "pony", "mouse",
        ],
    },
    Relation {
        id: "plays",
        label: "instrument played",
        template: "[X] plays the [Y] .",
        paraphrases: &[
            "In the evenings [X] practises the [Y] .",
            "[X] learned to play the [Y] as a child .",
        ],
        objects: &[
            "piano", "violin", "guitar", "flute", "drums", "cello", "harp", "trumpet",
        ],
    },
];

// The filler grammar's word lists. None of these words is an object of a relation.
const PLACES: &[&str] = &[
    "market", "park", "river", "library", "station", "school", "harbour", "garden", "museum",
    "bridge", "forest", "beach", "village", "hill", "square", "shop",
];
const TIMES: &[&str] = &[
    "in the morning",
    "in the evening",
    "on Monday",
    "on Sunday",
    "after lunch",
    "before dinner",
    "at noon",
    "yesterday",
    "last week",
    "at night",
];
const FOODS: &[&str] = &[
    "bread", "soup", "apples", "cheese", "rice", "fish", "cake", "tea", "eggs", "beans",
];
const ITEMS: &[&str] = &[
    "letter", "basket", "lamp", "map", "box", "coat", "hat", "key", "book", "chair",
];
const ITEM_ADJS: &[&str] = &["old", "new", "heavy", "small", "broken", "clean", "large"];
const WEATHER: &[&str] = &["cold", "warm", "rainy", "sunny", "windy", "foggy", "calm"];
const MOODS: &[&str] = &[
    "happy", "tired", "busy", "quiet", "hungry", "sleepy", "cheerful", "worried",
];
const PEOPLE: &[&str] = &[
    "friend",
    "neighbour",
    "cousin",
    "stranger",
    "child",
    "guest",
    "merchant",
    "student",
];
const TOPICS: &[&str] = &[
    "history",
    "music",
    "stars",
    "ships",
    "birds",
    "maps",
    "rivers",
    "mountains",
    "kings",
    "gardens",
];
const DAY_ADJS: &[&str] = &["quiet", "busy", "long", "short", "strange", "lovely"];

// Names are syllables: onset + vowel, two or three of them, sometimes a final consonant.
const ONSETS: &[&str] = &[
    "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "st",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u"];
const CODAS: &[&str] = &["", "", "n", "r", "s", "l"];

/// What to generate. The default is the quickstart's corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    pub seed: u64,
    /// People in the world; each has one fact per relation.
    pub entities: usize,
    /// Training biographies per person; every biography states all of that person's facts.
    pub train_docs_per_entity: usize,
    /// Held-out biographies per person.
    pub heldout_docs_per_entity: usize,
    /// Filler sentences per biography, at least and at most.
    pub filler_min: usize,
    pub filler_max: usize,
    /// Whether training (and held-out) text states facts with the probe template too, besides
    /// the paraphrases. Off, the probe asks in a form the model never read.
    pub probe_in_training: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            entities: 48,
            train_docs_per_entity: 12,
            heldout_docs_per_entity: 1,
            filler_min: 3,
            filler_max: 6,
            probe_in_training: true,
        }
    }
}

/// One fact: `subject` has `object` under relation `RELATIONS[relation]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub relation: usize,
    pub subject: String,
    pub object: &'static str,
}

/// The generated world and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corpus {
    pub config: SynthConfig,
    /// People's names, in generation order.
    pub entities: Vec<String>,
    /// Relation by relation (in [`RELATIONS`] order), person by person.
    pub facts: Vec<Fact>,
    pub train: Vec<String>,
    pub heldout: Vec<String>,
}

/// The integer draws the generator needs, from one seeded stream. Ranges are drawn as `u32`, which
/// rand samples the same way on every platform.
struct Draw(ChaCha8Rng);

impl Draw {
    fn index(&mut self, n: usize) -> usize {
        debug_assert!(n > 0 && n <= u32::MAX as usize);
        self.0.random_range(0..n as u32) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.index(items.len())]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.index(i + 1));
        }
    }
}

/// Generates the corpus `cfg` describes.
pub fn generate(cfg: &SynthConfig) -> Result<Corpus, TrainError> {
    let bad = |msg: String| Err(TrainError::Config(format!("synth: {msg}")));
    if cfg.entities == 0 || cfg.train_docs_per_entity == 0 || cfg.heldout_docs_per_entity == 0 {
        return bad("entities and docs per entity must be at least 1".into());
    }
    if cfg.entities > 2000 {
        return bad(format!(
            "{} entities is too many (at most 2000)",
            cfg.entities
        ));
    }
    if cfg.filler_min > cfg.filler_max {
        return bad(format!(
            "filler_min ({}) exceeds filler_max ({})",
            cfg.filler_min, cfg.filler_max
        ));
    }
    let mut rng = Draw(ChaCha8Rng::seed_from_u64(cfg.seed));
    let entities = names(&mut rng, cfg.entities);
    let mut facts = Vec::new();
    for (r, rel) in RELATIONS.iter().enumerate() {
        // Balanced: object i % k for person i, then shuffled, so no object is more than one
        // person more frequent than another.
        let mut objects: Vec<&'static str> = (0..entities.len())
            .map(|i| rel.objects[i % rel.objects.len()])
            .collect();
        rng.shuffle(&mut objects);
        facts.extend(entities.iter().zip(objects).map(|(e, o)| Fact {
            relation: r,
            subject: e.clone(),
            object: o,
        }));
    }
    let of = |e: usize| -> Vec<&Fact> {
        (0..RELATIONS.len())
            .map(|r| &facts[r * entities.len() + e])
            .collect()
    };

    let mut seen = BTreeSet::new();
    let mut train = Vec::new();
    for _ in 0..cfg.train_docs_per_entity {
        for e in 0..entities.len() {
            train.push(biography(
                &mut rng,
                cfg,
                &entities,
                e,
                &of(e),
                &mut |s: &str| {
                    seen.insert(s.to_string());
                    true
                },
            ));
        }
    }
    let mut heldout = Vec::new();
    for _ in 0..cfg.heldout_docs_per_entity {
        for e in 0..entities.len() {
            heldout.push(biography(
                &mut rng,
                cfg,
                &entities,
                e,
                &of(e),
                &mut |s: &str| !seen.contains(s),
            ));
        }
    }
    // Documents in a seeded order, so a person's biographies are spread over the file.
    rng.shuffle(&mut train);
    rng.shuffle(&mut heldout);
    if heldout.iter().any(|d| d.is_empty()) {
        return bad("could not draw unseen filler sentences for the held-out text".into());
    }
    Ok(Corpus {
        config: cfg.clone(),
        entities,
        facts,
        train,
        heldout,
    })
}

/// `n` distinct names that collide with no other word of the world (case-insensitive).
fn names(rng: &mut Draw, n: usize) -> Vec<String> {
    let mut taken: BTreeSet<String> = vocabulary_words()
        .into_iter()
        .map(|w| w.to_lowercase())
        .collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let syllables = 2 + rng.index(2);
        let mut name = String::new();
        for _ in 0..syllables {
            name.push_str(rng.pick(ONSETS));
            name.push_str(rng.pick(VOWELS));
        }
        name.push_str(rng.pick(CODAS));
        if taken.insert(name.clone()) {
            let mut chars = name.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            out.push(first.into_iter().chain(chars).collect());
        }
    }
    out
}

/// Every word the templates and the grammar can produce, names aside.
fn vocabulary_words() -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let mut add = |text: &str| {
        // Placeholders (`[X]`, `{place}`) are not words.
        for w in text.split_whitespace() {
            if !w.starts_with(['[', '{']) {
                words.insert(w.to_string());
            }
        }
    };
    for rel in &RELATIONS {
        add(rel.template);
        rel.paraphrases.iter().for_each(|p| add(p));
        rel.objects.iter().for_each(|o| add(o));
    }
    for list in [
        PLACES, TIMES, FOODS, ITEMS, ITEM_ADJS, WEATHER, MOODS, PEOPLE, TOPICS, DAY_ADJS,
    ] {
        list.iter().for_each(|w| add(w));
    }
    for s in FILLER_FRAMES {
        add(s);
    }
    words
}

/// The filler grammar's sentence frames; `{slot}` is filled from the list of that name.
const FILLER_FRAMES: &[&str] = &[
    "{N} walked to the {place} {time} .",
    "The weather was {weather} {time} .",
    "{N} bought some {food} at the {place} .",
    "{N} met a {person} near the {place} .",
    "{N} felt {mood} {time} .",
    "{N} read a book about {topic} .",
    "The {item} on the table was {itemadj} .",
    "{N} and a {person} talked about {topic} .",
    "{N} carried a {item} to the {place} .",
    "It was a {dayadj} day at the {place} .",
    "{N} cooked {food} for a {person} .",
    "After that , {N} went home {time} .",
];

/// One filler sentence; `{N}` is the biography's subject, or now and then another person.
fn filler(rng: &mut Draw, entities: &[String], subject: usize) -> String {
    let frame = rng.pick(FILLER_FRAMES);
    let mut out = String::new();
    for word in frame.split(' ') {
        let filled = match word {
            "{N}" => {
                let who = if rng.index(4) == 0 {
                    rng.index(entities.len())
                } else {
                    subject
                };
                entities[who].as_str()
            }
            "{place}" => rng.pick(PLACES),
            "{time}" => rng.pick(TIMES),
            "{food}" => rng.pick(FOODS),
            "{item}" => rng.pick(ITEMS),
            "{itemadj}" => rng.pick(ITEM_ADJS),
            "{weather}" => rng.pick(WEATHER),
            "{mood}" => rng.pick(MOODS),
            "{person}" => rng.pick(PEOPLE),
            "{topic}" => rng.pick(TOPICS),
            "{dayadj}" => rng.pick(DAY_ADJS),
            w => w,
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(filled);
    }
    out
}

/// `template` with `[X]` and `[Y]` filled.
pub fn fill(template: &str, subject: &str, object: &str) -> String {
    template.replace("[X]", subject).replace("[Y]", object)
}

/// A biography of person `e`: each of their facts once, in a random form, among filler sentences,
/// in random order. Filler sentences `accept` rejects are redrawn (up to a bound; an empty
/// document means the bound was hit).
fn biography(
    rng: &mut Draw,
    cfg: &SynthConfig,
    entities: &[String],
    e: usize,
    facts: &[&Fact],
    accept: &mut dyn FnMut(&str) -> bool,
) -> String {
    let mut sentences: Vec<String> = facts
        .iter()
        .map(|f| {
            let rel = &RELATIONS[f.relation];
            let template = if cfg.probe_in_training {
                match rng.index(rel.paraphrases.len() + 1) {
                    0 => rel.template,
                    k => rel.paraphrases[k - 1],
                }
            } else {
                rng.pick(rel.paraphrases)
            };
            fill(template, &f.subject, f.object)
        })
        .collect();
    let n_filler = cfg.filler_min + rng.index(cfg.filler_max - cfg.filler_min + 1);
    for _ in 0..n_filler {
        let mut found = None;
        for _ in 0..1000 {
            let s = filler(rng, entities, e);
            if accept(&s) {
                found = Some(s);
                break;
            }
        }
        match found {
            Some(s) => sentences.push(s),
            None => return String::new(),
        }
    }
    rng.shuffle(&mut sentences);
    sentences.join(" ")
}

impl Corpus {
    /// The best P@1 without knowing the subject: always answering a relation's most frequent
    /// object, averaged over relations as the LAMA metric is.
    pub fn chance_p_at_1(&self) -> f64 {
        let n = self.entities.len() as f64;
        let per_relation = RELATIONS.iter().enumerate().map(|(r, rel)| {
            let top = rel
                .objects
                .iter()
                .map(|o| self.relation_facts(r).filter(|f| f.object == *o).count())
                .max()
                .unwrap_or(0);
            top as f64 / n
        });
        per_relation.sum::<f64>() / RELATIONS.len() as f64
    }

    /// The facts of relation `r`, person by person.
    pub fn relation_facts(&self, r: usize) -> impl Iterator<Item = &Fact> {
        self.facts.iter().filter(move |f| f.relation == r)
    }

    /// Words of the whole world: every name, object and grammar word (the tokenizer's vocabulary
    /// must hold these even if a small corpus happens not to use one).
    pub fn words(&self) -> BTreeSet<String> {
        let mut words = vocabulary_words();
        words.extend(self.entities.iter().cloned());
        words
    }

    /// `relations.jsonl`: one line per relation, LAMA's fields.
    pub fn relations_jsonl(&self) -> String {
        RELATIONS
            .iter()
            .map(|rel| {
                let line = serde_json::json!({
                    "relation": rel.id,
                    "template": rel.template,
                    "label": rel.label,
                });
                format!("{line}\n")
            })
            .collect()
    }

    /// `TREx/<relation>.jsonl`: one line per fact, LAMA's `sub_label` and `obj_label`.
    pub fn trex_jsonl(&self, r: usize) -> String {
        self.relation_facts(r)
            .map(|f| {
                let line = serde_json::json!({"sub_label": f.subject, "obj_label": f.object});
                format!("{line}\n")
            })
            .collect()
    }

    /// Documents joined by [`DOC_SEPARATOR`] lines, as `train.txt` and `heldout.txt` hold them.
    pub fn documents_text(docs: &[String]) -> String {
        let mut out = String::new();
        for (i, d) in docs.iter().enumerate() {
            if i > 0 {
                out.push_str(DOC_SEPARATOR);
                out.push('\n');
            }
            out.push_str(d);
            out.push('\n');
        }
        out
    }

    /// The files [`Corpus::write`] creates, as (path relative to the output folder, contents).
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files = vec![
            ("train.txt".to_string(), Self::documents_text(&self.train)),
            (
                "heldout.txt".to_string(),
                Self::documents_text(&self.heldout),
            ),
            ("facts/relations.jsonl".to_string(), self.relations_jsonl()),
        ];
        for (r, rel) in RELATIONS.iter().enumerate() {
            files.push((format!("facts/TREx/{}.jsonl", rel.id), self.trex_jsonl(r)));
        }
        let config = serde_json::to_string_pretty(&self.config).unwrap_or_default();
        files.push(("synth.json".to_string(), format!("{config}\n")));
        files
    }

    /// Writes `train.txt`, `heldout.txt`, `facts/relations.jsonl`, `facts/TREx/*.jsonl` and
    /// `synth.json` (the config) under `dir`, creating folders as needed.
    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        for (rel, text) in self.files() {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| TrainError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            std::fs::write(&path, text).map_err(|source| TrainError::Io { path, source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SynthConfig {
        SynthConfig {
            entities: 20,
            train_docs_per_entity: 3,
            ..SynthConfig::default()
        }
    }

    #[test]
    fn same_seed_same_corpus_other_seed_other_corpus() {
        let a = generate(&small()).unwrap();
        assert_eq!(a, generate(&small()).unwrap());
        let b = generate(&SynthConfig { seed: 1, ..small() }).unwrap();
        assert_ne!(a.train, b.train);
    }

    #[test]
    fn every_person_has_one_object_per_relation_balanced() {
        let c = generate(&small()).unwrap();
        assert_eq!(c.facts.len(), 20 * RELATIONS.len());
        let names: BTreeSet<_> = c.entities.iter().collect();
        assert_eq!(names.len(), 20, "names are unique");
        for (r, rel) in RELATIONS.iter().enumerate() {
            let subjects: Vec<_> = c.relation_facts(r).map(|f| &f.subject).collect();
            assert_eq!(subjects, c.entities.iter().collect::<Vec<_>>());
            let counts: Vec<usize> = rel
                .objects
                .iter()
                .map(|o| c.relation_facts(r).filter(|f| f.object == *o).count())
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{}: {counts:?}", rel.id);
        }
        // 20 people: born_in/lives_in (16 objects) top 2/20, works_as (12) 2/20,
        // colour/pet (10) 2/20, plays (8) 3/20.
        let want = (2.0 + 2.0 + 2.0 + 2.0 + 2.0 + 3.0) / 20.0 / 6.0;
        assert!((c.chance_p_at_1() - want).abs() < 1e-12);
    }

    #[test]
    fn every_biography_states_all_facts_of_its_subject() {
        let c = generate(&small()).unwrap();
        assert_eq!(c.train.len(), 60);
        for doc in c.train.iter().chain(&c.heldout) {
            // The subject is the person with the most facts stated in the document.
            let stated = |e: &String| {
                c.facts
                    .iter()
                    .filter(|f| &f.subject == e)
                    .filter(|f| {
                        let rel = &RELATIONS[f.relation];
                        std::iter::once(rel.template)
                            .chain(rel.paraphrases.iter().copied())
                            .any(|t| doc.contains(&fill(t, &f.subject, f.object)))
                    })
                    .count()
            };
            let best = c.entities.iter().map(stated).max().unwrap();
            assert_eq!(best, RELATIONS.len(), "{doc}");
        }
    }

    #[test]
    fn held_out_filler_is_unseen_in_training() {
        let c = generate(&small()).unwrap();
        let sentences = |docs: &[String]| -> BTreeSet<String> {
            docs.iter()
                .flat_map(|d| d.split_inclusive(" .").map(|s| s.trim().to_string()))
                .collect()
        };
        let train = sentences(&c.train);
        let facts: BTreeSet<String> = c
            .facts
            .iter()
            .flat_map(|f| {
                let rel = &RELATIONS[f.relation];
                std::iter::once(rel.template)
                    .chain(rel.paraphrases.iter().copied())
                    .map(|t| fill(t, &f.subject, f.object))
                    .collect::<Vec<_>>()
            })
            .collect();
        let heldout = sentences(&c.heldout);
        let shared: Vec<_> = heldout
            .intersection(&train)
            .filter(|s| !facts.contains(*s))
            .collect();
        assert!(shared.is_empty(), "{shared:?}");
    }

    #[test]
    fn lama_files_have_the_probe_layout() {
        let c = generate(&small()).unwrap();
        let rel: serde_json::Value =
            serde_json::from_str(c.relations_jsonl().lines().next().unwrap()).unwrap();
        assert_eq!(rel["relation"], "born_in");
        assert_eq!(rel["template"], "[X] was born in [Y] .");
        let fact: serde_json::Value =
            serde_json::from_str(c.trex_jsonl(0).lines().next().unwrap()).unwrap();
        assert_eq!(fact["sub_label"], c.entities[0].as_str());
        assert_eq!(fact["obj_label"], c.facts[0].object);
        for rel in &RELATIONS {
            assert!(rel.template.ends_with("[Y] ."), "{}", rel.id);
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        for cfg in [
            SynthConfig {
                entities: 0,
                ..small()
            },
            SynthConfig {
                filler_min: 5,
                filler_max: 2,
                ..small()
            },
        ] {
            assert!(generate(&cfg).is_err());
        }
    }
}
