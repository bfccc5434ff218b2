//! The keys of a `calibrate` stage.

use super::{Accumulation, CalibrateSpec, Sampling};
use crate::pipeline::fields::Fields;

pub(super) fn read(f: &mut Fields) -> Option<CalibrateSpec> {
    let model = f.model_ref();
    let dataset = f.name_in("dataset", f.env.datasets, "datasets");
    let samples = f.count("samples", 1, 128);
    let seqlen = f.count("seqlen", 2, 2048);
    let sampling = match f.choice("sampling", &["random", "contiguous"]) {
        Some("contiguous") => Sampling::Contiguous,
        _ => Sampling::Random,
    };
    let seed = f.count("seed", 0, 0) as u64;
    let statistics = crate::stages::compress::statistics(f);
    let accumulation = match f.choice("accumulation", &["exact", "reference"]) {
        Some("reference") => Accumulation::Reference,
        _ => Accumulation::Exact,
    };
    Some(CalibrateSpec {
        model: model?,
        dataset: dataset?,
        samples,
        seqlen,
        sampling,
        seed,
        statistics,
        accumulation,
    })
}
