//! CPU kernels that fuse chains of candle operations into one pass over the data, computing
//! every element with the same f32 operations in the same order as the chain, so the numbers
//! are the chain's bit for bit. They exist for speed: the chains write and re-read whole tensors
//! (the attention scores, the logits over a 49,152-token vocabulary) several times, and run
//! `exp` on entries that a causal mask then zeroes.
//!
//! The sums add in the order of candle's own `vec_reduce_sum`, the reduction its softmax and
//! `sum_keepdim` use, over the same full rows.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// The contiguous f32 data of a CPU tensor, or `None` where a kernel here does not apply: another
/// device or dtype, a tensor that gradients flow through (the kernels have no backward), or a CPU
/// whose candle sums in an order [`row_sum`] does not redo.
fn cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<Option<R>> {
    if !t.device().is_cpu()
        || t.dtype() != DType::F32
        || t.track_op()
        || !cfg!(target_arch = "x86_64")
    {
        return Ok(None);
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Ok(None);
    };
    Ok(Some(f(&cpu.as_slice::<f32>()?[start..end])))
}

/// Σ of a row as candle's f32 `vec_reduce_sum` adds it up on x86-64 (its AVX2 path: four
/// 8-lane accumulators over blocks of 32, a fixed reduction tree, then the tail one by one; else
/// one by one), re-done here in safe code.
fn row_sum(row: &[f32]) -> f32 {
    if !avx2() {
        return row.iter().fold(0f32, |s, &x| s + x);
    }
    let blocks = row.len() / 32 * 32;
    let mut acc = [[0f32; 8]; 4];
    for block in row[..blocks].chunks_exact(32) {
        for (lanes, part) in acc.iter_mut().zip(block.chunks_exact(8)) {
            for (a, &x) in lanes.iter_mut().zip(part) {
                *a += x;
            }
        }
    }
    let pair = |a: [f32; 8], b: [f32; 8]| -> [f32; 8] { std::array::from_fn(|l| a[l] + b[l]) };
    let x = pair(pair(acc[0], acc[1]), pair(acc[2], acc[3]));
    let t: [f32; 4] = std::array::from_fn(|l| x[l] + x[l + 4]);
    let mut sum = (t[0] + t[1]) + (t[2] + t[3]);
    for &x in &row[blocks..] {
        sum += x;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> bool {
    false
}

/// The softmax of causal attention scores: the same numbers as
/// `softmax_last_dim((scores / divisor) + mask)` with the mask of `causal_attention` (0 where
/// query i sees key j, −∞ elsewhere), for f32 scores on the CPU; `None` otherwise (the caller
/// runs the chain). `scores` is [.., rows, kv_len] whose rows cycle through the `s` queries (the
/// last `s` of `kv_len` positions); `window`: keys lie less than w positions back.
pub(crate) fn causal_softmax(
    scores: &Tensor,
    divisor: f64,
    s: usize,
    window: Option<usize>,
) -> candle_core::Result<Option<Tensor>> {
    let dims = scores.dims().to_vec();
    let kv_len = *dims.last().unwrap_or(&0);
    if kv_len == 0 || s == 0 || s > kv_len {
        return Ok(None);
    }
    // `Tensor / f64` is candle's affine x · (1/d) + 0 in the tensor's dtype.
    let mul = (1.0 / divisor) as f32;
    let offset = kv_len - s;
    let out = cpu_f32(scores, |src| {
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(kv_len)
            .zip(src.par_chunks(kv_len))
            .enumerate()
            .for_each(|(r, (dst, src))| {
                let last = offset + r % s; // the last key query i sees
                let first = window.map_or(0, |w| (last + 1).saturating_sub(w));
                let scaled = |x: f32| (x * mul + 0.0) + 0.0; // the affine, then the mask's 0
                let max = src[first..=last]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &x| m.max(scaled(x)));
                for (d, &x) in dst[first..=last].iter_mut().zip(&src[first..=last]) {
                    *d = (scaled(x) - max).exp();
                }
                // Masked entries are exp(−∞) = 0, already there.
                let sum = row_sum(dst);
                for d in dst.iter_mut() {
                    *d /= sum;
                }
            });
        dst
    })?;
    out.map(|v| Tensor::from_vec(v, dims, scores.device()))
        .transpose()
}

/// −log_softmax(logits)[target] per position: the same numbers as `log_softmax` over the last
/// axis (max, x − max, exp, sum, ln) then `gather`, for f32 logits [b, t, vocab] on the CPU;
/// `None` otherwise. `targets` holds `b · t` ids in row order.
pub(crate) fn target_nlls(
    logits: &Tensor,
    targets: &[u32],
) -> candle_core::Result<Option<Vec<f32>>> {
    let vocab = *logits.dims().last().unwrap_or(&0);
    if vocab == 0 || logits.elem_count() != targets.len() * vocab {
        return Ok(None);
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target id {t} is outside the vocabulary of {vocab}");
    }
    cpu_f32(logits, |src| {
        let mut out = vec![0f32; targets.len()];
        out.par_iter_mut()
            .zip(src.par_chunks(vocab))
            .zip(targets.par_iter())
            .for_each_init(
                || vec![0f32; vocab],
                |exps, ((nll, row), &t)| {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                    for (e, &x) in exps.iter_mut().zip(row) {
                        *e = (x - max).exp();
                    }
                    let log_sum = row_sum(exps).ln();
                    *nll = -((row[t as usize] - max) - log_sum);
                },
            );
        out
    })
}

/// Elements per task of [`silu_mul`].
const SILU_CHUNK: usize = 1 << 14;

/// silu(gate) · up, the same numbers as `silu(gate)? * up` (candle's silu is g / (1 + e^−g)), for
/// f32 tensors of one shape on the CPU, in parallel where candle's unary map runs on one thread;
/// `None` otherwise.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if gate.dims() != up.dims() {
        return Ok(None);
    }
    let out = cpu_f32(gate, |g| {
        cpu_f32(up, |u| {
            let mut out = vec![0f32; g.len()];
            out.par_chunks_mut(SILU_CHUNK)
                .zip(g.par_chunks(SILU_CHUNK).zip(u.par_chunks(SILU_CHUNK)))
                .for_each(|(o, (g, u))| {
                    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                        *o = (g / (1.0 + (-g).exp())) * u;
                    }
                });
            out
        })
    })?;
    out.transpose()?
        .flatten()
        .map(|v| Tensor::from_vec(v, gate.dims(), gate.device()))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-8.0..8.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The chain `causal_attention` runs, written with candle's operations.
    fn chain(scores: &Tensor, divisor: f64, s: usize, window: Option<usize>) -> Vec<f32> {
        let kv_len = *scores.dims().last().unwrap();
        let offset = kv_len - s;
        let mask: Vec<f32> = (0..s)
            .flat_map(|i| {
                (0..kv_len).map(move |j| {
                    let back = (offset + i) as i64 - j as i64;
                    let seen = back >= 0 && window.is_none_or(|w| back < w as i64);
                    if seen {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (s, kv_len), &Device::Cpu).unwrap();
        let x = (scores / divisor).unwrap().broadcast_add(&mask).unwrap();
        candle_nn::ops::softmax_last_dim(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn causal_softmax_is_the_chain_bit_for_bit() {
        // kv_len past 32 and not a multiple of it, so candle's sum takes its vector and tail
        // paths; a prefix of cached keys (s < kv_len) and a sliding window.
        for (s, kv_len, window) in [
            (37, 37, None),
            (5, 70, None),
            (40, 40, Some(7)),
            (1, 9, None),
        ] {
            let scores = random(&[2, 3, s, kv_len], 7);
            let got = causal_softmax(&scores, 8.0, s, window).unwrap().unwrap();
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            let want = chain(&scores, 8.0, s, window);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "s {s} kv_len {kv_len} window {window:?}");
        }
    }

    #[test]
    fn silu_mul_is_the_chain_bit_for_bit() {
        let (g, u) = (random(&[3, 5, 7000], 1), random(&[3, 5, 7000], 2));
        let got = silu_mul(&g, &u).unwrap().unwrap();
        let want = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn target_nlls_are_log_softmax_then_gather_bit_for_bit() {
        let logits = random(&[2, 3, 1001], 3);
        let targets: Vec<u32> = vec![0, 5, 1000, 17, 999, 3];
        let got = target_nlls(&logits, &targets).unwrap().unwrap();
        let t = Tensor::from_vec(targets.clone(), (2, 3, 1), &Device::Cpu).unwrap();
        let want: Vec<f32> = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .gather(&t, D::Minus1)
            .unwrap()
            .neg()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert!(target_nlls(&logits, &[0, 1, 2, 3, 4, 1001]).is_err());
    }
}
