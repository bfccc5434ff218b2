//! A Hugging Face `tokenizer.json`, with errors that name the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

/// Which library's reading of `tokenizer.json` turns text into token ids: the two differ on
/// some texts (see [`crate::model::check_transformers_class`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerSemantics {
    /// The file as the `tokenizers` library applies it: what transformers 4.x does, and what
    /// the models were trained with.
    #[default]
    Tokenizers,
    /// As transformers 5 rebuilds it from the class named in `tokenizer_config.json`.
    Transformers,
}

impl TokenizerSemantics {
    pub const NAMES: [&'static str; 2] = ["tokenizers", "transformers"];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenizerSemantics::Tokenizers => "tokenizers",
            TokenizerSemantics::Transformers => "transformers",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "tokenizers" => Some(TokenizerSemantics::Tokenizers),
            "transformers" => Some(TokenizerSemantics::Transformers),
            _ => None,
        }
    }

    pub fn is_default(&self) -> bool {
        *self == TokenizerSemantics::default()
    }

    /// The files beside `tokenizer.json` that this reading also depends on.
    pub fn extra_files(self) -> &'static [&'static str] {
        match self {
            TokenizerSemantics::Tokenizers => &[],
            TokenizerSemantics::Transformers => &[
                super::hf_class::CONFIG_FILE,
                super::hf_class::SPECIAL_TOKENS_FILE,
            ],
        }
    }
}

/// A fast tokenizer loaded from `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    semantics: TokenizerSemantics,
    /// The transformers class whose rules rebuilt the file, if any.
    class: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("semantics", &self.semantics)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// `tokenizer.json` as the `tokenizers` library applies it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        Self::load(path, TokenizerSemantics::Tokenizers)
    }

    /// `tokenizer.json` read with `semantics` (the transformers reading also reads
    /// `tokenizer_config.json` and `special_tokens_map.json` beside it).
    pub fn load(path: impl AsRef<Path>, semantics: TokenizerSemantics) -> Result<Tokenizer> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(ModelError::Tokenizer {
                path,
                message: "file not found".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            message: format!("cannot load: {e}"),
        })?;
        let (inner, class) = match semantics {
            TokenizerSemantics::Tokenizers => (inner, None),
            TokenizerSemantics::Transformers => {
                let dir = path.parent().unwrap_or(Path::new("."));
                super::hf_class::rebuild(inner, dir).map_err(|message| ModelError::Tokenizer {
                    path: path.clone(),
                    message: format!("transformers semantics: {message}"),
                })?
            }
        };
        Ok(Tokenizer {
            inner,
            path,
            semantics,
            class,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn semantics(&self) -> TokenizerSemantics {
        self.semantics
    }

    /// The transformers class whose rules rebuilt the file (`None`: applied as written).
    pub fn class(&self) -> Option<&str> {
        self.class.as_deref()
    }

    /// Token ids of `text`. `add_special_tokens` applies the file's post-processor (e.g. the
    /// `<s>` LLaMA tokenizers prepend), exactly as HF's `encode(..., add_special_tokens=...)`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| self.error(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens included (HF's default).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
    }

    /// The text of `ids` with special tokens (`<s>`, `<|im_end|>`, ...) left out.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true)
    }

    fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.error(format!("cannot decode {} ids: {e}", ids.len())))
    }

    /// The id of a token given by its exact vocabulary string (e.g. `"</s>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn error(&self, message: String) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }
}
