//! whittle: declarative LLM-compression experiments.
//!
//! A YAML pipeline describes a DAG of stages (load → calibrate → prune / quantize → evaluate →
//! report) with sweeps over named axes. The engine validates the file ([`pipeline`]), expands it
//! into a graph of stage instances keyed by content ([`plan`]), and runs what is not already in the
//! content-addressed [`cache`] on the devices it has ([`exec`]).
//!
//! The layers, from the outside in (ARCHITECTURE.md draws them; `tests/layers.rs` keeps every
//! import pointing down):
//! - [`exec`], [`export`], [`show`]: the scheduler (what runs when, on which device), the
//!   executor that runs each job; the read-only and export commands.
//! - [`plan`]: the rebuilder: the DAG and each node's cache key; why a node must run.
//! - [`pipeline`] and [`stages`]: YAML with positions, sweeps and field accessors; one folder per
//!   stage kind (its spec, key, reader and execution) behind the [`stages::Kind`] trait.
//! - [`capture`], [`eval`], [`train`], [`overlay`]: calibration statistics, evaluators, the
//!   quickstart's own small model, the stored format of compressed weights.
//! - [`model`]: model families behind one seam; [`compress`], [`cache`], [`data`], [`table`],
//!   [`cancel`]: kernels, the content-addressed cache, datasets, tables, cancellation.

pub mod cache;
pub mod cancel;
pub mod capture;
pub mod compress;
pub mod data;
pub mod eval;
pub mod exec;
pub mod export;
pub mod model;
pub mod overlay;
pub mod pipeline;
pub mod plan;
pub mod show;
pub mod stages;
pub mod table;
pub mod train;

/// The engine version recorded in manifests, run records and provenance: the crate version, and
/// `+<commit>` (short git hash, `-dirty` with uncommitted changes) when built from a checkout.
/// Never part of a cache key: keys stay stable across commits.
pub const ENGINE_VERSION: &str = env!("WHITTLE_ENGINE_VERSION");
