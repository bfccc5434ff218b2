//! Pipeline files: YAML with positions, sweeps, and validation into typed specs.

pub mod spec;
