//! Compression kernels against hand-computed cases, property tests with independent second
//! implementations (full sorts instead of selection), and real weights from stories260K.

mod common;

use proptest::prelude::*;
use whittle::compress::magnitude::{global_threshold, magnitude, magnitude_global, magnitude_nm};
use whittle::compress::nm::{follows_pattern, nm_mask};
use whittle::compress::rtn::rtn;
use whittle::compress::wanda::{row_lowest, wanda, wanda_nm, wanda_score};
use whittle::compress::{Grouping, Mask, Matrix, QuantConfig};

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
    // Union sorted: .5 1 2 2 3 4 6 8; s=.375: index 3 -> 2; prune .5, 1, 2, 2.
    let masks = magnitude_global(&[&a, &b], 0.375).unwrap();
    assert_eq!(grid(&masks[0]), vec![vec![1, 0], vec![1, 0]]);
    assert_eq!(grid(&masks[1]), vec![vec![0, 1, 0, 1]]);
    // Layer-wise at .375 each matrix prunes floor(4*.375)+1 = 2 (no ties) and happens to agree;
    // at .5 layer-wise b also loses its 3 (index 2 of .5 2 3 6).
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
    for s in [0.1, 0.5, 0.9] {
        let mut all: Vec<f32> = ws
            .iter()
            .flat_map(|w| w.data.iter().map(|v| v.abs()))
            .collect();
        all.sort_by(f32::total_cmp);
        let t = all[(all.len() as f64 * s) as usize];
        assert_eq!(global_threshold(&refs, s).unwrap(), Some(t));
        let masks = magnitude_global(&refs, s).unwrap();
        let total: usize = masks.iter().map(Mask::count).sum();
        assert_eq!(total, all.iter().filter(|&&v| v <= t).count());
        // Layer sparsities differ under a global threshold; the union hits the target.
        assert!(total as f64 / all.len() as f64 >= s);
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
        s in 0.001f64..0.99,
    ) {
        let refs: Vec<&Matrix> = ws.iter().collect();
        let masks = magnitude_global(&refs, s).unwrap();
        let mut all: Vec<f32> = ws.iter().flat_map(|w| w.data.iter().map(|v| v.abs())).collect();
        all.sort_by(f32::total_cmp);
        let k = (all.len() as f64 * s) as usize;
        let t = all[k];
        let total: usize = masks.iter().map(Mask::count).sum();
        prop_assert_eq!(total, all.iter().filter(|&&v| v <= t).count());
        prop_assert!(total > k);
        // One matrix: global and layer-wise are the same computation.
        prop_assert_eq!(&magnitude_global(&refs[..1], s).unwrap()[0], &magnitude(&ws[0], s).unwrap());
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
    fn mask_bytes_round_trip(w in matrix(9, 70), s in 0.0f64..0.99) {
        let mask = magnitude(&w, s).unwrap();
        prop_assert_eq!(Mask::from_bytes(&mask.to_bytes()).unwrap(), mask);
    }
}
