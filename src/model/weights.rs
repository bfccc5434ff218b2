//! Loading a checkpoint's tensors under their Hugging Face names, from safetensors or GGUF.
//!
//! Only the tensors the config implies are loaded (extra entries such as `rotary_emb.inv_freq`
//! are ignored); a missing one is an error naming it and the file searched.

use std::collections::BTreeMap;
use std::io::Write;

use candle_core::{DType, Device, Tensor};

use super::checkpoint::Checkpoint;
use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::reader::{CheckpointReader, TensorSource};
use crate::cache::key::Digest;

/// Tensors by Hugging Face name, in a stable order.
pub type TensorMap = BTreeMap<String, Tensor>;

/// The tensors a config implies, by HF name, with their expected shapes (its family's).
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    cfg.architecture().tensors(cfg)
}

/// Loads every tensor the config implies, converted to `dtype` (f32, f16 or bf16; f64 for
/// high-precision reference runs) on `device`, one tensor at a time.
/// GGUF tensors are dequantized to f32 first.
pub fn load_weights(
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
    dtype: DType,
    device: &Device,
) -> Result<TensorMap> {
    let reader = CheckpointReader::open(ckpt, cfg, dtype, device)?;
    reader
        .expected()
        .keys()
        .map(|name| Ok((name.clone(), reader.tensor(name)?)))
        .collect()
}

/// Undoes llama.cpp's row permutation of q/k projections. Its converter maps the HF rows of each
/// head, viewed as (2, head_dim/2), to (head_dim/2, 2) (pairs interleaved for its rotary kernel);
/// the inverse views them as (head_dim/2, 2) and swaps back.
pub fn unpermute_rope_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(ModelError::Invalid(format!(
            "cannot unpermute a {rows}x{cols} rotary projection over {heads} heads"
        )));
    }
    let half = rows / heads / 2;
    Ok(w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// The content identity of a tensor: blake3 over its dtype name, shape and little-endian bytes.
pub fn tensor_digest(t: &Tensor) -> Result<Digest> {
    let mut h = blake3::Hasher::new();
    let name = t.dtype().as_str();
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(&(t.rank() as u64).to_le_bytes());
    for &d in t.dims() {
        h.update(&(d as u64).to_le_bytes());
    }
    let hash = |h: &mut blake3::Hasher, bytes: &[u8]| {
        if bytes.len() > 1 << 20 {
            h.update_rayon(bytes);
        } else {
            h.write_all(bytes).expect("hashing into memory cannot fail");
        }
    };
    if with_le_bytes(t, |bytes| hash(&mut h, bytes)).is_none() {
        // `write_bytes` emits little-endian values in logical (row-major) order, whatever the
        // layout.
        let mut bytes = Vec::with_capacity(t.elem_count() * t.dtype().size_in_bytes());
        t.flatten_all()?.write_bytes(&mut bytes)?;
        hash(&mut h, &bytes);
    }
    Ok(h.finalize().into())
}

/// Calls `f` on the little-endian bytes of a contiguous tensor in memory, in row-major order,
/// without copying them; `None` where they are not at hand (another device or layout, a
/// big-endian host, a dtype without a plain byte view).
fn with_le_bytes<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    use candle_core::{CpuStorage, Storage};
    if cfg!(target_endian = "big") {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let (a, b) = layout.contiguous_offsets()?;
    let bytes: &[u8] = match cpu {
        CpuStorage::F32(v) => bytemuck::cast_slice(&v[a..b]),
        CpuStorage::F64(v) => bytemuck::cast_slice(&v[a..b]),
        CpuStorage::BF16(v) => bytemuck::cast_slice(&v[a..b]),
        CpuStorage::F16(v) => bytemuck::cast_slice(&v[a..b]),
        CpuStorage::U8(v) => &v[a..b],
        CpuStorage::U32(v) => bytemuck::cast_slice(&v[a..b]),
        CpuStorage::I64(v) => bytemuck::cast_slice(&v[a..b]),
        _ => return None,
    };
    Some(f(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::{Architecture, LLAMA};

    #[test]
    fn digest_of_bytes_in_place_equals_digest_of_written_bytes() {
        // The transposed view of a transposed copy holds the same values in a layout that is not
        // contiguous, so its digest goes through `write_bytes`.
        let t = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        for dtype in [
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::F64,
            DType::U8,
            DType::I64,
        ] {
            let t = t.to_dtype(dtype).unwrap();
            let strided = t.t().unwrap().contiguous().unwrap().t().unwrap();
            assert!(!strided.is_contiguous());
            assert!(with_le_bytes(&t, |_| ()).is_some(), "{dtype:?}");
            assert_eq!(
                tensor_digest(&t).unwrap(),
                tensor_digest(&strided).unwrap(),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn gguf_names_follow_llama_cpp() {
        let pairs = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            (
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            ("model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"),
            (
                "model.layers.12.self_attn.o_proj.weight",
                "blk.12.attn_output.weight",
            ),
            (
                "model.layers.0.mlp.down_proj.weight",
                "blk.0.ffn_down.weight",
            ),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ];
        for (hf, gg) in pairs {
            assert_eq!(LLAMA.gguf_name(hf).as_deref(), Some(gg), "{hf}");
        }
        assert_eq!(LLAMA.gguf_name("model.layers.0.rotary_emb.inv_freq"), None);
    }

    /// llama.cpp's converter, written out: row (a, b) of each head moves to (b, a).
    fn permute_like_llama_cpp(w: &Tensor, heads: usize) -> Tensor {
        let (rows, cols) = w.dims2().unwrap();
        let half = rows / heads / 2;
        w.reshape((heads, 2, half, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // 2 heads of head_dim 6: rows 0..12; one column holding the row index.
        let w = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((12, 1))
            .unwrap();
        let g = permute_like_llama_cpp(&w, 2);
        let rows: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        // Interleaved halves: within head 0, rows 0,3,1,4,2,5.
        assert_eq!(rows[..6], [0., 3., 1., 4., 2., 5.]);
        let back = unpermute_rope_rows(&g, 2).unwrap();
        let back: Vec<f32> = back.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(back, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn digest_sees_dtype_shape_and_values() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let d = tensor_digest(&a).unwrap();
        assert_eq!(d, tensor_digest(&a.clone()).unwrap());
        // Independent recomputation of the documented encoding.
        let mut h = blake3::Hasher::new();
        h.update(&3u64.to_le_bytes());
        h.update(b"f32");
        h.update(&2u64.to_le_bytes());
        h.update(&2u64.to_le_bytes());
        h.update(&2u64.to_le_bytes());
        for v in [1f32, 2., 3., 4.] {
            h.update(&v.to_le_bytes());
        }
        assert_eq!(d, Digest::from(h.finalize()));
        assert_ne!(d, tensor_digest(&a.reshape(4).unwrap()).unwrap());
        assert_ne!(d, tensor_digest(&a.to_dtype(DType::F16).unwrap()).unwrap());
        // A transposed (strided) view hashes its logical values.
        let t = a.t().unwrap();
        let tc = Tensor::new(&[[1f32, 3.], [2., 4.]], &dev).unwrap();
        assert_eq!(tensor_digest(&t).unwrap(), tensor_digest(&tc).unwrap());
    }
}
