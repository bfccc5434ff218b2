//! The keys of a `train` stage: every setting has the quickstart's default.

use super::TrainSpec;
use crate::pipeline::fields::Fields;

/// Every training setting has the quickstart's default; each given one is range-checked.
pub(super) fn read(f: &mut Fields) -> Option<TrainSpec> {
    let dataset = f.name_in("dataset", f.env.datasets, "datasets");
    let vocabulary = match f.has("vocabulary") {
        true => Some(f.name_in("vocabulary", f.env.datasets, "datasets")?),
        false => None,
    };
    let arch = f
        .choice("architecture", &crate::train::TrainArch::NAMES)
        .and_then(crate::train::TrainArch::parse)
        .unwrap_or_default();
    // T5 and BERT have their own defaults (sentences as examples; T5's init scale).
    let d = match arch {
        crate::train::TrainArch::T5 => crate::train::seq2seq::default_config(),
        crate::train::TrainArch::Bert => crate::train::masked::default_config(),
        _ => crate::train::TrainConfig::default(),
    };
    let mut c = d.clone();
    c.architecture = arch;
    c.dim = f.count("dim", 8, d.dim);
    c.layers = f.count("layers", 1, d.layers);
    c.heads = f.count("heads", 1, d.heads);
    // T5 attention has as many key/value heads as heads.
    let kv_default = match arch {
        crate::train::TrainArch::T5 => c.heads,
        _ => d.kv_heads,
    };
    c.kv_heads = f.count("kv_heads", 1, kv_default);
    c.hidden = f.count("hidden", 1, d.hidden);
    c.seqlen = f.count("seqlen", 2, d.seqlen);
    c.batch = f.count("batch", 1, d.batch);
    c.steps = f.count("steps", 1, d.steps);
    c.warmup = f.count("warmup", 0, d.warmup);
    c.seed = f.count("seed", 0, d.seed as usize) as u64;
    c.lr = f
        .number("lr", &|x| x > 0.0 && x < 1.0, "a number in (0, 1)")
        .unwrap_or(d.lr);
    c.weight_decay = f
        .number(
            "weight_decay",
            &|x| (0.0..1.0).contains(&x),
            "a number in [0, 1)",
        )
        .unwrap_or(d.weight_decay);
    if c.heads % c.kv_heads != 0 || c.dim % c.heads != 0 {
        let help = format!(
            "`dim` ({}) must divide by `heads` ({}), and `heads` by `kv_heads` ({})",
            c.dim, c.heads, c.kv_heads
        );
        f.fail_key("heads", "the attention heads do not fit".into(), help);
        return None;
    }
    Some(TrainSpec {
        dataset: dataset?,
        vocabulary,
        config: c,
    })
}
