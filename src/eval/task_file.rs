//! What every YAML task file shares, whatever its task: reading it, parsing it against a schema,
//! and errors that name the file and the key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::eval::template::{Template, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum TaskFileError {
    #[error("cannot read task file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not fit the task's schema (serde_yaml names the key and the line).
    #[error("task file {origin}: {source}")]
    Yaml {
        origin: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("task file {origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error("task file {origin}: key `{key}`: {source}")]
    Template {
        origin: String,
        key: String,
        #[source]
        source: TemplateError,
    },
}

/// A task file's text and the origin its errors are named by (its path).
pub fn read(path: &Path) -> Result<(String, String), TaskFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TaskFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((text, path.display().to_string()))
}

/// Parses `text` against the schema `T`; `origin` names the file in errors.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, TaskFileError> {
    serde_yaml::from_str(text).map_err(|source| TaskFileError::Yaml {
        origin: origin.to_string(),
        source,
    })
}

/// Builds the errors of one file's semantic checks.
pub struct Checks<'a> {
    pub origin: &'a str,
}

impl Checks<'_> {
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> TaskFileError {
        TaskFileError::Invalid {
            origin: self.origin.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub fn template(&self, key: String, source: &str) -> Result<Template, TaskFileError> {
        Template::parse(source).map_err(|source| TaskFileError::Template {
            origin: self.origin.to_string(),
            key,
            source,
        })
    }
}
