//! Reading a checkpoint one tensor at a time: safetensors (single or sharded) by positioned reads
//! of each tensor's bytes, GGUF by dequantizing one tensor. Nothing is memory-mapped, so what a
//! stage holds is what it asked for, and the rest of the checkpoint stays on disk.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use super::checkpoint::{Checkpoint, WeightFiles};
use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::weights::unpermute_rope_rows;

/// A source of a model's tensors by Hugging Face name, each in the model's dtype on its device.
pub trait TensorSource: Send + Sync {
    fn tensor(&self, name: &str) -> Result<Tensor>;

    /// A tensor that a model built on this source holds as long as it lives (the embedding, the
    /// head): a source may keep one copy for every model built on it.
    fn held(&self, name: &str) -> Result<Tensor> {
        self.tensor(name)
    }

    /// Whether the source has a tensor `name` (a tied model's head has none until replaced).
    fn contains(&self, name: &str) -> bool;

    /// The int8 weights of `name` when that linear runs as dynamic int8.
    fn int8(&self, _name: &str) -> Result<Option<crate::compress::dynint8::Int8Weight>> {
        Ok(None)
    }
}

/// Where one safetensors tensor's bytes lie.
#[derive(Debug, Clone)]
struct Slot {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

enum Files {
    Safetensors {
        files: Vec<(PathBuf, File)>,
        slots: HashMap<String, Slot>,
    },
    Gguf {
        path: PathBuf,
        content: gguf_file::Content,
        file: Mutex<std::io::BufReader<File>>,
        cfg: Box<ModelConfig>,
    },
}

/// A checkpoint's weights, opened: every tensor the config implies is known to be present (with
/// its shape, for safetensors) and is read when asked for, converted to `dtype` on `device`.
pub struct CheckpointReader {
    files: Files,
    expected: BTreeMap<String, Vec<usize>>,
    dtype: DType,
    device: Device,
}

impl CheckpointReader {
    pub fn open(
        ckpt: &Checkpoint,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(ModelError::Invalid(format!(
                "weights dtype {dtype:?} is not supported; use f32, f16, bf16 or f64"
            )));
        }
        let expected: BTreeMap<String, Vec<usize>> =
            cfg.architecture().tensors(cfg).into_iter().collect();
        let mut files = match &ckpt.weights {
            WeightFiles::Safetensors(path) => open_safetensors(std::slice::from_ref(path))?,
            WeightFiles::Sharded { shards, .. } => open_safetensors(shards)?,
            WeightFiles::Gguf(path) => open_gguf(path, cfg)?,
        };
        if let Files::Safetensors { slots, .. } = &mut files {
            // A tensor stored under the family's other name is read under the usual one.
            let arch = cfg.architecture();
            for name in expected.keys() {
                if slots.contains_key(name) {
                    continue;
                }
                let alias = arch.checkpoint_alias(name);
                if let Some(slot) = alias.and_then(|a| slots.get(&a).cloned()) {
                    slots.insert(name.clone(), slot);
                }
            }
        }
        let reader = CheckpointReader {
            files,
            expected,
            dtype,
            device: device.clone(),
        };
        reader.check_present()?;
        Ok(reader)
    }

    /// Every tensor the config implies, with its shape.
    pub fn expected(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.expected
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn check_present(&self) -> Result<()> {
        for (name, shape) in &self.expected {
            match &self.files {
                Files::Safetensors { files, slots } => {
                    let Some(slot) = slots.get(name) else {
                        let names: Vec<String> =
                            files.iter().map(|(p, _)| p.display().to_string()).collect();
                        return Err(ModelError::MissingTensor {
                            name: name.clone(),
                            origin: format!("searched {}", names.join(", ")),
                        });
                    };
                    if &slot.shape != shape {
                        return Err(ModelError::ShapeMismatch {
                            name: name.clone(),
                            expected: shape.clone(),
                            got: slot.shape.clone(),
                        });
                    }
                }
                Files::Gguf {
                    path, content, cfg, ..
                } => {
                    let gname = gguf_name(cfg, path, name)?;
                    if !content.tensor_infos.contains_key(&gname) {
                        return Err(ModelError::MissingTensor {
                            name: name.clone(),
                            origin: format!("GGUF name `{gname}` in {}", path.display()),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The tensor as stored (GGUF: dequantized to f32), on `device`.
    fn read_stored(&self, name: &str) -> Result<Tensor> {
        match &self.files {
            Files::Safetensors { files, slots } => {
                let slot = slots.get(name).ok_or_else(|| ModelError::MissingTensor {
                    name: name.to_string(),
                    origin: "not in the checkpoint".into(),
                })?;
                let (path, file) = &files[slot.file];
                let io = |source| ModelError::Io {
                    path: path.clone(),
                    source,
                };
                // Safetensors stores little-endian values: on such a host they are read straight
                // into the buffer the tensor keeps (one pass over fresh memory, not three:
                // zeroed bytes, the read, a copy into the values).
                let le = cfg!(target_endian = "little");
                let (shape, dev) = (slot.shape.as_slice(), &self.device);
                let t = match slot.dtype {
                    DType::F32 if le => {
                        Tensor::from_vec(read_values::<f32>(file, slot).map_err(io)?, shape, dev)
                    }
                    DType::BF16 if le => Tensor::from_vec(
                        read_values::<half::bf16>(file, slot).map_err(io)?,
                        shape,
                        dev,
                    ),
                    DType::F16 if le => Tensor::from_vec(
                        read_values::<half::f16>(file, slot).map_err(io)?,
                        shape,
                        dev,
                    ),
                    _ => {
                        let bytes = read_values::<u8>(file, slot).map_err(io)?;
                        Tensor::from_raw_buffer(&bytes, slot.dtype, shape, dev)
                    }
                };
                t.map_err(|e| ModelError::Weights {
                    path: path.clone(),
                    message: format!("tensor `{name}`: {e}"),
                })
            }
            Files::Gguf {
                path,
                content,
                file,
                cfg,
            } => {
                let werr = |message: String| ModelError::Weights {
                    path: path.clone(),
                    message,
                };
                let gname = gguf_name(cfg, path, name)?;
                let q = {
                    let mut reader = file.lock().map_err(|_| werr("reader poisoned".into()))?;
                    content
                        .tensor(&mut *reader, &gname, &self.device)
                        .map_err(|e| werr(format!("tensor `{gname}`: {e}")))?
                };
                let mut t = q.dequantize(&self.device)?;
                if gname.ends_with(".weight") {
                    if gname.contains(".attn_q.") {
                        t = unpermute_rope_rows(&t, cfg.num_heads)?;
                    } else if gname.contains(".attn_k.") {
                        t = unpermute_rope_rows(&t, cfg.num_kv_heads)?;
                    }
                }
                Ok(t)
            }
        }
    }
}

impl TensorSource for CheckpointReader {
    /// One tensor the config implies, checked against its shape, in the reader's dtype.
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let shape = self
            .expected
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                origin: "not a tensor of this model's config".into(),
            })?;
        let t = self.read_stored(name)?;
        if t.dims() != shape.as_slice() {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: shape.clone(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(self.dtype)?)
    }

    fn contains(&self, name: &str) -> bool {
        self.expected.contains_key(name)
    }
}

fn gguf_name(cfg: &ModelConfig, path: &Path, name: &str) -> Result<String> {
    cfg.architecture()
        .gguf_name(name)
        .ok_or_else(|| ModelError::Weights {
            path: path.to_path_buf(),
            message: format!("no GGUF name for `{name}`"),
        })
}

#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn open_safetensors(paths: &[PathBuf]) -> Result<Files> {
    let mut files = Vec::with_capacity(paths.len());
    let mut slots = HashMap::new();
    for (i, path) in paths.iter().enumerate() {
        let werr = |message: String| ModelError::Weights {
            path: path.clone(),
            message: format!("not a valid safetensors file: {message}"),
        };
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0)
            .map_err(|e| werr(format!("no header ({e})")))?;
        let n = u64::from_le_bytes(n);
        if n > 100 << 20 || 8 + n > len {
            return Err(werr(format!("header length {n} does not fit the file")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| werr(format!("header unreadable ({e})")))?;
        let entries: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| werr(format!("header: {e}")))?;
        let data = 8 + n;
        for (name, value) in entries {
            if name == "__metadata__" {
                continue;
            }
            let e: HeaderEntry =
                serde_json::from_value(value).map_err(|e| werr(format!("tensor `{name}`: {e}")))?;
            let dtype = st_dtype(&e.dtype).ok_or_else(|| {
                werr(format!("tensor `{name}` has unsupported dtype {}", e.dtype))
            })?;
            let [a, b] = e.data_offsets;
            let bytes = e.shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
            if b < a || b - a != bytes || data + b > len {
                return Err(werr(format!(
                    "tensor `{name}`: offsets {a}..{b} do not hold {bytes} bytes inside the file"
                )));
            }
            // The first shard to hold a name wins, as when loading shard by shard.
            slots.entry(name).or_insert(Slot {
                file: i,
                dtype,
                shape: e.shape,
                start: data + a,
                end: data + b,
            });
        }
        files.push((path.clone(), file));
    }
    Ok(Files::Safetensors { files, slots })
}

/// A tensor's stored bytes, read into a buffer of its value type.
fn read_values<T: bytemuck::Pod>(file: &File, slot: &Slot) -> std::io::Result<Vec<T>> {
    let bytes = (slot.end - slot.start) as usize;
    let mut values = vec![T::zeroed(); bytes / std::mem::size_of::<T>()];
    file.read_exact_at(bytemuck::cast_slice_mut(&mut values), slot.start)?;
    Ok(values)
}

fn st_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        _ => return None,
    })
}

fn open_gguf(path: &Path, cfg: &ModelConfig) -> Result<Files> {
    let file = File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = std::io::BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| ModelError::Weights {
        path: path.to_path_buf(),
        message: format!("not a readable GGUF file: {e}"),
    })?;
    Ok(Files::Gguf {
        path: path.to_path_buf(),
        content,
        file: Mutex::new(reader),
        cfg: Box::new(cfg.clone()),
    })
}
