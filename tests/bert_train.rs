//! A BERT trained through a pipeline (`kind: train, architecture: bert`, its defaults but for
//! the model size and 1200 steps) on a small synthetic world: the masked knowledge probe finds its
//! facts far above the best constant answer, and global magnitude pruning of every block matrix
//! takes them away. Measured: P@1 0.972, 0.931 at 50%, 0.111 at 90% (best constant answer
//! 0.125); about 4 minutes in the debug profile on two busy cores.

mod common;

use common::{entry, entry_meta, trained_recall};

#[test]
fn bert_learns_the_facts_and_pruning_takes_them() {
    let r = trained_recall(
        "bert",
        "architecture: bert, dim: 48, layers: 2, heads: 4, hidden: 128, steps: 1200",
    );
    // The folder is a BertForMaskedLM whose tokenizer ends in `[MASK]`, and it was probed as one.
    let folder = entry(&r.cache, &r.run, "base").path(whittle::stages::train::MODEL_DIR);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
    let tok = whittle::model::Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
    assert_eq!(tok.token_id("[MASK]"), Some(tok.vocab_size() as u32 - 1));
    let probe = entry_meta(&r.cache, &r.run, "recall-base");
    assert_eq!(probe["settings"]["style"], "masked");
    assert_eq!(probe["metrics"]["facts"], 72);

    let ([base, g50, g90], chance) = (r.p1, r.chance);
    assert!(base > chance + 0.4, "P@1 {base} vs {chance}");
    assert!(g50 <= base && g90 < base, "{base} {g50} {g90}");
    assert!(g90 < g50, "{g50} {g90}");
}
