//! Pipeline files: YAML with positions, sweeps, and validation into typed specs.

pub mod diag;
pub mod spec;
pub mod yaml;
