//! Random-weight checkpoints of a real architecture's shape, for measuring memory and time at
//! scale (`whittle synth-model`). Their outputs mean nothing; never report them as a model's.
//!
//! The folder is what Hugging Face writes: `config.json`, `model-0000i-of-0000n.safetensors`
//! shards with `model.safetensors.index.json`, and a `tokenizer.json` (a word-level vocabulary of
//! the config's size). Values are uniform with the standard deviation of a usual initialisation
//! (0.02; norms 1), from a counter-based generator: the same seed gives the same bytes, whatever
//! the number of threads.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::config::ModelConfig;
use super::error::{ModelError, Result};

/// A named architecture to imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// LLaMA-2-7B: 32 blocks of width 4096, MLP 11008, 32 heads, vocabulary 32000.
    Llama2_7b,
    /// LLaMA-2-13B: 40 blocks of width 5120, MLP 13824, 40 heads.
    Llama2_13b,
}

impl Preset {
    pub const NAMES: [&'static str; 2] = ["llama2-7b", "llama2-13b"];

    pub fn parse(s: &str) -> Option<Preset> {
        match s {
            "llama2-7b" => Some(Preset::Llama2_7b),
            "llama2-13b" => Some(Preset::Llama2_13b),
            _ => None,
        }
    }

    /// (hidden, intermediate, layers, heads).
    fn dims(self) -> (usize, usize, usize, usize) {
        match self {
            Preset::Llama2_7b => (4096, 11008, 32, 32),
            Preset::Llama2_13b => (5120, 13824, 40, 40),
        }
    }
}

/// What to write: a preset, optionally narrowed (fewer blocks, another width) for quick runs.
#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub preset: Preset,
    pub layers: Option<usize>,
    /// Width and MLP width; heads stay at 128 dimensions each.
    pub hidden: Option<(usize, usize)>,
    pub dtype: DType,
    pub seed: u64,
    /// Largest shard, in bytes.
    pub shard_bytes: u64,
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub parameters: u64,
    pub bytes: u64,
    pub shards: usize,
}

/// The `config.json` of `spec`.
pub fn config_json(spec: &SynthSpec) -> serde_json::Value {
    let (mut hidden, mut inter, layers, mut heads) = spec.preset.dims();
    if let Some((h, i)) = spec.hidden {
        (hidden, inter, heads) = (h, i, (h / 128).max(1));
    }
    let dtype = match spec.dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": spec.layers.unwrap_or(layers),
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype,
        "whittle_synthetic": "random weights for scaling measurements; not a trained model",
    })
}

/// Writes the checkpoint of `spec` into `out` (created if absent).
pub fn write(spec: &SynthSpec, out: &Path) -> Result<Written> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let config = config_json(spec);
    let config_path = out.join("config.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec_pretty(&config).expect("json"),
    )
    .map_err(io(&config_path))?;
    let cfg = ModelConfig::from_file(&config_path)?;
    let tensors = cfg.architecture().tensors(&cfg);
    let size = spec.dtype.size_in_bytes() as u64;

    // Shards in tensor order, each up to `shard_bytes` (a larger tensor gets one to itself).
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut filled = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() as u64 * size;
        if filled > 0 && filled + bytes > spec.shard_bytes {
            shards.push(Vec::new());
            filled = 0;
        }
        filled += bytes;
        shards.last_mut().expect("one shard").push((name, shape));
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let (mut parameters, mut total) = (0u64, 0u64);
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let path = out.join(&file);
        total += write_shard(&path, shard, spec)?;
        for (name, shape) in shard {
            parameters += shape.iter().product::<usize>() as u64;
            weight_map.insert(name.clone(), file.clone());
        }
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    let index_path = out.join("model.safetensors.index.json");
    std::fs::write(
        &index_path,
        serde_json::to_vec_pretty(&index).expect("json"),
    )
    .map_err(io(&index_path))?;
    let tok_path = out.join("tokenizer.json");
    std::fs::write(&tok_path, tokenizer_json(cfg.vocab_size)).map_err(io(&tok_path))?;
    Ok(Written {
        parameters,
        bytes: total,
        shards: n,
    })
}

/// One shard: the header, then each tensor generated and written a slice at a time.
fn write_shard(path: &Path, tensors: &[(String, Vec<usize>)], spec: &SynthSpec) -> Result<u64> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = spec.dtype.size_in_bytes();
    let st_dtype = match spec.dtype {
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        _ => "F32",
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * size;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut head = serde_json::to_vec(&header).expect("json");
    // Data starts 8-byte aligned, as the safetensors writer pads it.
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    f.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    f.write_all(&head).map_err(io)?;
    const SLICE: usize = 1 << 22;
    for (name, shape) in tensors {
        let numel: usize = shape.iter().product();
        let stream = blake3::hash(format!("{}:{name}", spec.seed).as_bytes());
        let stream = u64::from_le_bytes(stream.as_bytes()[..8].try_into().expect("8 bytes"));
        // Norm weights are 1, as initialised; everything else uniform with std 0.02.
        let norm = shape.len() == 1;
        let mut start = 0;
        while start < numel {
            let len = SLICE.min(numel - start);
            let values: Vec<f32> = (start..start + len)
                .into_par_iter()
                .map(|i| {
                    if norm {
                        1.0
                    } else {
                        let u = splitmix(stream ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        // Uniform on [-a, a] with a = 0.02·√3.
                        ((u >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.034_641
                    }
                })
                .collect();
            let t = Tensor::from_vec(values, len, &Device::Cpu)?.to_dtype(spec.dtype)?;
            let mut bytes = Vec::with_capacity(len * size);
            t.write_bytes(&mut bytes)?;
            f.write_all(&bytes).map_err(io)?;
            start += len;
        }
    }
    f.flush().map_err(io)?;
    Ok(offset as u64)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A word-level tokenizer of `vocab` entries: `<unk>`, `<s>`, `</s>`, then the 26 letters and
/// `w3`, `w4`, …; words split on whitespace and punctuation.
fn tokenizer_json(vocab: usize) -> String {
    let mut words: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    words.extend((b'a'..=b'z').map(|c| (c as char).to_string()));
    let mut i = words.len();
    while words.len() < vocab {
        words.push(format!("w{i}"));
        i += 1;
    }
    let vocab_map: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), i.into()))
        .collect();
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab_map, "unk_token": "<unk>"},
    })
    .to_string()
}
