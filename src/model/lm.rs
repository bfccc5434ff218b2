//! What evaluators, calibration and training ask of a model, whatever its family.
//!
//! [`Blocks`] runs a model block by block and shows the input of each linear layer (what
//! calibration and sequential compression need); [`CausalLm`] adds next-token logits for a batch
//! of sequences, with or without a KV cache. Evaluators take `&dyn CausalLm`: one virtual call per
//! forward pass, none per token.
//!
//! Families to come add their own traits beside these rather than widening them: a `MaskedLm`
//! (BERT-style encoders: logits at masked positions of a bidirectional pass, for
//! pseudo-log-likelihood scoring) and a `Seq2SeqLm` (T5: encode a source once, then decoder logits
//! for a target given the encoder states, for encoder-decoder scoring). Evaluators that only need
//! log-probabilities of continuations will then accept whichever of them the model provides.

use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::decoder::LnDecoder;
use super::error::Result;
use super::hidden::{HiddenStates, SpillPolicy};
use super::llama::Llama;
use super::parts::{Capture, KvCache, LayerKvCache};

/// A model run as embedding → blocks → head, one block at a time.
pub trait Blocks: Send + Sync {
    /// The resolved config the model was built from.
    fn config(&self) -> &ModelConfig;

    fn num_layers(&self) -> usize;

    /// The dtype the model runs in.
    fn dtype(&self) -> DType;

    fn device(&self) -> &Device;

    /// Token ids [batch, seq] (u32) → hidden states [batch, seq, hidden]; a family with learned
    /// positions adds those of positions 0..seq.
    fn embed(&self, tokens: &Tensor) -> Result<Tensor>;

    /// Runs block `layer` on hidden states `x` [batch, seq, hidden] whose first token sits at
    /// absolute position `pos`, attending to and extending `cache` if given; `capture` receives
    /// the input of each linear layer, [batch, seq, in_features], just before it is applied.
    fn block_forward(
        &self,
        layer: usize,
        x: &Tensor,
        pos: usize,
        cache: Option<&mut LayerKvCache>,
        capture: Option<Capture<'_>>,
    ) -> Result<Tensor>;

    /// Final norm and head: hidden states → logits [batch, seq, vocab] in f32.
    fn head(&self, x: &Tensor) -> Result<Tensor>;

    /// Whether blocks are read from disk as they run (see [`Llama::streamed`]): callers then run
    /// all their sequences through block i before block i + 1.
    fn is_streamed(&self) -> bool;

    /// Lets go of any block held for reuse (its weights changed, or the caller is done).
    fn release(&self);

    /// Where a layer-wise pass keeps its hidden states ([`HiddenStates`]): `None` holds them in
    /// memory unconditionally.
    fn spill(&self) -> Option<&SpillPolicy> {
        None
    }
}

/// A causal (decoder-only) language model: logits for the next token at every position.
pub trait CausalLm: Blocks {
    /// Logits [batch, seq, vocab] (f32) for every position of `tokens` [batch, seq].
    fn forward(&self, tokens: &Tensor) -> Result<Tensor>;

    /// Logits for `tokens` continuing the sequence held in `cache`, which is then extended.
    fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor>;

    /// An empty decoding state for this model.
    fn new_cache(&self) -> KvCache {
        KvCache::new(self.config())
    }
}

/// The methods of [`Blocks`] and [`CausalLm`], each calling the same method of `(DEREF self)`:
/// on `Llama` its inherent methods (they win over the trait's), on a box the boxed model's.
macro_rules! delegate {
    (Blocks $($deref:tt)*) => {
        fn config(&self) -> &ModelConfig {
            ($($deref)* self).config()
        }

        fn num_layers(&self) -> usize {
            ($($deref)* self).num_layers()
        }

        fn dtype(&self) -> DType {
            ($($deref)* self).dtype()
        }

        fn device(&self) -> &Device {
            ($($deref)* self).device()
        }

        fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
            ($($deref)* self).embed(tokens)
        }

        fn block_forward(&self, layer: usize, x: &Tensor, pos: usize,
            cache: Option<&mut LayerKvCache>, capture: Option<Capture<'_>>) -> Result<Tensor> {
            ($($deref)* self).block_forward(layer, x, pos, cache, capture)
        }

        fn head(&self, x: &Tensor) -> Result<Tensor> {
            ($($deref)* self).head(x)
        }

        fn is_streamed(&self) -> bool {
            ($($deref)* self).is_streamed()
        }

        fn release(&self) {
            ($($deref)* self).release()
        }
    };
    (CausalLm $($deref:tt)*) => {
        fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
            ($($deref)* self).forward(tokens)
        }

        fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
            ($($deref)* self).forward_cached(tokens, cache)
        }
    };
}

impl Blocks for Llama {
    delegate!(Blocks);
}

impl CausalLm for Llama {
    delegate!(CausalLm);
}

impl Blocks for LnDecoder {
    delegate!(Blocks);
}

impl CausalLm for LnDecoder {
    delegate!(CausalLm);
}

/// A boxed model is a model, so `&Box<dyn CausalLm>` goes wherever `&dyn CausalLm` does.
impl<M: Blocks + ?Sized> Blocks for Box<M> {
    delegate!(Blocks **);

    fn spill(&self) -> Option<&SpillPolicy> {
        (**self).spill()
    }
}

impl<M: CausalLm + ?Sized> CausalLm for Box<M> {
    delegate!(CausalLm **);
}

/// Runs every batch of token ids `ids[i]` [batch, seq] through the model and hands its final
/// hidden states [batch, seq, hidden] to `each(i, x)`, which returns how many units of work it
/// finished for `tick`. A held model goes batch by batch, so only one batch's activations are
/// alive; a streamed one goes layer-wise (every batch through block i before block i + 1, with
/// `tick(0)` after each block), so each block is read once. The operations on each batch are
/// the same either way, and so are the numbers.
pub fn for_each_final_hidden<E: From<super::ModelError> + From<crate::cancel::Cancelled>>(
    model: &dyn Blocks,
    ids: &[Tensor],
    each: &mut dyn FnMut(usize, Tensor) -> std::result::Result<u64, E>,
    tick: crate::cancel::Tick,
) -> std::result::Result<(), E> {
    let run = |x: Tensor, layer: usize| model.block_forward(layer, &x, 0, None, None);
    if !model.is_streamed() {
        for (i, ids) in ids.iter().enumerate() {
            let x = (0..model.num_layers()).try_fold(model.embed(ids)?, run)?;
            let n = each(i, x)?;
            tick(n)?;
        }
        return Ok(());
    }
    let mut hidden = hidden_for(model, ids, "layer-wise pass")?;
    for i in ids {
        hidden.push(model.embed(i)?)?;
    }
    for layer in 0..model.num_layers() {
        hidden.update(|_, x| model.block_forward(layer, x, 0, None, None))?;
        tick(0)?;
    }
    model.release();
    for i in 0..hidden.len() {
        let n = each(i, hidden.take(i)?)?;
        tick(n)?;
    }
    Ok(())
}

/// Room for the hidden states of every batch of `ids` [batch, seq], as `model`'s spill policy
/// allows.
pub fn hidden_for(model: &dyn Blocks, ids: &[Tensor], what: &str) -> Result<HiddenStates> {
    let tokens: usize = ids.iter().map(Tensor::elem_count).sum();
    let bytes = tokens * model.config().hidden_size * model.dtype().size_in_bytes();
    HiddenStates::new(model.spill(), bytes as u64, model.device(), what)
}
