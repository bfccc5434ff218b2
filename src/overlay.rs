//! The packed overlay: the tensors a compression stage replaced, stored compactly.
//!
//! A prune or quantize entry holds one directory, `overlay/`, read on top of the weights of the
//! stage's `model` input:
//!
//! ```text
//! <entry>/overlay/overlay.json     the index: format version, dtype, one record per tensor
//! <entry>/overlay/t0000.bin        one blob per tensor, in `put` order (t0001.bin, …)
//! ```
//!
//! `overlay.json` (format 1):
//!
//! ```json
//! { "format": 1, "dtype": "bf16",
//!   "tensors": [ { "name": "model.layers.0.mlp.up_proj.weight", "file": "t0000.bin",
//!                  "shape": [1536, 576], "bytes": 110616, "blake3": "…64 hex…",
//!                  "encoding": { "kind": "masked" } }, … ] }
//! ```
//!
//! `dtype` is the model's dtype: every tensor is applied in it. Each record names its blob, the
//! blob's exact length and blake3 (checked before decoding, so a damaged file is an error, never
//! wrong weights), the tensor's shape, and its encoding. All numbers in blobs are little-endian;
//! a `mask` is [`Mask::to_bytes`]: `"WMSK"`, version u32, rows u64, cols u64, then
//! `ceil(rows·cols/64)` u64 words, bit `r·cols + c` (LSB first) set where the weight is pruned.
//!
//! | `kind`      | blob                                                            | applied tensor |
//! |-------------|-----------------------------------------------------------------|----------------|
//! | `masked`    | mask                                                            | the tensor beneath, pruned entries set to +0 |
//! | `sparse`    | mask, then the kept values in `dtype`, row-major                | kept values in place, pruned entries +0 |
//! | `quantized` | codes bit-packed at `bits` each, then scales (f32) and zeros (u8), `rows × n_groups` row-major, then `cols` group indices (u32) if `act_order` | `scale·(q − zero)` in f32, cast to `dtype` |
//! | `int8`      | scale (f32), then `rows·cols` codes (i8)                         | `scale·q` in f32, cast to `dtype`; the linear runs as dynamic int8 |
//! | `dense`     | the tensor's values in `dtype`, row-major                       | as stored      |
//!
//! A record with `"transposed": true` holds a weight its family stores as a `Conv1D` (GPT-2):
//! its blob is the nn.Linear view (`out × in`, the layout the kernels and masks work in, so a row
//! is an output feature), and the tensor applied is that matrix transposed, of the record's
//! `shape` (`in × out`, the checkpoint's). A `masked` record reads the tensor beneath transposed
//! the same way. Records of other weights leave the key out.
//!
//! Codes are packed LSB first into one bit stream: code `i` occupies bits `i·bits … i·bits+bits−1`,
//! bit `k` being bit `k mod 8` of byte `k / 8`; padding bits of the last byte are zero. The
//! group of column `c` is `c / group_size` unless group indices are stored (GPTQ act-order).
//! `quantized` records `bits`, `group_size`, `n_groups`, `sym` and `act_order`.
//!
//! A tensor's *deployed* size ([`Overlay::deployed`]) is what it takes in the packed format
//! a reader would ship: its blob for every kind but `masked`, whose kept values live in the
//! tensor beneath; a `masked` tensor deploys as `sparse` (its mask, then its kept values in
//! `dtype`).
//!
//! Applying is exact: the tensors are bit-identical to the dense result the stage computed, which
//! is also what the writer digests for the cache (see [`OverlaySummary::digests`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cache::key::Digest;
use crate::compress::dynint8::Int8Weight;
use crate::compress::{Mask, Matrix, QuantizedMatrix};
use crate::model::{
    is_conv1d, tensor_digest, tensor_or_tied, CheckpointReader, TensorMap, TensorSource,
};

/// The directory of the overlay inside a compression stage's entry.
pub const OVERLAY_DIR: &str = "overlay";
/// The index file inside [`OVERLAY_DIR`].
pub const INDEX_FILE: &str = "overlay.json";
/// The format version this code writes and reads.
pub const FORMAT: u32 = 1;

/// Bytes of a [`Mask::to_bytes`] header: magic, version, rows, cols.
const MASK_HEADER: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("overlay index {} is not valid: {source}; the cache entry is damaged: delete it and rerun `whittle run`", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "overlay {} has format version {found}, but this whittle reads version {FORMAT}: \
         rerun the stage with this whittle (`whittle run`), or use the whittle that wrote it",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error("overlay blob {} (tensor `{tensor}`) is corrupt: {reason}; the cache entry is damaged: delete it and rerun `whittle run`", path.display())]
    Corrupt {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("overlay tensor `{0}` is applied on top of the model's tensor of that name, but the model has none")]
    MissingParent(String),
    #[error("overlay tensor `{name}`: {reason}")]
    Invalid { name: String, reason: String },
    #[error("an overlay holds weights in f32, f16, bf16 or f64, not {0:?}")]
    Dtype(DType),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Checkpoint(Box<crate::model::ModelError>),
}

impl From<crate::model::ModelError> for OverlayError {
    fn from(e: crate::model::ModelError) -> Self {
        OverlayError::Checkpoint(Box::new(e))
    }
}

impl From<OverlayError> for crate::model::ModelError {
    fn from(e: OverlayError) -> Self {
        match e {
            OverlayError::Checkpoint(e) => *e,
            e => crate::model::ModelError::Source(Box::new(e)),
        }
    }
}

type Result<T> = std::result::Result<T, OverlayError>;

/// How a tensor is stored; see the module doc for each blob's layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Encoding {
    Masked,
    Sparse,
    Quantized {
        bits: u32,
        group_size: usize,
        n_groups: usize,
        sym: bool,
        act_order: bool,
    },
    Int8,
    Dense,
}

/// One tensor of the index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub file: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
    pub blake3: Digest,
    pub encoding: Encoding,
    /// The blob holds the transpose of the tensor (see the module doc).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transposed: bool,
}

impl Record {
    /// The shape of the matrix the blob holds.
    fn blob_shape(&self) -> Vec<usize> {
        let mut shape = self.shape.clone();
        if self.transposed {
            shape.reverse();
        }
        shape
    }
}

/// `overlay.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    pub dtype: String,
    pub tensors: Vec<Record>,
}

/// What a finished overlay holds.
#[derive(Clone, Debug, PartialEq)]
pub struct OverlaySummary {
    pub tensors: usize,
    /// Bytes on disk: the blobs and the index.
    pub stored_bytes: u64,
    /// What the same tensors would take dense in f32.
    pub dense_bytes: u64,
    /// The digest ([`tensor_digest`]) of each tensor as applied.
    pub digests: BTreeMap<String, Digest>,
    /// Each tensor's blob size.
    pub stored: BTreeMap<String, u64>,
}

/// A linear layer that runs as PyTorch's dynamic int8: its codes and per-tensor scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Linear {
    pub weight: Int8Weight,
}

impl Int8Linear {
    pub fn scale(&self) -> f32 {
        self.weight.scale
    }

    /// Row-major codes, `rows × cols` (out × in features).
    pub fn codes(&self) -> &[i8] {
        &self.weight.codes
    }

    /// The codes as a `(rows, cols)` tensor of integer values in a float `dtype` (use f64 where
    /// integer dot products must stay exact beyond 2^24).
    pub fn codes_tensor(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = self.weight.codes.iter().map(|&q| f32::from(q)).collect();
        Ok(
            Tensor::from_vec(v, (self.weight.rows, self.weight.cols), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?,
        )
    }
}

/// What applying one overlay did.
#[derive(Debug, Default)]
pub struct AppliedOverlay {
    /// Every tensor name the overlay replaced, in index order.
    pub replaced: Vec<String>,
    /// The replaced linears that run as dynamic int8.
    pub int8: BTreeMap<String, Int8Linear>,
    /// Each replaced tensor's deployed size in bytes (see the module doc).
    pub deployed: BTreeMap<String, u64>,
}

/// Deployed bytes of a `masked` tensor: stored as `sparse`, the mask and the kept values.
fn masked_deployed(mask_bytes: u64, mask: &Mask, dtype: DType) -> u64 {
    let kept = (mask.rows() * mask.cols()).saturating_sub(mask.count());
    mask_bytes + (kept * dtype.size_in_bytes()) as u64
}

/// Writes an overlay directory, one `put` per replaced tensor, then [`OverlayWriter::finish`].
pub struct OverlayWriter {
    dir: PathBuf,
    dtype: DType,
    records: Vec<Record>,
    digests: BTreeMap<String, Digest>,
    stored: u64,
    dense: u64,
}

impl OverlayWriter {
    /// Creates `dir`; tensors will be applied in `dtype` (the model's).
    pub fn new(dir: impl Into<PathBuf>, dtype: DType) -> Result<Self> {
        let dir = dir.into();
        dtype_name(dtype).ok_or(OverlayError::Dtype(dtype))?;
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(Self {
            dir,
            dtype,
            records: Vec::new(),
            digests: BTreeMap::new(),
            stored: 0,
            dense: 0,
        })
    }

    /// Pruned weights whose other values are unchanged: only the mask is stored; `parent` is the
    /// tensor beneath (what the overlay will be applied on).
    ///
    /// Every matrix put (`masked`, `sparse`, `quantized`, `int8`) is in nn.Linear's layout,
    /// `out × in`; a weight its family stores as a `Conv1D` is recorded `transposed`.
    pub fn put_masked(&mut self, name: &str, parent: &Tensor, mask: &Mask) -> Result<()> {
        check_dims(name, parent.dims(), mask.shape())?;
        let blob = mask.to_bytes();
        let decoded = parse_mask(&blob, mask.rows(), mask.cols()).map_err(|r| invalid(name, r))?;
        let dense = zero_pruned(parent, &decoded, self.dtype)?;
        let transposed = is_conv1d(name);
        self.push(
            name,
            mask_shape(mask),
            Encoding::Masked,
            blob,
            &dense,
            transposed,
        )
    }

    /// Pruned and updated weights (SparseGPT): the mask and the kept values of `w`. Pruned
    /// entries are zero whatever `w` holds there.
    pub fn put_sparse(&mut self, name: &str, w: &Matrix, mask: &Mask) -> Result<()> {
        check_dims(name, &[w.rows, w.cols], mask.shape())?;
        let size = self.dtype.size_in_bytes();
        let values = tensor_bytes(&w.to_tensor(&Device::Cpu).map_err(candle)?, self.dtype)?;
        let mut blob = mask.to_bytes();
        blob.reserve((w.numel() - mask.count()) * size);
        for (i, v) in values.chunks_exact(size).enumerate() {
            if !mask.is_pruned(i / w.cols.max(1), i % w.cols.max(1)) {
                blob.extend_from_slice(v);
            }
        }
        let dense = decode_sparse(&blob, w.rows, w.cols, self.dtype)
            .map_err(|reason| invalid(name, reason))?;
        let transposed = is_conv1d(name);
        self.push(
            name,
            mask_shape(mask),
            Encoding::Sparse,
            blob,
            &dense,
            transposed,
        )
    }

    /// Quantized weights: bit-packed codes, scales, zeros and act-order group indices.
    pub fn put_quantized(&mut self, name: &str, q: &QuantizedMatrix) -> Result<()> {
        let n = q.rows * q.cols;
        let n_groups = q.scales.len().checked_div(q.rows).unwrap_or(0);
        let encoding = Encoding::Quantized {
            bits: q.bits,
            group_size: q.group_size,
            n_groups,
            sym: q.sym,
            act_order: q.group_index.is_some(),
        };
        if !(1..=8).contains(&q.bits) {
            return Err(invalid(
                name,
                format!("{} bits per code (1..=8 are stored)", q.bits),
            ));
        }
        if q.codes.len() != n
            || q.zeros.len() != q.scales.len()
            || n_groups * q.rows != q.scales.len()
        {
            return Err(invalid(
                name,
                "codes, scales and zeros do not match the shape".into(),
            ));
        }
        let maxq = (1u16 << q.bits) - 1;
        if let Some(i) = q.codes.iter().position(|&c| u16::from(c) > maxq) {
            return Err(invalid(
                name,
                format!("code {} at {i} exceeds {} bits", q.codes[i], q.bits),
            ));
        }
        let mut blob = pack_codes(&q.codes, q.bits);
        q.scales
            .iter()
            .for_each(|s| blob.extend_from_slice(&s.to_le_bytes()));
        blob.extend_from_slice(&q.zeros);
        if let Some(g) = &q.group_index {
            g.iter()
                .for_each(|i| blob.extend_from_slice(&i.to_le_bytes()));
        }
        let shape = vec![q.rows, q.cols];
        let dense = decode_quantized(&blob, &shape, &encoding, self.dtype)
            .map_err(|reason| invalid(name, reason))?;
        self.push(name, shape, encoding, blob, &dense, is_conv1d(name))
    }

    /// A dynamic-int8 linear: per-tensor scale and int8 codes.
    pub fn put_int8(&mut self, name: &str, w: &Int8Weight) -> Result<()> {
        let shape = vec![w.rows, w.cols];
        let mut blob = w.scale.to_le_bytes().to_vec();
        blob.extend(w.codes.iter().map(|&c| c as u8));
        let (dense, _) =
            decode_int8(&blob, &shape, self.dtype).map_err(|reason| invalid(name, reason))?;
        self.push(name, shape, Encoding::Int8, blob, &dense, is_conv1d(name))
    }

    /// Any tensor, stored as is (in the overlay's dtype and the checkpoint's layout).
    pub fn put_dense(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let blob = tensor_bytes(t, self.dtype)?;
        let shape = t.dims().to_vec();
        let dense =
            decode_dense(&blob, &shape, self.dtype).map_err(|reason| invalid(name, reason))?;
        self.push(name, shape, Encoding::Dense, blob, &dense, false)
    }

    /// The digests of the tensors put so far, as they will be applied.
    pub fn digests(&self) -> &BTreeMap<String, Digest> {
        &self.digests
    }

    /// Stores `blob`, which decodes to `dense` of `shape`; when `transposed`, the tensor applied
    /// is `dense` transposed.
    fn push(
        &mut self,
        name: &str,
        mut shape: Vec<usize>,
        encoding: Encoding,
        blob: Vec<u8>,
        dense: &Tensor,
        transposed: bool,
    ) -> Result<()> {
        if self.digests.contains_key(name) {
            return Err(invalid(name, "put twice in one overlay".into()));
        }
        let applied;
        let dense = if transposed {
            shape.reverse();
            applied = dense.t()?.contiguous()?;
            &applied
        } else {
            dense
        };
        let file = format!("t{:04}.bin", self.records.len());
        let path = self.dir.join(&file);
        std::fs::write(&path, &blob).map_err(io("writing", &path))?;
        let digest = tensor_digest(dense).map_err(|e| invalid(name, e.to_string()))?;
        self.digests.insert(name.to_string(), digest);
        self.stored += blob.len() as u64;
        self.dense += (shape.iter().product::<usize>() * 4) as u64;
        self.records.push(Record {
            name: name.to_string(),
            file,
            shape,
            bytes: blob.len() as u64,
            blake3: Digest::of_bytes(&blob),
            encoding,
            transposed,
        });
        Ok(())
    }

    /// The dtype tensors are applied in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Writes the index and reports what the overlay holds.
    pub fn finish(self) -> Result<OverlaySummary> {
        let index = Index {
            format: FORMAT,
            dtype: dtype_name(self.dtype).expect("checked in new").to_string(),
            tensors: self.records,
        };
        let text = serde_json::to_string_pretty(&index).expect("the index serializes") + "\n";
        let path = self.dir.join(INDEX_FILE);
        std::fs::write(&path, &text).map_err(io("writing", &path))?;
        Ok(OverlaySummary {
            tensors: index.tensors.len(),
            stored_bytes: self.stored + text.len() as u64,
            dense_bytes: self.dense,
            stored: index
                .tensors
                .iter()
                .map(|r| (r.name.clone(), r.bytes))
                .collect(),
            digests: self.digests,
        })
    }
}

/// An overlay directory, its index read and checked.
#[derive(Debug)]
pub struct Overlay {
    dir: PathBuf,
    index: Index,
    dtype: DType,
}

impl Overlay {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
        // The version first, so a newer layout is reported as such rather than as bad JSON.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_str(&text).map_err(|source| OverlayError::Json {
            path: path.clone(),
            source,
        })?;
        if head.format != FORMAT {
            return Err(OverlayError::Version {
                path,
                found: head.format,
            });
        }
        let index: Index = serde_json::from_str(&text).map_err(|source| OverlayError::Json {
            path: path.clone(),
            source,
        })?;
        let corrupt = |tensor: &str, reason: String| OverlayError::Corrupt {
            path: path.clone(),
            tensor: tensor.to_string(),
            reason,
        };
        let dtype = parse_dtype(&index.dtype)
            .ok_or_else(|| corrupt("(index)", format!("unknown dtype `{}`", index.dtype)))?;
        for r in &index.tensors {
            let plain = !r.file.is_empty()
                && r.file
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
                && !r.file.starts_with('.');
            if !plain {
                return Err(corrupt(
                    &r.name,
                    format!("blob name `{}` is not a plain file name", r.file),
                ));
            }
        }
        Ok(Self { dir, index, dtype })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The blob of `r`, checked against the size and digest the index records.
    fn blob(&self, r: &Record) -> Result<Vec<u8>> {
        let path = self.dir.join(&r.file);
        let blob = std::fs::read(&path).map_err(io("reading", &path))?;
        if blob.len() as u64 != r.bytes {
            let reason = format!("{} bytes, the index says {}", blob.len(), r.bytes);
            return Err(self.corrupt(r, reason));
        }
        if Digest::of_bytes(&blob) != r.blake3 {
            let reason = "its blake3 digest does not match the index".into();
            return Err(self.corrupt(r, reason));
        }
        Ok(blob)
    }

    fn corrupt(&self, r: &Record, reason: String) -> OverlayError {
        OverlayError::Corrupt {
            path: self.dir.join(&r.file),
            tensor: r.name.clone(),
            reason,
        }
    }

    /// Replaces the overlay's tensors in `tensors` (on `device`); `masked` tensors apply on top of
    /// the tensor already there.
    pub fn apply(&self, tensors: &mut TensorMap, device: &Device) -> Result<AppliedOverlay> {
        let mut out = AppliedOverlay::default();
        for r in &self.index.tensors {
            // A tied model's LM head is its embedding until something replaces it.
            let parent = tensor_or_tied(tensors, &r.name);
            let decoded = self.decode(r, parent)?;
            if let Some(w) = decoded.int8 {
                out.int8.insert(r.name.clone(), Int8Linear { weight: w });
            }
            out.deployed.insert(r.name.clone(), decoded.deployed);
            tensors.insert(r.name.clone(), decoded.tensor.to_device(device)?);
            out.replaced.push(r.name.clone());
        }
        Ok(out)
    }

    /// Record `r` applied on `parent` (the tensor beneath, which only `masked` reads).
    fn decode(&self, r: &Record, parent: Option<&Tensor>) -> Result<Decoded> {
        let blob = self.blob(r)?;
        let corrupt = |reason: String| self.corrupt(r, reason);
        if r.transposed {
            check_shape(&r.shape, 2).map_err(&corrupt)?;
        }
        let shape = r.blob_shape();
        let mut deployed = r.bytes;
        let mut int8 = None;
        let tensor = match &r.encoding {
            Encoding::Masked => {
                let parent = parent.ok_or_else(|| OverlayError::MissingParent(r.name.clone()))?;
                check_shape(&shape, 2).map_err(&corrupt)?;
                if parent.dims() != r.shape.as_slice() {
                    return Err(invalid(
                        &r.name,
                        format!(
                            "the mask is {:?} but the model's tensor is {:?}",
                            r.shape,
                            parent.dims()
                        ),
                    ));
                }
                let parent = if r.transposed {
                    parent.t()?.contiguous()?
                } else {
                    parent.clone()
                };
                let mask = parse_mask(&blob, shape[0], shape[1]).map_err(&corrupt)?;
                deployed = masked_deployed(r.bytes, &mask, self.dtype);
                zero_pruned(&parent, &mask, self.dtype)?
            }
            Encoding::Sparse => {
                check_shape(&shape, 2).map_err(&corrupt)?;
                decode_sparse(&blob, shape[0], shape[1], self.dtype).map_err(&corrupt)?
            }
            e @ Encoding::Quantized { .. } => {
                decode_quantized(&blob, &shape, e, self.dtype).map_err(&corrupt)?
            }
            Encoding::Int8 => {
                let (t, w) = decode_int8(&blob, &shape, self.dtype).map_err(&corrupt)?;
                int8 = Some(w);
                t
            }
            Encoding::Dense => decode_dense(&blob, &shape, self.dtype).map_err(&corrupt)?,
        };
        let tensor = if r.transposed {
            tensor.t()?.contiguous()?
        } else {
            tensor
        };
        Ok(Decoded {
            tensor,
            int8,
            deployed,
        })
    }

    /// Each tensor's deployed size in bytes (see the module doc), without applying anything:
    /// only `masked` blobs are read (and checked against the index).
    pub fn deployed(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for r in &self.index.tensors {
            let bytes = match r.encoding {
                Encoding::Masked => {
                    let blob = self.blob(r)?;
                    let corrupt = |reason: String| self.corrupt(r, reason);
                    let shape = r.blob_shape();
                    check_shape(&shape, 2).map_err(&corrupt)?;
                    let mask = parse_mask(&blob, shape[0], shape[1]).map_err(&corrupt)?;
                    masked_deployed(r.bytes, &mask, self.dtype)
                }
                _ => r.bytes,
            };
            out.insert(r.name.clone(), bytes);
        }
        Ok(out)
    }
}

/// One record applied.
struct Decoded {
    tensor: Tensor,
    int8: Option<Int8Weight>,
    deployed: u64,
}

/// A checkpoint with a chain of overlays on top, read one tensor at a time: each tensor is read
/// from the checkpoint and every overlay that replaced it is applied in order, in the reader's
/// dtype on its device. Tensors put with [`ChainSource::set`] win over both (a sequential stage's
/// replacements of the block it is working on).
pub struct ChainSource {
    base: CheckpointReader,
    overlays: Vec<Overlay>,
    /// For each replaced tensor: (overlay, record) pairs, innermost first.
    records: BTreeMap<String, Vec<(usize, usize)>>,
    set: std::sync::RwLock<TensorMap>,
    /// What models built on this source hold for their lifetime, read once.
    held: std::sync::Mutex<TensorMap>,
}

impl ChainSource {
    pub fn new(base: CheckpointReader, overlays: Vec<Overlay>) -> Self {
        let mut records: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for (o, overlay) in overlays.iter().enumerate() {
            for (i, r) in overlay.index.tensors.iter().enumerate() {
                records.entry(r.name.clone()).or_default().push((o, i));
            }
        }
        ChainSource {
            base,
            overlays,
            records,
            set: Default::default(),
            held: Default::default(),
        }
    }

    pub fn reader(&self) -> &CheckpointReader {
        &self.base
    }

    /// Every tensor name the chain holds: the checkpoint's and the overlays'.
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let mut names: std::collections::BTreeSet<String> =
            self.base.expected().keys().cloned().collect();
        names.extend(self.records.keys().cloned());
        names
    }

    /// Every tensor's name and shape.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let mut out = self.base.expected().clone();
        for overlay in &self.overlays {
            for r in &overlay.index.tensors {
                out.insert(r.name.clone(), r.shape.clone());
            }
        }
        out
    }

    /// Each replaced tensor's deployed size, from the overlay that replaced it last.
    pub fn deployed(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for overlay in &self.overlays {
            out.extend(overlay.deployed()?);
        }
        Ok(out)
    }

    /// Makes `tensors` what [`TensorSource::tensor`] returns for their names.
    pub fn set(&self, tensors: TensorMap) {
        if let Ok(mut set) = self.set.write() {
            set.extend(tensors);
        }
    }

    /// Forgets everything [`ChainSource::set`] put.
    pub fn clear(&self) {
        if let Ok(mut set) = self.set.write() {
            set.clear();
        }
    }

    fn applied(&self, name: &str) -> Result<(Tensor, Option<Int8Weight>)> {
        let records = self.records.get(name).map_or(&[][..], Vec::as_slice);
        let masked = |&(o, i): &(usize, usize)| {
            matches!(self.overlays[o].index.tensors[i].encoding, Encoding::Masked)
        };
        // A record that replaces the tensor whole makes everything beneath it unread: start
        // there, and read the checkpoint only when a mask applies to it.
        let records = &records[records.iter().rposition(|r| !masked(r)).unwrap_or(0)..];
        let from_base = |name: &str| -> Result<Option<Tensor>> {
            if self.base.expected().contains_key(name) {
                Ok(Some(self.base.tensor(name)?))
            } else {
                Ok(None)
            }
        };
        let mut current = match records.first() {
            Some(r) if !masked(r) => None,
            _ => from_base(name)?,
        };
        if current.is_none() && records.is_empty() {
            return Err(OverlayError::MissingParent(name.to_string()));
        }
        let mut int8 = None;
        for &(o, i) in records {
            let overlay = &self.overlays[o];
            let r = &overlay.index.tensors[i];
            let parent = match &current {
                Some(t) => Some(t.clone()),
                // A tied model's LM head is its embedding until something replaces it.
                None => crate::model::family::tied_parent(name, &|e| {
                    self.base.expected().contains_key(e)
                })
                .map(from_base)
                .transpose()?
                .flatten(),
            };
            let d = overlay.decode(r, parent.as_ref())?;
            int8 = d.int8;
            current = Some(d.tensor);
        }
        let t = current.ok_or_else(|| OverlayError::MissingParent(name.to_string()))?;
        Ok((
            t.to_dtype(self.base.dtype())?
                .to_device(self.base.device())?,
            int8,
        ))
    }
}

impl TensorSource for ChainSource {
    fn tensor(&self, name: &str) -> crate::model::Result<Tensor> {
        if let Some(t) = self.set.read().ok().and_then(|s| s.get(name).cloned()) {
            return Ok(t);
        }
        Ok(self.applied(name)?.0)
    }

    fn held(&self, name: &str) -> crate::model::Result<Tensor> {
        if self.set.read().is_ok_and(|s| s.contains_key(name)) {
            return self.tensor(name);
        }
        let mut held = self
            .held
            .lock()
            .map_err(|_| crate::model::ModelError::Invalid("tensor memo poisoned".into()))?;
        if let Some(t) = held.get(name) {
            return Ok(t.clone());
        }
        let t = self.tensor(name)?;
        held.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.base.expected().contains_key(name) || self.records.contains_key(name)
    }

    fn int8(&self, name: &str) -> crate::model::Result<Option<Int8Weight>> {
        let last_int8 = self
            .records
            .get(name)
            .and_then(|r| r.last())
            .is_some_and(|&(o, i)| {
                matches!(self.overlays[o].index.tensors[i].encoding, Encoding::Int8)
            });
        if !last_int8 || self.set.read().is_ok_and(|s| s.contains_key(name)) {
            return Ok(None);
        }
        Ok(self.applied(name)?.1)
    }
}

/// What a chain of overlays, applied in order, leaves besides the tensors.
#[derive(Debug, Default)]
pub struct AppliedChain {
    /// The linears that run as dynamic int8: those whose last replacement was `int8`.
    pub int8: BTreeMap<String, Int8Linear>,
    /// Each replaced tensor's deployed size in bytes, from the overlay that replaced it last.
    pub deployed: BTreeMap<String, u64>,
}

/// Applies `overlays` in order (innermost first) to `tensors`.
pub fn apply_chain(
    overlays: &[Overlay],
    tensors: &mut TensorMap,
    device: &Device,
) -> Result<AppliedChain> {
    let mut out = AppliedChain::default();
    for overlay in overlays {
        let applied = overlay.apply(tensors, device)?;
        // A later overlay's tensor is what runs, whatever an earlier one marked.
        for name in &applied.replaced {
            out.int8.remove(name);
        }
        out.int8.extend(applied.int8);
        out.deployed.extend(applied.deployed);
    }
    Ok(out)
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OverlayError {
    let path = path.to_path_buf();
    move |source| OverlayError::Io {
        context,
        path,
        source,
    }
}

fn invalid(name: &str, reason: String) -> OverlayError {
    OverlayError::Invalid {
        name: name.to_string(),
        reason,
    }
}

fn candle(e: crate::compress::CompressError) -> OverlayError {
    match e {
        crate::compress::CompressError::Candle(e) => OverlayError::Candle(e),
        other => OverlayError::Candle(candle_core::Error::Msg(other.to_string())),
    }
}

fn dtype_name(d: DType) -> Option<&'static str> {
    match d {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Some(d.as_str()),
        _ => None,
    }
}

fn parse_dtype(s: &str) -> Option<DType> {
    [DType::F32, DType::F16, DType::BF16, DType::F64]
        .into_iter()
        .find(|d| d.as_str() == s)
}

fn mask_shape(m: &Mask) -> Vec<usize> {
    vec![m.rows(), m.cols()]
}

fn check_dims(name: &str, dims: &[usize], mask: (usize, usize)) -> Result<()> {
    if dims != [mask.0, mask.1] {
        return Err(invalid(
            name,
            format!("the mask is {mask:?} but the weight is {dims:?}"),
        ));
    }
    Ok(())
}

fn check_shape(shape: &[usize], rank: usize) -> std::result::Result<(), String> {
    if shape.len() != rank {
        return Err(format!("shape {shape:?} should have rank {rank}"));
    }
    Ok(())
}

/// `rows·cols…` without overflow (a damaged index must not panic).
fn numel(shape: &[usize]) -> std::result::Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))
}

/// The little-endian bytes of `t` converted to `dtype`, row-major.
fn tensor_bytes(t: &Tensor, dtype: DType) -> Result<Vec<u8>> {
    let t = t.to_dtype(dtype)?.to_device(&Device::Cpu)?;
    let mut out = Vec::with_capacity(t.elem_count() * dtype.size_in_bytes());
    t.write_bytes(&mut out)?;
    Ok(out)
}

fn bytes_tensor(bytes: &[u8], dtype: DType, shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_raw_buffer(bytes, dtype, shape, &Device::Cpu)
}

fn parse_mask(blob: &[u8], rows: usize, cols: usize) -> std::result::Result<Mask, String> {
    let mask = Mask::from_bytes(blob).map_err(|e| e.to_string())?;
    if mask.shape() != (rows, cols) {
        return Err(format!(
            "the mask is {:?}, the index says {:?}",
            mask.shape(),
            (rows, cols)
        ));
    }
    Ok(mask)
}

/// `parent` in `dtype` with the pruned entries set to +0, on `parent`'s device.
fn zero_pruned(parent: &Tensor, mask: &Mask, dtype: DType) -> Result<Tensor> {
    let (rows, cols) = mask.shape();
    let words = mask.words();
    let flags: Vec<u8> = (0..rows * cols)
        .into_par_iter()
        .map(|i| (words[i / 64] >> (i % 64) & 1) as u8)
        .collect();
    let device = parent.device();
    let pruned = Tensor::from_vec(flags, (rows, cols), device)?;
    let parent = parent.to_dtype(dtype)?;
    // `where_cond` writes +0 exactly; multiplying by a 0/1 mask would turn negatives into −0.
    Ok(pruned.where_cond(&parent.zeros_like()?, &parent)?)
}

fn decode_sparse(
    blob: &[u8],
    rows: usize,
    cols: usize,
    dtype: DType,
) -> std::result::Result<Tensor, String> {
    let n = numel(&[rows, cols])?;
    let mask_len = MASK_HEADER + n.div_ceil(64) * 8;
    if blob.len() < mask_len {
        return Err(format!("{} bytes, shorter than its mask", blob.len()));
    }
    let mask = parse_mask(&blob[..mask_len], rows, cols)?;
    let size = dtype.size_in_bytes();
    let values = &blob[mask_len..];
    if values.len() != (n - mask.count()) * size {
        return Err(format!(
            "{} bytes of kept values, the mask keeps {} {dtype:?} values",
            values.len(),
            n - mask.count()
        ));
    }
    // Zero bytes are +0 in every float format.
    let mut dense = vec![0u8; n * size];
    let mut kept = values.chunks_exact(size);
    for (i, slot) in dense.chunks_exact_mut(size).enumerate() {
        if mask.words()[i / 64] >> (i % 64) & 1 == 0 {
            slot.copy_from_slice(kept.next().expect("counted above"));
        }
    }
    bytes_tensor(&dense, dtype, &[rows, cols]).map_err(|e| e.to_string())
}

/// Packs codes below `2^bits` LSB first; 8 codes fill exactly `bits` bytes.
pub fn pack_codes(codes: &[u8], bits: u32) -> Vec<u8> {
    let bits = bits as usize;
    let mut out = vec![0u8; (codes.len() * bits).div_ceil(8)];
    out.par_chunks_mut(bits)
        .zip(codes.par_chunks(8))
        .for_each(|(bytes, eight)| {
            let mut acc = 0u64;
            for (k, &c) in eight.iter().enumerate() {
                acc |= u64::from(c) << (k * bits);
            }
            let le = acc.to_le_bytes();
            bytes.copy_from_slice(&le[..bytes.len()]);
        });
    out
}

/// The inverse of [`pack_codes`] for `n` codes; the packed length must match.
pub fn unpack_codes(packed: &[u8], bits: u32, n: usize) -> Vec<u8> {
    let bits = bits as usize;
    let mask = (1u64 << bits) - 1;
    let mut out = vec![0u8; n];
    out.par_chunks_mut(8)
        .zip(packed.par_chunks(bits))
        .for_each(|(eight, bytes)| {
            let mut le = [0u8; 8];
            le[..bytes.len()].copy_from_slice(bytes);
            let acc = u64::from_le_bytes(le);
            for (k, c) in eight.iter_mut().enumerate() {
                *c = (acc >> (k * bits) & mask) as u8;
            }
        });
    out
}

fn decode_quantized(
    blob: &[u8],
    shape: &[usize],
    encoding: &Encoding,
    dtype: DType,
) -> std::result::Result<Tensor, String> {
    let &Encoding::Quantized {
        bits,
        group_size,
        n_groups,
        sym,
        act_order,
    } = encoding
    else {
        unreachable!("called for quantized records only")
    };
    check_shape(shape, 2)?;
    let (rows, cols) = (shape[0], shape[1]);
    if !(1..=8).contains(&bits) {
        return Err(format!("{bits} bits per code"));
    }
    let n = numel(shape)?;
    let params = numel(&[rows, n_groups])?;
    let packed = (n / 8) * bits as usize + (n % 8 * bits as usize).div_ceil(8);
    let index_bytes = if act_order {
        cols.checked_mul(4).ok_or("overflow")?
    } else {
        0
    };
    let expected = params
        .checked_mul(5)
        .and_then(|p| p.checked_add(packed))
        .and_then(|p| p.checked_add(index_bytes))
        .ok_or("sizes overflow")?;
    if blob.len() != expected {
        return Err(format!(
            "{} bytes, a {rows}x{cols} {bits}-bit matrix with {n_groups} groups per row takes {expected}",
            blob.len()
        ));
    }
    let codes = unpack_codes(&blob[..packed], bits, n);
    let tail_bits = n % 8 * bits as usize;
    if !tail_bits.is_multiple_of(8) && blob[packed - 1] >> (tail_bits % 8) != 0 {
        return Err("padding bits after the last code are set".into());
    }
    let mut at = packed;
    let scales: Vec<f32> = blob[at..at + params * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    at += params * 4;
    let zeros = blob[at..at + params].to_vec();
    at += params;
    let group_index = act_order.then(|| {
        blob[at..]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect::<Vec<u32>>()
    });
    match &group_index {
        Some(g) => {
            if let Some(c) = g.iter().position(|&i| i as usize >= n_groups) {
                return Err(format!("column {c} is in group {}, of {n_groups}", g[c]));
            }
        }
        None => {
            if rows > 0 && cols > 0 && (group_size == 0 || cols.div_ceil(group_size) != n_groups) {
                return Err(format!(
                    "{n_groups} groups per row do not fit {cols} columns in groups of {group_size}"
                ));
            }
        }
    }
    let q = QuantizedMatrix {
        rows,
        cols,
        bits,
        sym,
        group_size,
        codes,
        scales,
        zeros,
        group_index,
    };
    let m = q.dequantize();
    bytes_f32(&m.data, shape, dtype)
}

fn bytes_f32(data: &[f32], shape: &[usize], dtype: DType) -> std::result::Result<Tensor, String> {
    Tensor::from_slice(data, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(|e| e.to_string())
}

fn decode_int8(
    blob: &[u8],
    shape: &[usize],
    dtype: DType,
) -> std::result::Result<(Tensor, Int8Weight), String> {
    check_shape(shape, 2)?;
    let n = numel(shape)?;
    if blob.len() != n.checked_add(4).ok_or("overflow")? {
        return Err(format!(
            "{} bytes, a {}x{} int8 matrix takes {}",
            blob.len(),
            shape[0],
            shape[1],
            n + 4
        ));
    }
    let w = Int8Weight {
        rows: shape[0],
        cols: shape[1],
        scale: f32::from_le_bytes(blob[..4].try_into().expect("4 bytes")),
        codes: blob[4..].iter().map(|&b| b as i8).collect(),
    };
    let t = bytes_f32(&w.dequantize().data, shape, dtype)?;
    Ok((t, w))
}

fn decode_dense(blob: &[u8], shape: &[usize], dtype: DType) -> std::result::Result<Tensor, String> {
    let n = numel(shape)?;
    if Some(blob.len()) != n.checked_mul(dtype.size_in_bytes()) {
        return Err(format!(
            "{} bytes, a {shape:?} {dtype:?} tensor takes {}",
            blob.len(),
            n * dtype.size_in_bytes()
        ));
    }
    bytes_tensor(blob, dtype, shape).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_by_hand() {
        // 3-bit codes 5, 2, 7: bits 101 | 010 | 111 LSB first -> 0b1_010_101 = 0xD5, then 0b11.
        assert_eq!(pack_codes(&[5, 2, 7], 3), vec![0xD5, 0x01]);
        assert_eq!(unpack_codes(&[0xD5, 0x01], 3, 3), vec![5, 2, 7]);
        // 4-bit: two codes per byte, low nibble first.
        assert_eq!(pack_codes(&[0x3, 0xA, 0xF], 4), vec![0xA3, 0x0F]);
        for bits in 1..=8u32 {
            let codes: Vec<u8> = (0..37u32)
                .map(|i| ((i * 7 + 3) % (1 << bits)) as u8)
                .collect();
            let packed = pack_codes(&codes, bits);
            assert_eq!(packed.len(), (37 * bits as usize).div_ceil(8));
            assert_eq!(unpack_codes(&packed, bits, 37), codes, "{bits} bits");
        }
    }

    /// A GPT-2 `Conv1D` weight: the matrices put are its nn.Linear view (out × in), the record
    /// says so, and what is applied is in the checkpoint's layout (in × out).
    #[test]
    fn conv1d_records_hold_the_linear_view_and_apply_in_the_checkpoints_layout() {
        let dev = Device::Cpu;
        let (masked, int8) = (
            "transformer.h.0.mlp.c_fc.weight",
            "transformer.h.0.attn.c_proj.weight",
        );
        // Stored in × out = 3 × 4; the nn.Linear view is 4 × 3.
        let stored = Tensor::arange(1f32, 13., &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let linear = stored.t().unwrap().contiguous().unwrap();
        // Prune the first entry of each output row of the view: stored column c, row 0.
        let mask = Mask::from_fn(4, 3, |_, c| c == 0);
        let q = crate::compress::dynint8::quantize_weight(&Matrix::from_tensor(&linear).unwrap())
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("o");
        let mut w = OverlayWriter::new(&dir, DType::F32).unwrap();
        w.put_masked(masked, &linear, &mask).unwrap();
        w.put_int8(int8, &q).unwrap();
        w.put_masked("lm_head.weight", &linear, &mask).unwrap();
        let summary = w.finish().unwrap();

        let index = std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&index).unwrap();
        let records = json["tensors"].as_array().unwrap();
        assert_eq!(records[0]["transposed"], true);
        assert_eq!(records[0]["shape"], serde_json::json!([3, 4]));
        assert_eq!(records[1]["transposed"], true);
        // Other weights leave the key out: their indexes are as before.
        assert!(records[2].get("transposed").is_none(), "{index}");
        assert_eq!(records[2]["shape"], serde_json::json!([4, 3]));

        let overlay = Overlay::open(&dir).unwrap();
        let mut tensors = TensorMap::new();
        tensors.insert(masked.to_string(), stored.clone());
        tensors.insert(int8.to_string(), stored.clone());
        tensors.insert("lm_head.weight".to_string(), linear.clone());
        let applied = overlay.apply(&mut tensors, &dev).unwrap();
        let got: Vec<Vec<f32>> = tensors[masked].to_vec2().unwrap();
        assert_eq!(
            got,
            [[0., 0., 0., 0.], [5., 6., 7., 8.], [9., 10., 11., 12.]]
        );
        // The int8 linear runs in nn.Linear's layout; its dense weight is in the checkpoint's.
        let lin = &applied.int8[int8].weight;
        assert_eq!((lin.rows, lin.cols), (4, 3));
        assert_eq!(tensors[int8].dims(), [3, 4]);
        let deq: Vec<f32> = q.dequantize().data;
        let back: Vec<f32> = tensors[int8]
            .t()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(back, deq);
        // The digests the writer recorded are those of the tensors as applied.
        for name in [masked, int8] {
            assert_eq!(
                summary.digests[name],
                tensor_digest(&tensors[name]).unwrap()
            );
        }
    }
}
