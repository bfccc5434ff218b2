//! A Hugging Face `tokenizer.json`, with errors that name the file.

use std::path::{Path, PathBuf};

use super::error::{ModelError, Result};

/// A fast tokenizer loaded from `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
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
        Ok(Tokenizer { inner, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
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
