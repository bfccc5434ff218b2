//! Greedy decoding with the KV cache.

use candle_core::{IndexOp, Tensor};

use super::error::{ModelError, Result};
use super::llama::{KvCache, Llama};

/// Greedily extends `prompt_ids` by up to `max_new_tokens` tokens and returns only the new ones.
/// Stops early after producing `eos` (which is not included in the result).
pub fn greedy(
    model: &Llama,
    prompt_ids: &[u32],
    max_new_tokens: usize,
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    if prompt_ids.is_empty() {
        return Err(ModelError::Invalid(
            "greedy decoding needs a non-empty prompt".into(),
        ));
    }
    let mut cache = KvCache::new(model.config());
    let mut out = Vec::with_capacity(max_new_tokens);
    let mut input = prompt_ids.to_vec();
    while out.len() < max_new_tokens {
        let tokens = Tensor::new(input.as_slice(), model.device())?.unsqueeze(0)?;
        let logits = model.forward_cached(&tokens, &mut cache)?;
        let last = logits.i((0, input.len() - 1))?;
        let next = last.argmax(0)?.to_scalar::<u32>()?;
        if Some(next) == eos {
            break;
        }
        out.push(next);
        input = vec![next];
    }
    Ok(out)
}
