//! The keys of a `load` stage.

use super::{DType, LoadSpec};
use crate::pipeline::fields::Fields;

pub(super) fn read(f: &mut Fields) -> Option<LoadSpec> {
    let model = f.name_in("model", f.env.models, "models");
    let dtype = match f.choice("dtype", &DType::NAMES) {
        Some("f16") => DType::F16,
        Some("bf16") => DType::Bf16,
        _ => DType::F32,
    };
    let tokenizer_semantics = f
        .choice(
            "tokenizer_semantics",
            &crate::model::TokenizerSemantics::NAMES,
        )
        .and_then(crate::model::TokenizerSemantics::from_name)
        .unwrap_or_default();
    // A tokenizer class the transformers reading cannot rebuild is a pipeline error, not a
    // failure at run time.
    let source = model.as_ref().and_then(|m| f.env.model_sources.get(m));
    if let (crate::model::TokenizerSemantics::Transformers, Some(source)) =
        (tokenizer_semantics, source)
    {
        if let Err(e) = crate::model::check_transformers_class(&source.dir) {
            f.fail_key(
                "tokenizer_semantics",
                format!("model `{}`: {e}", source.name),
                "`transformers` knows LlamaTokenizer and GPT2Tokenizer; leave the key out to \
                 read tokenizer.json as the `tokenizers` library does"
                    .into(),
            );
        }
    }
    Some(LoadSpec {
        model: model?,
        dtype,
        tokenizer_semantics,
    })
}
