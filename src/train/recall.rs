//! P@1 on the synthetic facts: does the model's next token after the probe prompt name the object?
//!
//! The LAMA protocol for a causal model: the template up to `[Y]` with the subject filled in,
//! `<s>` prepended, arg max over the whole vocabulary at the last position, compared with the
//! object's token (encoded with a leading space). Averaged per relation, then across relations.
//! This is the trainer's own check; the pipeline's knowledge probe reads the LAMA files instead.

use candle_core::{Device, Tensor, D};
use serde::Serialize;

use super::synth::{fill, Fact, RELATIONS};
use super::TrainError;
use crate::model::CausalLm;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recall {
    /// Mean over relations of each relation's P@1.
    pub p_at_1: f64,
    pub per_relation: Vec<RelationRecall>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelationRecall {
    pub relation: &'static str,
    pub facts: usize,
    pub correct: usize,
}

/// P@1 of `model` on `facts`.
pub fn fact_recall(
    model: &dyn CausalLm,
    tok: &tokenizers::Tokenizer,
    facts: &[Fact],
    device: &Device,
) -> Result<Recall, TrainError> {
    let encode = |text: &str, special: bool| -> Result<Vec<u32>, TrainError> {
        tok.encode_fast(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TrainError::Tokenizer(format!("cannot encode `{text}`: {e}")))
    };
    let mut per_relation = Vec::new();
    for (r, rel) in RELATIONS.iter().enumerate() {
        let mine: Vec<&Fact> = facts.iter().filter(|f| f.relation == r).collect();
        if mine.is_empty() {
            continue;
        }
        let prefix = rel.template.split("[Y]").next().unwrap_or("").trim_end();
        let mut prompts = Vec::new();
        let mut answers = Vec::new();
        for f in &mine {
            prompts.push(encode(&fill(prefix, &f.subject, f.object), true)?);
            let object = encode(&format!(" {}", f.object), false)?;
            match object.as_slice() {
                [id] if tok.id_to_token(*id).as_deref() == Some(f.object) => answers.push(*id),
                _ => {
                    return Err(TrainError::Tokenizer(format!(
                        "object `{}` of {} is not one token of the vocabulary",
                        f.object, rel.id
                    )))
                }
            }
        }
        let mut correct = 0;
        // Prompts of one length go through the model together.
        let mut lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        for len in lengths {
            let idx: Vec<usize> = (0..prompts.len())
                .filter(|&i| prompts[i].len() == len)
                .collect();
            let flat: Vec<u32> = idx.iter().flat_map(|&i| prompts[i].clone()).collect();
            let ids = Tensor::from_vec(flat, (idx.len(), len), device)?;
            let last = model.forward(&ids)?.narrow(1, len - 1, 1)?.squeeze(1)?;
            let best: Vec<u32> = last.argmax(D::Minus1)?.to_vec1()?;
            correct += idx
                .iter()
                .zip(best)
                .filter(|(&i, b)| answers[i] == *b)
                .count();
        }
        per_relation.push(RelationRecall {
            relation: rel.id,
            facts: mine.len(),
            correct,
        });
    }
    let p_at_1 = per_relation
        .iter()
        .map(|r| r.correct as f64 / r.facts as f64)
        .sum::<f64>()
        / per_relation.len().max(1) as f64;
    Ok(Recall {
        p_at_1,
        per_relation,
    })
}
