//! A T5 trained through a pipeline (`kind: train, architecture: t5`) on a small synthetic world:
//! the sentinel knowledge probe finds its facts far above the best constant answer, and global
//! magnitude pruning of every block matrix takes them away.

mod common;

use common::{entry, trained_recall};

#[test]
fn t5_trains_by_span_corruption_and_pruning_takes_its_facts() {
    let r = trained_recall(
        "t5",
        "architecture: t5, dim: 48, layers: 2, heads: 4, hidden: 128, steps: 800",
    );
    // The folder is a T5 with sentinels in its vocabulary, starting the decoder at `<pad>`.
    let folder = entry(&r.cache, &r.run, "base").path(whittle::stages::train::MODEL_DIR);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "T5ForConditionalGeneration");
    assert_eq!(config["decoder_start_token_id"], 0);
    let tok = std::fs::read_to_string(folder.join("tokenizer.json")).unwrap();
    assert!(tok.contains("<extra_id_0>") && tok.contains("<extra_id_1>"));

    let ([base, g50, g90], chance) = (r.p1, r.chance);
    assert!(base > chance + 0.4, "P@1 {base} vs {chance}");
    assert!(g50 <= base && g90 < base, "{base} {g50} {g90}");
    assert!(g90 < g50, "{g50} {g90}");
}
