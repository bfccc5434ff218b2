//! Shared by the benchmarks.

use criterion::Criterion;

/// Criterion's settings. Its HTML report draws plots with plotters, which in this build has no
/// system fonts to fall back on: the embedded font is registered first.
pub fn criterion() -> Criterion {
    whittle::stages::report::plot::register_font().expect("the embedded font loads");
    Criterion::default()
}
