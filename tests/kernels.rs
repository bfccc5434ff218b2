//! Compression kernels against hand-computed cases, property tests with independent second
//! implementations (full sorts instead of selection), and real weights from stories260K.

mod common;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use whittle::compress::dynint8;
use whittle::compress::gptq::{gptq, GptqConfig};
use whittle::compress::magnitude::{global_cut, magnitude, magnitude_global, magnitude_nm};
use whittle::compress::nm::{follows_pattern, nm_mask};
use whittle::compress::rtn::rtn;
use whittle::compress::sparsegpt::{sparsegpt, Pattern};
use whittle::compress::tensor::Backend;
use whittle::compress::torch_prune_count;
use whittle::compress::wanda::{row_lowest, wanda, wanda_nm, wanda_score};
use whittle::compress::{Grouping, HessianOpts, Mask, Matrix, QuantConfig};

fn mat(rows: usize, cols: usize, data: &[f32]) -> Matrix {
    Matrix::new(rows, cols, data.to_vec()).unwrap()
}

/// The mask as rows of 0/1, for comparing with hand-written expectations.
fn grid(mask: &Mask) -> Vec<Vec<u8>> {
    (0..mask.rows())
        .map(|r| {
            (0..mask.cols())
                .map(|c| mask.is_pruned(r, c) as u8)
                .collect()
        })
        .collect()
}

// ---------- hand-computed cases ----------

#[test]
fn magnitude_2x4_half_with_ties() {
    // |W| sorted: .1 .1 .2 .3 .3 .3 .4 .5; index floor(8*.5) = 4 -> .3. Every |w| <= .3 goes:
    // 6 pruned instead of 4, because of the three tied .3s.
    let w = mat(2, 4, &[0.3, -0.1, 0.3, 0.2, -0.3, 0.5, 0.1, 0.4]);
    let mask = magnitude(&w, 0.5).unwrap();
    assert_eq!(grid(&mask), vec![vec![1, 1, 1, 1], vec![1, 0, 1, 0]]);
    assert_eq!(mask.count(), 6);
}

#[test]
fn magnitude_global_2_matrices_by_hand() {
    let a = mat(2, 2, &[1.0, -4.0, 2.0, 8.0]);
    let b = mat(1, 4, &[-3.0, 0.5, 6.0, 2.0]);
    // Union sorted: .5 1 2 2 3 4 6 8; s=.375: round(8·.375) = 3 pruned: .5, 1 and the first 2
    // met (a's, a comes first). The layer-wise rule would cut at `<= 2` and take both 2s.
    let masks = magnitude_global(&[&a, &b], 0.375).unwrap();
    assert_eq!(grid(&masks[0]), vec![vec![1, 0], vec![1, 0]]);
    assert_eq!(grid(&masks[1]), vec![vec![0, 1, 0, 0]]);
    // Layer-wise at .375 each matrix prunes floor(4*.375)+1 = 2 (no ties); at .5 b also loses
    // its 3 (index 2 of .5 2 3 6).
    assert_eq!(
        grid(&magnitude(&a, 0.375).unwrap()),
        vec![vec![1, 0], vec![1, 0]]
    );
    assert_eq!(grid(&magnitude(&b, 0.375).unwrap()), vec![vec![0, 1, 0, 1]]);
    assert_eq!(grid(&magnitude(&b, 0.5).unwrap()), vec![vec![1, 1, 0, 1]]);
}

#[test]
fn wanda_2x4_half_by_hand() {
    // sqrt(scaler) = 1 2 0.5 1.
    // Row 0 |W| 1 1 4 3 -> scores 1 2 2 3: lowest two are col 0 (1) then col 1 (2, tie with col 2).
    // Row 1 |W| 5 .5 1 .25 -> scores 5 1 .5 .25: cols 3 and 2.
    let w = mat(2, 4, &[1.0, -1.0, 4.0, 3.0, -5.0, 0.5, 1.0, -0.25]);
    let scaler = [1.0, 4.0, 0.25, 1.0];
    assert_eq!(
        wanda_score(&w, &scaler).unwrap().data,
        vec![1.0, 2.0, 2.0, 3.0, 5.0, 1.0, 0.5, 0.25]
    );
    let mask = wanda(&w, &scaler, 0.5).unwrap();
    assert_eq!(grid(&mask), vec![vec![1, 1, 0, 0], vec![0, 0, 1, 1]]);
    // Magnitude on the same W (no scaler) would keep row 1's col 2 instead: the scaler matters.
    assert_eq!(
        grid(&magnitude(&w, 0.5).unwrap()),
        vec![vec![1, 1, 0, 0], vec![0, 1, 1, 1]]
    );
}

#[test]
fn nm_4_8_by_hand() {
    let w = mat(
        2,
        8,
        &[
            8.0, -1.0, 7.0, 2.0, -6.0, 3.0, 5.0, 4.0, //
            1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 0.0, 2.0,
        ],
    );
    let mask = magnitude_nm(&w, 4, 8).unwrap();
    // Row 0: the four smallest |w| are 1, 2, 3, 4 (cols 1, 3, 5, 7).
    // Row 1: 0 (col 6) then the 1s in column order: cols 0, 1, 2.
    assert_eq!(
        grid(&mask),
        vec![vec![0, 1, 0, 1, 0, 1, 0, 1], vec![1, 1, 1, 0, 0, 0, 1, 0]]
    );
    // Wanda 2:4 on the same W with a scaler that flips row 0's first group.
    let scaler = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    let wm = wanda_nm(&w, &scaler, 2, 4).unwrap();
    // Row 0 scores 0 1 7 2 | 6 3 5 4 -> cols 0,1 | 5,7. Row 1 scores 0 1 1 1 | 2 2 0 2 -> 0,1 | 6,4.
    assert_eq!(
        grid(&wm),
        vec![vec![1, 1, 0, 0, 0, 1, 0, 1], vec![1, 1, 0, 0, 1, 0, 1, 0]]
    );
}

#[test]
fn rtn_4bit_groups_of_4_by_hand() {
    // Group [-1, 0, .5, 2]: scale 3/15 = .2, zero round(1/.2) = 5.
    //   codes: -1 -> 0, 0 -> 5, .5/.2 = 2.5 -> 2 (half-even) -> 7, 2 -> 10 + 5 = 15.
    // Group [.75, 1.5, 3.75, 0]: xmin 0, scale .25, zero 0: codes 3, 6, 15, 0.
    let w = mat(1, 8, &[-1.0, 0.0, 0.5, 2.0, 0.75, 1.5, 3.75, 0.0]);
    let q = rtn(
        &w,
        &QuantConfig {
            bits: 4,
            grouping: Grouping::Group(4),
            sym: false,
        },
    )
    .unwrap();
    assert_eq!(q.scales, vec![3.0f32 / 15.0, 0.25]);
    assert_eq!(q.zeros, vec![5, 0]);
    assert_eq!(q.codes, vec![0, 5, 7, 15, 3, 6, 15, 0]);
    let d = q.dequantize().data;
    let s = 3.0f32 / 15.0;
    assert_eq!(
        d,
        vec![-5.0 * s, 0.0, 2.0 * s, 10.0 * s, 0.75, 1.5, 3.75, 0.0]
    );
    // Half-even matters: half-away-from-zero would give .6 for the .5 weight.
    assert!((d[2] - 0.4).abs() < 1e-6);
}

// ---------- Hessian-based kernels on random layers ----------

/// A random layer and correlated calibration inputs: W (rows × cols), X (tokens × cols) = Z·M,
/// and H = 2/n · XᵀX.
struct Layer {
    w: Matrix,
    x: Vec<f32>,
    tokens: usize,
    h: Matrix,
}

fn gauss(rng: &mut ChaCha8Rng) -> f32 {
    // Irwin-Hall: close enough to normal for test data.
    (0..6).map(|_| rng.random::<f32>()).sum::<f32>() - 3.0
}

fn layer(seed: u64, rows: usize, cols: usize, tokens: usize) -> Layer {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..rows * cols).map(|_| gauss(&mut rng)).collect();
    let mix: Vec<f32> = (0..cols * cols).map(|_| gauss(&mut rng) * 0.3).collect();
    let z: Vec<f32> = (0..tokens * cols).map(|_| gauss(&mut rng)).collect();
    // Feature scales spread over ~two decades, like LLM activations with outlier features
    // (the regime where ignoring X, as magnitude does, costs most).
    let scale: Vec<f32> = (0..cols)
        .map(|_| 2f32.powf(2.0 * gauss(&mut rng)))
        .collect();
    let mut x = vec![0f32; tokens * cols];
    for t in 0..tokens {
        for j in 0..cols {
            // One own component plus a shared mix: correlated, full rank.
            x[t * cols + j] = scale[j]
                * (z[t * cols + j]
                    + (0..cols)
                        .map(|k| z[t * cols + k] * mix[k * cols + j])
                        .sum::<f32>());
        }
    }
    let mut h = Matrix::zeros(cols, cols);
    for i in 0..cols {
        for j in 0..cols {
            let s: f64 = (0..tokens)
                .map(|t| f64::from(x[t * cols + i]) * f64::from(x[t * cols + j]))
                .sum();
            h.data[i * cols + j] = (2.0 * s / tokens as f64) as f32;
        }
    }
    Layer {
        w: Matrix::new(rows, cols, w).unwrap(),
        x,
        tokens,
        h,
    }
}

/// ‖W Xᵀ − Ŵ Xᵀ‖²_F over the calibration tokens.
fn recon_error(l: &Layer, w_hat: &Matrix) -> f64 {
    let cols = l.w.cols;
    let mut e = 0f64;
    for r in 0..l.w.rows {
        for t in 0..l.tokens {
            let d: f64 = (0..cols)
                .map(|j| f64::from(l.w.get(r, j) - w_hat.get(r, j)) * f64::from(l.x[t * cols + j]))
                .sum();
            e += d * d;
        }
    }
    e
}

fn masked(w: &Matrix, mask: &Mask) -> Matrix {
    let mut out = w.clone();
    mask.apply(&mut out).unwrap();
    out
}

#[test]
fn sparsegpt_reconstructs_better_than_magnitude() {
    let l = layer(1, 24, 64, 256);
    let opts = HessianOpts::default();
    let sg = sparsegpt(&l.w, &l.h, Pattern::Unstructured(0.5), &opts).unwrap();
    let mag = magnitude(&l.w, 0.5).unwrap();
    assert!(sg.mask.count() >= mag.count() - 1, "comparable sparsity");
    assert!(sg.mask.count() > (24 * 64) / 2);
    // Pruned weights are exactly zero; the kept ones were updated.
    assert!((0..24 * 64).all(|i| !sg.mask.is_pruned(i / 64, i % 64) || sg.weight.data[i] == 0.0));
    let (e_sg, e_mag) = (
        recon_error(&l, &sg.weight),
        recon_error(&l, &masked(&l.w, &mag)),
    );
    assert!(e_sg < 0.7 * e_mag, "sparsegpt {e_sg} vs magnitude {e_mag}");

    let sg24 = sparsegpt(&l.w, &l.h, Pattern::NM { n: 2, m: 4 }, &opts).unwrap();
    assert!(follows_pattern(&sg24.mask, 2, 4));
    let mag24 = magnitude_nm(&l.w, 2, 4).unwrap();
    let (e_sg, e_mag) = (
        recon_error(&l, &sg24.weight),
        recon_error(&l, &masked(&l.w, &mag24)),
    );
    assert!(
        e_sg < 0.7 * e_mag,
        "2:4 sparsegpt {e_sg} vs magnitude {e_mag}"
    );
}

/// Second implementation of the reference's Hessian handling: dense f64, Gauss-Jordan inverse,
/// then the upper factor as the transposed lower Cholesky factor of H⁻¹.
fn naive_hinv(h: &Matrix, percdamp: f64, perm: &[usize]) -> Vec<f64> {
    let n = h.cols;
    let mut a: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (perm[k / n], perm[k % n]);
            let v = f64::from(h.get(i, j));
            if i == j && v == 0.0 {
                1.0
            } else {
                v
            }
        })
        .collect();
    let damp = percdamp * (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
    (0..n).for_each(|i| a[i * n + i] += damp);
    let mut inv: Vec<f64> = (0..n * n)
        .map(|k| f64::from(u8::from(k / n == k % n)))
        .collect();
    for c in 0..n {
        let p = a[c * n + c];
        for j in 0..n {
            a[c * n + j] /= p;
            inv[c * n + j] /= p;
        }
        for r in (0..n).filter(|&r| r != c) {
            let f = a[r * n + c];
            for j in 0..n {
                a[r * n + j] -= f * a[c * n + j];
                inv[r * n + j] -= f * inv[c * n + j];
            }
        }
    }
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = inv[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            l[i * n + j] = if i == j { s.sqrt() } else { s / l[j * n + j] };
        }
    }
    (0..n * n).map(|k| l[(k % n) * n + k / n]).collect() // U = Lᵀ
}

/// The reference's column loop without lazy batching: every update goes to the row's end at once.
fn naive_sparsegpt(w: &Matrix, h: &Matrix, s: f64, blocksize: usize) -> Matrix {
    let n = w.cols;
    let u = naive_hinv(h, 0.01, &(0..n).collect::<Vec<_>>());
    let mut w = w.clone();
    for c in (0..n).filter(|&c| h.get(c, c) == 0.0) {
        (0..w.rows).for_each(|r| w.data[r * n + c] = 0.0);
    }
    for i1 in (0..n).step_by(blocksize) {
        let i2 = (i1 + blocksize).min(n);
        let score = |w: &Matrix, r: usize, c: usize| {
            let d = u[c * n + c] as f32;
            w.get(r, c) * w.get(r, c) / (d * d)
        };
        let mut all: Vec<f32> = (0..w.rows)
            .flat_map(|r| (i1..i2).map(move |c| (r, c)))
            .map(|(r, c)| score(&w, r, c))
            .collect();
        all.sort_by(f32::total_cmp);
        let t = all[(all.len() as f64 * s) as usize];
        let mask: Vec<Vec<bool>> = (0..w.rows)
            .map(|r| (i1..i2).map(|c| score(&w, r, c) <= t).collect())
            .collect();
        for (r, mask_row) in mask.iter().enumerate() {
            for c in i1..i2 {
                let v = w.get(r, c);
                let q = if mask_row[c - i1] { 0.0 } else { v };
                let err = f64::from(v - q) / u[c * n + c];
                for j in c + 1..n {
                    w.data[r * n + j] -= (err * u[c * n + j]) as f32;
                }
                w.data[r * n + c] = q;
            }
        }
    }
    w
}

#[test]
fn sparsegpt_matches_unbatched_second_implementation() {
    let mut l = layer(5, 6, 40, 96);
    // One dead input (its column of X is zero: H row and column vanish).
    for k in 0..40 {
        l.h.data[7 * 40 + k] = 0.0;
        l.h.data[k * 40 + 7] = 0.0;
    }
    for blocksize in [128, 16, 7] {
        let opts = HessianOpts {
            blocksize,
            percdamp: 0.01,
        };
        let got = sparsegpt(&l.w, &l.h, Pattern::Unstructured(0.4), &opts)
            .unwrap()
            .weight;
        let want = naive_sparsegpt(&l.w, &l.h, 0.4, blocksize);
        let worst = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "blocksize {blocksize}: max diff {worst}");
        assert!((0..6).all(|r| got.get(r, 7) == 0.0), "dead column zeroed");
    }
}

/// GPTQ's column loop without lazy batching (params from a block-start snapshot, as the
/// reference reads `W` there), dequantized, in original column order.
fn naive_gptq(
    w: &Matrix,
    h: &Matrix,
    quant: &QuantConfig,
    act_order: bool,
    blocksize: usize,
) -> Matrix {
    use whittle::compress::QuantParams;
    let n = w.cols;
    let maxq = quant.maxq();
    let diag = |i: usize| if h.get(i, i) == 0.0 { 1.0 } else { h.get(i, i) };
    let mut perm: Vec<usize> = (0..n).collect();
    if act_order {
        perm.sort_by(|&a, &b| diag(b).total_cmp(&diag(a)));
    }
    let u = naive_hinv(h, 0.01, &perm);
    let mut out = Matrix::zeros(w.rows, n);
    for r in 0..w.rows {
        let fixed = (quant.grouping == Grouping::PerChannel)
            .then(|| QuantParams::find(w.row(r).iter().copied(), maxq, quant.sym));
        let mut row: Vec<f32> = perm
            .iter()
            .map(|&c| if h.get(c, c) == 0.0 { 0.0 } else { w.get(r, c) })
            .collect();
        let g = quant.group_size(n);
        let mut p = fixed;
        for i1 in (0..n).step_by(blocksize) {
            let snapshot = row.clone();
            for c in i1..(i1 + blocksize).min(n) {
                if fixed.is_none() && c % g == 0 {
                    p = Some(QuantParams::find(
                        snapshot[c..(c + g).min(n)].iter().copied(),
                        maxq,
                        quant.sym,
                    ));
                }
                let prm = p.unwrap();
                let q = prm.fake_quantize(row[c], maxq);
                let err = f64::from(row[c] - q) / u[c * n + c];
                for j in c + 1..n {
                    row[j] -= (err * u[c * n + j]) as f32;
                }
                out.data[r * n + perm[c]] = q;
            }
        }
    }
    out
}

#[test]
fn gptq_matches_unbatched_second_implementation() {
    let l = layer(6, 5, 40, 96);
    for (grouping, act_order, sym, blocksize) in [
        (Grouping::PerChannel, false, false, 128),
        (Grouping::Group(8), true, false, 16),
        (Grouping::Group(12), false, true, 16), // groups straddle blocks: stale params
        (Grouping::Group(8), true, true, 5),
    ] {
        let quant = QuantConfig {
            bits: 3,
            grouping,
            sym,
        };
        let cfg = GptqConfig {
            quant,
            act_order,
            hessian: HessianOpts {
                blocksize,
                percdamp: 0.01,
            },
        };
        let got = gptq(&l.w, &l.h, &cfg).unwrap().quantized.dequantize();
        let want = naive_gptq(&l.w, &l.h, &quant, act_order, blocksize);
        // Same codes everywhere: both paths round the same f32 values.
        let off = got
            .data
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| (*a - *b).abs() > 1e-4)
            .count();
        assert!(
            off == 0,
            "{grouping:?} act_order {act_order} sym {sym} bs {blocksize}: {off} differ"
        );
    }
}

#[test]
fn sparsegpt_blocks_respect_per_block_threshold() {
    // Blocks of 16 over 48 columns: each rows×16 block prunes at least int(numel_block·s)+1.
    let l = layer(2, 8, 48, 128);
    let opts = HessianOpts {
        blocksize: 16,
        percdamp: 0.01,
    };
    let out = sparsegpt(&l.w, &l.h, Pattern::Unstructured(0.3), &opts).unwrap();
    for b in 0..3 {
        let n: usize = (0..8)
            .map(|r| {
                (b * 16..b * 16 + 16)
                    .filter(|&c| out.mask.is_pruned(r, c))
                    .count()
            })
            .sum();
        assert!(n > (128.0 * 0.3) as usize, "block {b}: {n}");
    }
}

#[test]
fn gptq_reconstructs_better_than_rtn() {
    let l = layer(3, 24, 64, 256);
    for (bits, grouping, act_order, sym) in [
        (4, Grouping::PerChannel, false, false),
        (3, Grouping::PerChannel, true, false),
        (3, Grouping::Group(16), false, true),
        (4, Grouping::Group(16), true, false),
    ] {
        let quant = QuantConfig {
            bits,
            grouping,
            sym,
        };
        let cfg = GptqConfig {
            quant,
            act_order,
            hessian: HessianOpts::default(),
        };
        let g = gptq(&l.w, &l.h, &cfg).unwrap().quantized.dequantize();
        let r = rtn(&l.w, &quant).unwrap().dequantize();
        let (e_g, e_r) = (recon_error(&l, &g), recon_error(&l, &r));
        assert!(
            e_g < 0.8 * e_r,
            "{bits} bits {grouping:?} act_order {act_order}: gptq {e_g} rtn {e_r}"
        );
    }
}

#[test]
fn dynint8_tracks_float_linear() {
    let l = layer(4, 16, 32, 4);
    let q = dynint8::quantize_weight(&l.w).unwrap();
    let bias: Vec<f32> = (0..16).map(|r| r as f32 * 0.1).collect();
    let y = dynint8::linear(&l.x, &q, Some(&bias)).unwrap();
    let mut max_err = 0f32;
    let mut max_abs = 0f32;
    for t in 0..4 {
        for r in 0..16 {
            let exact: f32 = (0..32)
                .map(|j| l.w.get(r, j) * l.x[t * 32 + j])
                .sum::<f32>()
                + bias[r];
            max_err = max_err.max((y[t * 16 + r] - exact).abs());
            max_abs = max_abs.max(exact.abs());
        }
    }
    // 8-bit weights and 7-bit inputs: a few percent of the output range, not exact.
    assert!(
        max_err > 0.0 && max_err < 0.05 * max_abs,
        "{max_err} of {max_abs}"
    );
}

// ---------- real weights ----------

#[test]
fn real_weights_global_matches_full_sort() {
    let dir = require_shared!("models/stories260K");
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = tensors
        .keys()
        .filter(|k| k.contains("layers.") && k.ends_with("proj.weight"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 5 * 7, "q,k,v,o,gate,up,down in 5 blocks");
    let ws: Vec<Matrix> = names
        .iter()
        .map(|n| Matrix::from_tensor(&tensors[*n]).unwrap())
        .collect();
    let refs: Vec<&Matrix> = ws.iter().collect();
    let all: Vec<f32> = ws
        .iter()
        .flat_map(|w| w.data.iter().map(|v| v.abs()))
        .collect();
    for s in [0.1, 0.4, 0.5, 0.9] {
        let k = (all.len() as f64 * s).round_ties_even() as usize;
        let want = stable_lowest(&all, k);
        let cut = global_cut(&refs, s).unwrap().unwrap();
        let largest = want.iter().map(|&i| all[i]).fold(0.0f32, f32::max);
        assert_eq!(cut.threshold, largest);
        let masks = magnitude_global(&refs, s).unwrap();
        assert_eq!(flat_pruned(&masks), want, "s = {s}");
        // Exactly round(N·s), never the layer-wise floor(N·s) + 1.
        assert_eq!(masks.iter().map(Mask::count).sum::<usize>(), k);
    }
}

/// Masks from torch's `global_unstructured(L1Unstructured)`, made by
/// `tests/fixtures/global_magnitude/make.py`.
fn torch_global_fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/global_magnitude/torch_global.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn global_magnitude_matches_torch_global_unstructured() {
    let fx = torch_global_fixture();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ws: Vec<Matrix> = case["matrices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let data: Vec<f32> = m["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                let dim = |k: &str| m[k].as_u64().unwrap() as usize;
                mat(dim("rows"), dim("cols"), &data)
            })
            .collect();
        let want: Vec<u8> = case["masks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| {
                m.as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_u64().unwrap() as u8)
            })
            .collect();
        let refs: Vec<&Matrix> = ws.iter().collect();
        let s = case["amount"].as_f64().unwrap();
        let got = flat_pruned(&magnitude_global(&refs, s).unwrap());
        let torch: Vec<usize> = (0..want.len()).filter(|&i| want[i] == 1).collect();
        assert_eq!(got.len(), torch.len(), "{name}: count");
        let all: Vec<f32> = ws.iter().flat_map(|w| w.data.clone()).collect();
        let cut = global_cut(&refs, s).unwrap().map(|c| c.threshold);
        // Away from the cut the masks agree weight for weight; among the weights tied at it
        // torch's topk picks in its own order, whittle in selection order: the same number.
        let off_cut = |v: &Vec<usize>| -> Vec<usize> {
            v.iter()
                .copied()
                .filter(|&i| Some(all[i].abs()) != cut)
                .collect()
        };
        assert_eq!(off_cut(&got), off_cut(&torch), "{name}");
        if !name.starts_with("ties") {
            assert_eq!(got, torch, "{name}");
        }
    }
    // stories260K, every block linear layer: no ties at these cuts, so every mask is torch's.
    let real = &fx["real"];
    let dir = require_shared!("models/stories260K");
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let ws: Vec<Matrix> = real["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| Matrix::from_tensor(&tensors[n.as_str().unwrap()]).unwrap())
        .collect();
    let refs: Vec<&Matrix> = ws.iter().collect();
    for run in real["runs"].as_array().unwrap() {
        let s = run["amount"].as_f64().unwrap();
        let masks = magnitude_global(&refs, s).unwrap();
        let counts: Vec<u64> = masks.iter().map(|m| m.count() as u64).collect();
        let want: Vec<u64> = run["per_matrix"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(counts, want, "s = {s}");
        let bytes: Vec<u8> = masks
            .iter()
            .flat_map(|m| {
                let (r, c) = m.shape();
                (0..r * c).map(move |i| m.is_pruned(i / c, i % c) as u8)
            })
            .collect();
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            run["blake3"].as_str().unwrap(),
            "s = {s}"
        );
    }
}

// ---------- properties ----------

/// A matrix with values from a small set (many ties) or a continuous range.
fn matrix(max_rows: usize, max_cols: usize) -> impl Strategy<Value = Matrix> {
    (1..=max_rows, 1..=max_cols).prop_flat_map(|(r, c)| {
        let vals = prop_oneof![(-4i32..=4).prop_map(|v| v as f32 * 0.25), -10.0f32..10.0,];
        proptest::collection::vec(vals, r * c).prop_map(move |d| Matrix::new(r, c, d).unwrap())
    })
}

/// Indices of the `k` lowest values by a stable sort (ties: lower index first).
fn stable_lowest(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = idx[..k].to_vec();
    out.sort();
    out
}

fn pruned_in_row(mask: &Mask, r: usize) -> Vec<usize> {
    (0..mask.cols()).filter(|&c| mask.is_pruned(r, c)).collect()
}

/// Pruned positions of several masks, numbered through their concatenation (row-major each).
fn flat_pruned(masks: &[Mask]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut base = 0;
    for m in masks {
        let (r, c) = m.shape();
        out.extend(
            (0..r * c)
                .filter(|&i| m.is_pruned(i / c, i % c))
                .map(|i| base + i),
        );
        base += r * c;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn magnitude_layerwise_count_and_ties(w in matrix(6, 12), s in 0.0f64..0.99) {
        let mask = magnitude(&w, s).unwrap();
        let n = w.numel();
        let k = (n as f64 * s) as usize;
        if s == 0.0 {
            prop_assert_eq!(mask.count(), 0);
        } else {
            let mut sorted: Vec<f32> = w.data.iter().map(|v| v.abs()).collect();
            sorted.sort_by(f32::total_cmp);
            let t = sorted[k];
            prop_assert!(mask.count() > k);
            // Pruned is exactly |w| <= t: the extra ones beyond k + 1 all equal t.
            let below = w.data.iter().filter(|v| v.abs() < t).count();
            prop_assert!(below <= k);
            for (i, v) in w.data.iter().enumerate() {
                prop_assert_eq!(mask.is_pruned(i / w.cols, i % w.cols), v.abs() <= t);
            }
        }
    }

    #[test]
    fn magnitude_global_matches_full_sort(
        ws in proptest::collection::vec(matrix(4, 9), 1..4),
        s in 0.0f64..0.99,
    ) {
        let refs: Vec<&Matrix> = ws.iter().collect();
        let masks = magnitude_global(&refs, s).unwrap();
        let all: Vec<f32> = ws.iter().flat_map(|w| w.data.iter().map(|v| v.abs())).collect();
        let k = (all.len() as f64 * s).round_ties_even() as usize;
        prop_assert_eq!(torch_prune_count(all.len(), s).unwrap(), k);
        // The k first of a stable sort of the concatenation: ties in selection order.
        prop_assert_eq!(flat_pruned(&masks), stable_lowest(&all, k));
    }

    #[test]
    fn wanda_exact_count_per_row(w in matrix(6, 16), s in 0.0f64..0.99, seed in 0u64..1000) {
        let scaler: Vec<f32> = (0..w.cols).map(|j| ((seed + j as u64 * 7) % 5) as f32).collect();
        let mask = wanda(&w, &scaler, s).unwrap();
        let k = (w.cols as f64 * s) as usize;
        let score = wanda_score(&w, &scaler).unwrap();
        for r in 0..w.rows {
            prop_assert_eq!(mask.row_count(r), k);
            prop_assert_eq!(pruned_in_row(&mask, r), stable_lowest(score.row(r), k));
        }
    }

    #[test]
    fn wanda_constant_scaler_is_row_magnitude(w in matrix(6, 16), s in 0.0f64..0.99, c in 0.01f32..100.0) {
        let mask = wanda(&w, &vec![c; w.cols], s).unwrap();
        let k = (w.cols as f64 * s) as usize;
        prop_assert_eq!(&mask, &row_lowest(&w.abs(), k).unwrap());
        for r in 0..w.rows {
            let mags: Vec<f32> = w.row(r).iter().map(|v| v.abs()).collect();
            prop_assert_eq!(pruned_in_row(&mask, r), stable_lowest(&mags, k));
        }
    }

    #[test]
    fn nm_pattern_in_every_group(
        w in matrix(5, 4).prop_flat_map(|w| {
            let rows = w.rows;
            proptest::collection::vec(-3i32..=3, rows * 16)
                .prop_map(move |d| Matrix::new(rows, 16, d.into_iter().map(|v| v as f32).collect()).unwrap())
        }),
        pat in prop_oneof![Just((2usize, 4usize)), Just((4, 8)), Just((1, 4)), Just((3, 8))],
    ) {
        let (n, m) = pat;
        let mask = nm_mask(&w, n, m).unwrap();
        prop_assert!(follows_pattern(&mask, n, m));
        for r in 0..w.rows {
            for g in (0..w.cols).step_by(m) {
                let group = &w.row(r)[g..g + m];
                let expect: Vec<usize> = stable_lowest(group, n).into_iter().map(|c| c + g).collect();
                let got: Vec<usize> = (g..g + m).filter(|&c| mask.is_pruned(r, c)).collect();
                prop_assert_eq!(got, expect);
            }
        }
    }

    #[test]
    fn rtn_on_grid_and_within_half_step(
        w in matrix(4, 20),
        bits in 2u32..=8,
        group in prop_oneof![Just(None), (1usize..8).prop_map(Some)],
        sym in any::<bool>(),
    ) {
        let cfg = QuantConfig {
            bits,
            grouping: group.map_or(Grouping::PerChannel, Grouping::Group),
            sym,
        };
        let q = rtn(&w, &cfg).unwrap();
        let d = q.dequantize();
        let maxq = (1u32 << bits) - 1;
        let g = group.unwrap_or(w.cols);
        for r in 0..w.rows {
            for c in 0..w.cols {
                let code = q.codes[r * w.cols + c];
                prop_assert!(u32::from(code) <= maxq);
                let p = q.params(r, c / g);
                prop_assert_eq!(d.get(r, c), p.scale * (f32::from(code) - p.zero));
                let x = w.get(r, c);
                let lo = g * (c / g);
                let has_neg = w.row(r)[lo..(lo + g).min(w.cols)].iter().any(|&v| v < 0.0);
                // Symmetric groups without a negative weight clip (the reference quirk).
                if !sym || has_neg {
                    let tol = p.scale * 0.5 + 1e-6 * (x.abs() + p.scale);
                    prop_assert!((x - d.get(r, c)).abs() <= tol, "x {} deq {} scale {}", x, d.get(r, c), p.scale);
                }
            }
        }
    }

    #[test]
    fn gptq_with_diagonal_hessian_is_rtn(
        w in matrix(4, 12),
        diag in proptest::collection::vec(0.1f32..10.0, 12),
        bits in 2u32..=8,
        group in prop_oneof![Just(None), (1usize..6).prop_map(Some)],
        sym in any::<bool>(),
    ) {
        // No off-diagonal coupling: nothing propagates and GPTQ rounds like RTN.
        let h = Matrix::new(
            w.cols,
            w.cols,
            (0..w.cols * w.cols).map(|k| if k / w.cols == k % w.cols { diag[k / w.cols] } else { 0.0 }).collect(),
        ).unwrap();
        let quant = QuantConfig { bits, grouping: group.map_or(Grouping::PerChannel, Grouping::Group), sym };
        let cfg = GptqConfig { quant, act_order: false, hessian: HessianOpts::default() };
        prop_assert_eq!(gptq(&w, &h, &cfg).unwrap().quantized, rtn(&w, &quant).unwrap());
    }

    #[test]
    fn sparsegpt_nm_pattern_and_zeros(seed in 0u64..50, pat in prop_oneof![Just((2usize, 4usize)), Just((4, 8))]) {
        let l = layer(seed, 3, 16, 24);
        let (n, m) = pat;
        let out = sparsegpt(&l.w, &l.h, Pattern::NM { n, m }, &HessianOpts::default()).unwrap();
        prop_assert!(follows_pattern(&out.mask, n, m));
        for i in 0..out.weight.numel() {
            prop_assert_eq!(out.mask.is_pruned(i / 16, i % 16), out.weight.data[i] == 0.0);
        }
    }

    #[test]
    fn mask_bytes_round_trip(w in matrix(9, 70), s in 0.0f64..0.99) {
        let mask = magnitude(&w, s).unwrap();
        prop_assert_eq!(Mask::from_bytes(&mask.to_bytes()).unwrap(), mask);
    }
}

// ---------- the tensor kernels (a GPU's path) against the host loops, on the CPU device ----------

fn on_tensors() -> Backend {
    Backend::Tensor(candle_core::Device::Cpu)
}

/// A matrix whose width is a multiple of 4, with many ties or none.
fn nm_matrix() -> impl Strategy<Value = Matrix> {
    (1..=6usize, 1..=4usize).prop_flat_map(|(r, g)| {
        let c = 4 * g;
        let vals = prop_oneof![(-4i32..=4).prop_map(|v| v as f32 * 0.25), -10.0f32..10.0,];
        proptest::collection::vec(vals, r * c).prop_map(move |d| Matrix::new(r, c, d).unwrap())
    })
}

/// A Wanda scaler for `cols` inputs, with repeated values so that scores tie.
fn scaler(cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..cols)
        .map(|_| [0.25f32, 1.0, 4.0, 2.5][rng.random_range(0..4)])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn tensor_masks_equal_host_masks(w in matrix(6, 12), s in 0.0f64..0.99, seed in 0u64..1000) {
        let (host, dev) = (Backend::Host, on_tensors());
        prop_assert_eq!(dev.magnitude(&w, s).unwrap(), host.magnitude(&w, s).unwrap());
        let sc = scaler(w.cols, seed);
        prop_assert_eq!(dev.wanda(&w, &sc, s).unwrap(), host.wanda(&w, &sc, s).unwrap());
    }

    #[test]
    fn tensor_nm_masks_equal_host_masks(w in nm_matrix(), seed in 0u64..1000, n in 1usize..4) {
        let (host, dev) = (Backend::Host, on_tensors());
        prop_assert_eq!(dev.magnitude_nm(&w, n, 4).unwrap(), host.magnitude_nm(&w, n, 4).unwrap());
        let sc = scaler(w.cols, seed);
        prop_assert_eq!(dev.wanda_nm(&w, &sc, n, 4).unwrap(), host.wanda_nm(&w, &sc, n, 4).unwrap());
    }

    #[test]
    fn tensor_rtn_equals_host_rtn(
        w in matrix(5, 12),
        bits in 2u32..=8,
        group in prop_oneof![Just(None), (1usize..6).prop_map(Some)],
        sym in any::<bool>(),
    ) {
        let cfg = QuantConfig {
            bits,
            grouping: group.map_or(Grouping::PerChannel, Grouping::Group),
            sym,
        };
        prop_assert_eq!(on_tensors().rtn(&w, &cfg).unwrap(), Backend::Host.rtn(&w, &cfg).unwrap());
    }
}

#[test]
fn tensor_masks_equal_host_masks_at_layer_size() {
    // Wide rows and real-valued scores: the bisection's counting, not the tie path.
    let l = layer(11, 48, 256, 300);
    let sc: Vec<f32> = (0..256).map(|j| l.h.get(j, j)).collect();
    let (host, dev) = (Backend::Host, on_tensors());
    for s in [0.1, 0.5, 0.9] {
        assert_eq!(
            dev.magnitude(&l.w, s).unwrap(),
            host.magnitude(&l.w, s).unwrap()
        );
        assert_eq!(
            dev.wanda(&l.w, &sc, s).unwrap(),
            host.wanda(&l.w, &sc, s).unwrap()
        );
    }
    assert_eq!(
        dev.wanda_nm(&l.w, &sc, 2, 4).unwrap(),
        host.wanda_nm(&l.w, &sc, 2, 4).unwrap()
    );
}

/// Share of entries on which two masks differ.
fn mask_disagreement(a: &Mask, b: &Mask) -> f64 {
    let (r, c) = a.shape();
    let differ = (0..r * c)
        .filter(|&i| a.is_pruned(i / c, i % c) != b.is_pruned(i / c, i % c))
        .count();
    differ as f64 / (r * c) as f64
}

fn max_abs_diff(a: &Matrix, b: &Matrix) -> f32 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tensor_sparsegpt_agrees_with_host_sparsegpt() {
    // The lazy update is one matrix product on the tensor path and a running sum on the host:
    // weights agree to rounding, and a mask can differ only where scores were within rounding
    // of the cut.
    let l = layer(5, 40, 96, 200);
    for (pattern, blocksize) in [
        (Pattern::Unstructured(0.5), 32),
        (Pattern::Unstructured(0.7), 128),
        (Pattern::NM { n: 2, m: 4 }, 32),
    ] {
        let opts = HessianOpts {
            blocksize,
            percdamp: 0.01,
        };
        let host = Backend::Host.sparsegpt(&l.w, &l.h, pattern, &opts).unwrap();
        let dev = on_tensors().sparsegpt(&l.w, &l.h, pattern, &opts).unwrap();
        let differ = mask_disagreement(&host.mask, &dev.mask);
        let d = max_abs_diff(&host.weight, &dev.weight);
        eprintln!("{pattern:?}: masks differ on {differ}, weights by at most {d}");
        assert!(differ <= 0.002, "{pattern:?}: masks differ on {differ}");
        if differ == 0.0 {
            assert!(d < 1e-4, "{pattern:?}: weights differ by {d}");
        }
        let rel = (host.loss - dev.loss).abs() / host.loss;
        assert!(
            rel < 1e-3,
            "{pattern:?}: loss {} vs {}",
            host.loss,
            dev.loss
        );
        // Both are real reconstructions, not just the same numbers: far better than magnitude.
        let mag = recon_error(&l, &masked(&l.w, &magnitude(&l.w, 0.5).unwrap()));
        if pattern == Pattern::Unstructured(0.5) {
            assert!(recon_error(&l, &dev.weight) < 0.5 * mag);
        }
    }
}

#[test]
fn tensor_gptq_agrees_with_host_gptq() {
    let l = layer(7, 40, 96, 200);
    for (grouping, act_order, sym) in [
        (Grouping::PerChannel, false, false),
        (Grouping::Group(32), true, false),
        (Grouping::Group(40), false, true),
    ] {
        let cfg = GptqConfig {
            quant: QuantConfig {
                bits: 4,
                grouping,
                sym,
            },
            act_order,
            hessian: HessianOpts {
                blocksize: 32,
                percdamp: 0.01,
            },
        };
        let host = Backend::Host.gptq(&l.w, &l.h, &cfg).unwrap().quantized;
        let dev = on_tensors().gptq(&l.w, &l.h, &cfg).unwrap();
        let q = &dev.quantized;
        assert_eq!(
            (&q.group_index, q.group_size, q.scales.len()),
            (&host.group_index, host.group_size, host.scales.len())
        );
        // A code moves only when the propagated error left a weight within rounding of a
        // grid midpoint.
        let moved = q
            .codes
            .iter()
            .zip(&host.codes)
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            moved as f64 <= 0.002 * q.codes.len() as f64,
            "{grouping:?}: {moved} codes differ"
        );
        let d = max_abs_diff(&q.dequantize(), &host.dequantize());
        eprintln!("{grouping:?}: {moved} of {} codes differ", q.codes.len());
        let scale = host.scales.iter().fold(0f32, |a, &s| a.max(s));
        assert!(
            d <= scale * 1.0001,
            "{grouping:?}: dequantized differ by {d}"
        );
    }
}
