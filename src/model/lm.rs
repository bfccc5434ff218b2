//! What evaluators, calibration and training ask of a model, whatever its family.
//!
//! [`Blocks`] runs a model block by block and shows the input of each linear layer (what
//! calibration and sequential compression need); [`CausalLm`] adds next-token logits for a batch
//! of sequences, with or without a KV cache. Evaluators take `&dyn CausalLm`: one virtual call per
//! forward pass, none per token.
//!
//! Encoders and encoder-decoders have their own traits beside it rather than widening it:
//! [`MaskedLm`] (BERT-style: logits at every position of a bidirectional pass) and [`Seq2SeqLm`]
//! (T5: encode a source once, then decoder logits for a target given the encoder states). A
//! family builds one [`LanguageModel`], which says which of the three it is; a task that needs a
//! particular kind asks for it ([`LanguageModel::causal`]) and gets a clear refusal otherwise.

use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::error::ModelError;
use super::error::Result;
use super::hidden::{HiddenStates, SpillPolicy, Spilling};
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

    /// Whether blocks are read from disk as they run (see [`crate::model::Llama::streamed`]): callers then run
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

/// A masked language model (a BERT-style encoder): every position sees the whole sequence.
///
/// As [`Blocks`], the model runs unpadded sequences (calibration windows): `block_forward`
/// attends over every position and `head` is the masked-LM prediction head.
pub trait MaskedLm: Blocks {
    /// Logits [batch, seq, vocab] (f32) at every position of `tokens` [batch, seq]; row `b` holds
    /// `lengths[b]` real tokens followed by padding that no position attends to.
    fn forward_masked(&self, tokens: &Tensor, lengths: &[usize]) -> Result<Tensor>;
}

/// An encoder-decoder language model (T5): the decoder predicts a target token by token given
/// the encoder's states of a source.
pub trait Seq2SeqLm: Blocks {
    /// Encoder states [batch, src, hidden] of `src` [batch, src]; row `b` holds `lengths[b]`
    /// real tokens followed by padding that no position attends to.
    fn encode(&self, src: &Tensor, lengths: &[usize]) -> Result<Tensor>;

    /// Logits [batch, tgt, vocab] (f32) of the decoder run causally on `tgt` [batch, tgt] (which
    /// starts with [`Seq2SeqLm::decoder_start`]), attending to `encoded` from
    /// [`Seq2SeqLm::encode`] with the same `src_lengths`.
    fn decode(&self, encoded: &Tensor, src_lengths: &[usize], tgt: &Tensor) -> Result<Tensor>;

    /// The token every decoder input starts with.
    fn decoder_start(&self) -> u32;
}

/// What a language model predicts, and so which tasks can ask it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// The next token from those before it (LLaMA, GPT-2, OPT).
    Causal,
    /// Masked tokens from both sides (BERT-style encoders).
    Masked,
    /// A target sequence given a source sequence (T5).
    Seq2Seq,
}

impl Objective {
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Causal => "causal (decoder-only)",
            Objective::Masked => "masked (encoder-only)",
            Objective::Seq2Seq => "sequence-to-sequence (encoder-decoder)",
        }
    }
}

/// A model of any family, as the kind of language model it is.
pub enum LanguageModel {
    Causal(Box<dyn CausalLm>),
    Masked(Box<dyn MaskedLm>),
    Seq2Seq(Box<dyn Seq2SeqLm>),
}

impl LanguageModel {
    pub fn objective(&self) -> Objective {
        match self {
            LanguageModel::Causal(_) => Objective::Causal,
            LanguageModel::Masked(_) => Objective::Masked,
            LanguageModel::Seq2Seq(_) => Objective::Seq2Seq,
        }
    }

    /// The model run block by block (calibration, sequential compression).
    pub fn blocks(&self) -> &dyn Blocks {
        match self {
            LanguageModel::Causal(m) => &**m,
            LanguageModel::Masked(m) => &**m,
            LanguageModel::Seq2Seq(m) => &**m,
        }
    }

    pub fn into_blocks(self) -> Box<dyn Blocks> {
        match self {
            LanguageModel::Causal(m) => m,
            LanguageModel::Masked(m) => m,
            LanguageModel::Seq2Seq(m) => m,
        }
    }

    /// The model as a causal LM, or an error saying that `task` needs one and what this is.
    pub fn causal(&self, task: &str) -> Result<&dyn CausalLm> {
        match self {
            LanguageModel::Causal(m) => Ok(&**m),
            other => Err(other.refuse(task, Objective::Causal)),
        }
    }

    /// [`LanguageModel::causal`], owned.
    pub fn into_causal(self, task: &str) -> Result<Box<dyn CausalLm>> {
        match self {
            LanguageModel::Causal(m) => Ok(m),
            other => Err(other.refuse(task, Objective::Causal)),
        }
    }

    /// The model as a masked LM, or an error saying that `task` needs one and what this is.
    pub fn into_masked(self, task: &str) -> Result<Box<dyn MaskedLm>> {
        match self {
            LanguageModel::Masked(m) => Ok(m),
            other => Err(other.refuse(task, Objective::Masked)),
        }
    }

    /// The error for a `task` that needs a model of objective `needs`.
    pub fn refuse(&self, task: &str, needs: Objective) -> ModelError {
        ModelError::WrongObjective {
            task: task.to_string(),
            family: self.blocks().config().architecture().name(),
            has: self.objective(),
            needs,
        }
    }

    /// The model with its layer-wise passes following `policy` ([`Spilling`]).
    pub fn spilling(self, policy: SpillPolicy) -> LanguageModel {
        match self {
            LanguageModel::Causal(inner) => {
                LanguageModel::Causal(Box::new(Spilling { policy, inner }))
            }
            LanguageModel::Masked(inner) => {
                LanguageModel::Masked(Box::new(Spilling { policy, inner }))
            }
            LanguageModel::Seq2Seq(inner) => {
                LanguageModel::Seq2Seq(Box::new(Spilling { policy, inner }))
            }
        }
    }
}

/// The methods of [`Blocks`], [`CausalLm`], [`MaskedLm`] and [`Seq2SeqLm`], each calling the
/// same method of `(PRE self POST)`: on `Llama` its inherent methods (they win over the trait's),
/// on a box (`**self`) the boxed model's, on a wrapper (`*self.inner`) the wrapped one's.
macro_rules! delegate {
    // A runtime's own `Blocks`: the accessors read its `cfg`, `blocks`, `dtype` and `device`
    // fields; embedding, blocks and head are its inherent methods.
    (Blocks runtime) => {
        fn config(&self) -> &$crate::model::ModelConfig {
            &self.cfg
        }

        fn num_layers(&self) -> usize {
            self.cfg.num_layers
        }

        fn dtype(&self) -> candle_core::DType {
            self.dtype
        }

        fn device(&self) -> &candle_core::Device {
            &self.device
        }

        fn embed(&self, tokens: &candle_core::Tensor) -> $crate::model::Result<candle_core::Tensor> {
            self.embed(tokens)
        }

        fn block_forward(&self, layer: usize, x: &candle_core::Tensor, pos: usize,
            cache: Option<&mut $crate::model::LayerKvCache>,
            capture: Option<$crate::model::Capture<'_>>) -> $crate::model::Result<candle_core::Tensor> {
            self.block_forward(layer, x, pos, cache, capture)
        }

        fn head(&self, x: &candle_core::Tensor) -> $crate::model::Result<candle_core::Tensor> {
            self.head(x)
        }

        fn is_streamed(&self) -> bool {
            self.blocks.is_streamed()
        }

        fn release(&self) {
            self.blocks.release()
        }
    };
    (Blocks [$($pre:tt)*] [$($post:tt)*]) => {
        fn config(&self) -> &ModelConfig {
            ($($pre)* self $($post)*).config()
        }

        fn num_layers(&self) -> usize {
            ($($pre)* self $($post)*).num_layers()
        }

        fn dtype(&self) -> DType {
            ($($pre)* self $($post)*).dtype()
        }

        fn device(&self) -> &Device {
            ($($pre)* self $($post)*).device()
        }

        fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
            ($($pre)* self $($post)*).embed(tokens)
        }

        fn block_forward(&self, layer: usize, x: &Tensor, pos: usize,
            cache: Option<&mut LayerKvCache>, capture: Option<Capture<'_>>) -> Result<Tensor> {
            ($($pre)* self $($post)*).block_forward(layer, x, pos, cache, capture)
        }

        fn head(&self, x: &Tensor) -> Result<Tensor> {
            ($($pre)* self $($post)*).head(x)
        }

        fn is_streamed(&self) -> bool {
            ($($pre)* self $($post)*).is_streamed()
        }

        fn release(&self) {
            ($($pre)* self $($post)*).release()
        }
    };
    (CausalLm [$($pre:tt)*] [$($post:tt)*]) => {
        fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
            ($($pre)* self $($post)*).forward(tokens)
        }

        fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
            ($($pre)* self $($post)*).forward_cached(tokens, cache)
        }
    };
    (MaskedLm [$($pre:tt)*] [$($post:tt)*]) => {
        fn forward_masked(&self, tokens: &Tensor, lengths: &[usize]) -> Result<Tensor> {
            ($($pre)* self $($post)*).forward_masked(tokens, lengths)
        }
    };
    (Seq2SeqLm [$($pre:tt)*] [$($post:tt)*]) => {
        fn encode(&self, src: &Tensor, lengths: &[usize]) -> Result<Tensor> {
            ($($pre)* self $($post)*).encode(src, lengths)
        }

        fn decode(&self, encoded: &Tensor, src_lengths: &[usize], tgt: &Tensor) -> Result<Tensor> {
            ($($pre)* self $($post)*).decode(encoded, src_lengths, tgt)
        }

        fn decoder_start(&self) -> u32 {
            ($($pre)* self $($post)*).decoder_start()
        }
    };
}
pub(crate) use delegate;

/// A boxed model is a model, so `&Box<dyn CausalLm>` goes wherever `&dyn CausalLm` does.
impl<M: Blocks + ?Sized> Blocks for Box<M> {
    delegate!(Blocks [**] []);

    fn spill(&self) -> Option<&SpillPolicy> {
        (**self).spill()
    }
}

impl<M: CausalLm + ?Sized> CausalLm for Box<M> {
    delegate!(CausalLm [**] []);
}

impl<M: MaskedLm + ?Sized> MaskedLm for Box<M> {
    delegate!(MaskedLm [**] []);
}

impl<M: Seq2SeqLm + ?Sized> Seq2SeqLm for Box<M> {
    delegate!(Seq2SeqLm [**] []);
}

impl<M: Blocks + ?Sized> Blocks for Spilling<M> {
    delegate!(Blocks [*] [.inner]);

    fn spill(&self) -> Option<&SpillPolicy> {
        Some(&self.policy)
    }
}

impl<M: CausalLm + ?Sized> CausalLm for Spilling<M> {
    delegate!(CausalLm [*] [.inner]);
}

impl<M: MaskedLm + ?Sized> MaskedLm for Spilling<M> {
    delegate!(MaskedLm [*] [.inner]);
}

impl<M: Seq2SeqLm + ?Sized> Seq2SeqLm for Spilling<M> {
    delegate!(Seq2SeqLm [*] [.inner]);
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
    let mut hidden = final_hidden::<E>(model, ids, "layer-wise pass", tick)?;
    for i in 0..hidden.len() {
        let n = each(i, hidden.take(i)?)?;
        tick(n)?;
    }
    Ok(())
}

/// The final hidden states of every batch of `ids`, computed layer-wise (every batch through
/// block i before block i + 1, `tick(0)` after each block), kept as `model`'s spill policy allows.
pub fn final_hidden<E: From<super::ModelError> + From<crate::cancel::Cancelled>>(
    model: &dyn Blocks,
    ids: &[Tensor],
    what: &str,
    tick: crate::cancel::Tick,
) -> std::result::Result<HiddenStates, E> {
    let mut hidden = hidden_for(model, ids, what)?;
    for i in ids {
        hidden.push(model.embed(i)?)?;
    }
    for layer in 0..model.num_layers() {
        hidden.update(|_, x| model.block_forward(layer, x, 0, None, None))?;
        tick(0)?;
    }
    model.release();
    Ok(hidden)
}

/// Room for the hidden states of every batch of `ids` [batch, seq], as `model`'s spill policy
/// allows. An encoder-decoder's blocks run on [batch, 2·seq, hidden] (T5: the encoder's half and
/// the decoder's, see [`crate::model::T5`]), so its tokens count twice.
pub fn hidden_for(model: &dyn Blocks, ids: &[Tensor], what: &str) -> Result<HiddenStates> {
    let tokens: usize = ids.iter().map(Tensor::elem_count).sum();
    let streams = match model.config().architecture().objective() {
        Objective::Seq2Seq => 2,
        Objective::Causal | Objective::Masked => 1,
    };
    let bytes = tokens * streams * model.config().hidden_size * model.dtype().size_in_bytes();
    HiddenStates::new(model.spill(), bytes as u64, model.device(), what)
}
