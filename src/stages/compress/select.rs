//! Which weights a compression stage touches: a module group, then `targets` / `ignore` regexes
//! over Hugging Face weight names (the llm-compressor convention).

use candle_core::Tensor;

use super::{NameRegex, Selection};
use crate::model::ModelConfig;
use crate::stages::weights::Tensors;
use crate::stages::StageError;

/// The selected weight names, block by block in projection order (the LM head last).
pub fn selected(cfg: &ModelConfig, sel: &Selection) -> Result<Vec<String>, StageError> {
    let (targets, ignore) = (&sel.targets, &sel.ignore);
    let mut names: Vec<String> = cfg
        .architecture()
        .linears(cfg)
        .into_iter()
        .filter(|l| sel.group.selects(l.group))
        .map(|l| l.name)
        .collect();
    names.retain(|n| {
        (targets.is_empty() || targets.iter().any(|r| r.is_match(n)))
            && !ignore.iter().any(|r| r.is_match(n))
    });
    if names.is_empty() {
        return Err(StageError::NothingSelected {
            modules: sel.group.as_str(),
            targets: written(targets),
            ignore: written(ignore),
        });
    }
    Ok(names)
}

fn written(regexes: &[NameRegex]) -> Vec<String> {
    regexes.iter().map(|r| r.as_str().to_string()).collect()
}

/// A weight by name in nn.Linear's layout (a `Conv1D` weight transposed), as the kernels take
/// it; the LM head of a tied model is its embedding.
pub fn weight(tensors: &Tensors, name: &str) -> Result<Tensor, StageError> {
    tensors.linear_weight(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::compress::ModuleGroup;

    fn cfg() -> ModelConfig {
        ModelConfig::from_json(
            r#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "vocab_size": 10, "rms_norm_eps": 1e-5}"#,
        )
        .unwrap()
    }

    fn sel(group: ModuleGroup, targets: &[&str], ignore: &[&str]) -> Selection {
        Selection {
            group,
            targets: targets.iter().map(|s| NameRegex::new(s).unwrap()).collect(),
            ignore: ignore.iter().map(|s| NameRegex::new(s).unwrap()).collect(),
        }
    }

    #[test]
    fn groups() {
        let all = selected(&cfg(), &Selection::default()).unwrap();
        assert_eq!(all.len(), 14);
        assert_eq!(all[0], "model.layers.0.self_attn.q_proj.weight");
        let att = selected(&cfg(), &sel(ModuleGroup::Attention, &[], &[])).unwrap();
        assert_eq!(att.len(), 8);
        assert!(att.iter().all(|n| n.contains("self_attn")));
        let mlp = selected(&cfg(), &sel(ModuleGroup::Mlp, &[], &[])).unwrap();
        assert_eq!(mlp.len(), 6);
        assert!(mlp.iter().all(|n| n.contains(".mlp.")));
        assert_eq!(
            selected(&cfg(), &sel(ModuleGroup::LmHead, &[], &[])).unwrap(),
            vec!["lm_head.weight"]
        );
    }

    #[test]
    fn targets_and_ignore() {
        let s = sel(ModuleGroup::All, &[r"layers\.1\."], &["down_proj"]);
        let names = selected(&cfg(), &s).unwrap();
        assert_eq!(names.len(), 6);
        assert!(names
            .iter()
            .all(|n| n.contains("layers.1.") && !n.contains("down")));
        let none = sel(ModuleGroup::All, &["nothing"], &[]);
        assert!(selected(&cfg(), &none)
            .unwrap_err()
            .to_string()
            .contains("matches no weight"));
    }
}
