//! Locating the files of a checkpoint directory: config, tokenizer and weights.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::error::{ModelError, Result};

/// Where the weights of a checkpoint live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    /// `model.safetensors`.
    Safetensors(PathBuf),
    /// `model.safetensors.index.json` and the shard files its `weight_map` names (sorted, unique).
    Sharded {
        index: PathBuf,
        shards: Vec<PathBuf>,
    },
    /// A llama.cpp GGUF file (`model.gguf` or the directory's only `*.gguf`).
    Gguf(PathBuf),
}

/// A resolved checkpoint directory: every file exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: WeightFiles,
}

impl Checkpoint {
    /// Finds `config.json`, `tokenizer.json` and the weights in `dir`. Weights are looked for in
    /// this order: `model.safetensors`, `model.safetensors.index.json`, `model.gguf`, `*.gguf`.
    pub fn resolve(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(ModelError::MissingFile {
                dir: dir.clone(),
                what: "checkpoint directory".into(),
                hint: "the path does not exist or is not a directory".into(),
            });
        }
        let config = required(
            &dir,
            "config.json",
            "the model's Hugging Face config is needed",
        )?;
        let tokenizer = required(
            &dir,
            "tokenizer.json",
            "a Hugging Face fast tokenizer file is needed (save it with `tokenizer.save_pretrained`)",
        )?;
        let weights = find_weights(&dir)?;
        Ok(Checkpoint {
            dir,
            config,
            tokenizer,
            weights,
        })
    }

    /// Every file that determines the model: config, tokenizer and all weight files (the shard
    /// index included). The cache hashes these.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = vec![self.config.clone(), self.tokenizer.clone()];
        match &self.weights {
            WeightFiles::Safetensors(p) | WeightFiles::Gguf(p) => out.push(p.clone()),
            WeightFiles::Sharded { index, shards } => {
                out.push(index.clone());
                out.extend(shards.iter().cloned());
            }
        }
        out
    }
}

fn required(dir: &Path, name: &str, hint: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::MissingFile {
            dir: dir.to_path_buf(),
            what: name.into(),
            hint: hint.into(),
        })
    }
}

fn find_weights(dir: &Path) -> Result<WeightFiles> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(WeightFiles::Safetensors(single));
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let shards = shards_of(&index, dir)?;
        return Ok(WeightFiles::Sharded { index, shards });
    }
    let gguf = dir.join("model.gguf");
    if gguf.is_file() {
        return Ok(WeightFiles::Gguf(gguf));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    ggufs.sort();
    match ggufs.len() {
        0 if dir.join("pytorch_model.bin").is_file() => Err(ModelError::Weights {
            path: dir.join("pytorch_model.bin"),
            message: "PyTorch pickle weights are not read (loading them runs code); save the \
                      model as model.safetensors: `model.save_pretrained(dir, \
                      safe_serialization=True)`"
                .into(),
        }),
        0 => Err(ModelError::NoWeights {
            dir: dir.to_path_buf(),
        }),
        1 => Ok(WeightFiles::Gguf(ggufs.remove(0))),
        _ => Err(ModelError::Weights {
            path: dir.to_path_buf(),
            message: format!(
                "{} .gguf files and no model.gguf; keep one or name the one to use model.gguf",
                ggufs.len()
            ),
        }),
    }
}

/// The shard files named by a `model.safetensors.index.json`, each checked to exist.
pub fn shards_of(index: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: index.to_path_buf(),
            source,
        })?;
    let bad = |message: String| ModelError::Weights {
        path: index.to_path_buf(),
        message,
    };
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("has no `weight_map` object".into()))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map[`{tensor}`] is not a file name")))?;
        // Shards must sit beside the index; a path would escape the checkpoint.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!("shard `{file}` is not a plain file name")));
        }
        names.insert(file.to_string());
    }
    if names.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelError::MissingFile {
                    dir: dir.to_path_buf(),
                    what: format!("shard {name}"),
                    hint: format!("{} names it in its weight_map", index.display()),
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn finds_each_weight_layout_and_reports_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let e = Checkpoint::resolve(d).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        touch(d, "config.json", "{}");
        let e = Checkpoint::resolve(d).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        touch(d, "tokenizer.json", "{}");
        let e = Checkpoint::resolve(d).unwrap_err().to_string();
        assert!(e.contains("no weights in") && e.contains("*.gguf"), "{e}");

        touch(d, "a.gguf", "");
        let ck = Checkpoint::resolve(d).unwrap();
        assert_eq!(ck.weights, WeightFiles::Gguf(d.join("a.gguf")));
        touch(d, "b.gguf", "");
        assert!(Checkpoint::resolve(d).is_err());
        touch(d, "model.gguf", "");
        assert_eq!(
            Checkpoint::resolve(d).unwrap().weights,
            WeightFiles::Gguf(d.join("model.gguf"))
        );

        let index = r#"{"metadata": {}, "weight_map": {"a": "s-2.safetensors",
            "b": "s-1.safetensors", "c": "s-2.safetensors"}}"#;
        touch(d, "model.safetensors.index.json", index);
        let e = Checkpoint::resolve(d).unwrap_err().to_string();
        assert!(e.contains("s-1.safetensors"), "{e}");
        touch(d, "s-1.safetensors", "");
        touch(d, "s-2.safetensors", "");
        let ck = Checkpoint::resolve(d).unwrap();
        let shards = vec![d.join("s-1.safetensors"), d.join("s-2.safetensors")];
        assert_eq!(
            ck.files(),
            [
                vec![d.join("config.json"), d.join("tokenizer.json")],
                vec![d.join("model.safetensors.index.json")],
                shards
            ]
            .concat()
        );

        touch(d, "model.safetensors", "");
        let ck = Checkpoint::resolve(d).unwrap();
        assert_eq!(
            ck.weights,
            WeightFiles::Safetensors(d.join("model.safetensors"))
        );
        assert_eq!(ck.files().len(), 3);
    }
}
