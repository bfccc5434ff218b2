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
use super::error::Result;
use super::llama::{Capture, KvCache, LayerKvCache, Llama};

/// A model run as embedding → blocks → head, one block at a time.
pub trait Blocks: Send + Sync {
    /// The resolved config the model was built from.
    fn config(&self) -> &ModelConfig;

    fn num_layers(&self) -> usize;

    /// The dtype the model runs in.
    fn dtype(&self) -> DType;

    fn device(&self) -> &Device;

    /// Token ids [batch, seq] (u32) → hidden states [batch, seq, hidden].
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

/// A boxed model is a model, so `&Box<dyn CausalLm>` goes wherever `&dyn CausalLm` does.
impl<M: Blocks + ?Sized> Blocks for Box<M> {
    delegate!(Blocks **);
}

impl<M: CausalLm + ?Sized> CausalLm for Box<M> {
    delegate!(CausalLm **);
}
