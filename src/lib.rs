//! whittle: declarative LLM-compression experiments.
//!
//! A YAML pipeline describes a DAG of stages (load → calibrate → prune / quantize → evaluate →
//! report) with sweeps over named axes. The engine validates the file ([`pipeline`]), expands it
//! into a graph of stage instances keyed by content ([`plan`]), and runs what is not already in the
//! content-addressed [`cache`] on the devices it has ([`exec`]).
//!
//! The layers, from the outside in:
//! - [`pipeline`]: YAML with positions, sweeps, validation into typed [`pipeline::spec`] values.
//! - [`plan`]: the DAG and each node's cache key; why a node must run.
//! - [`cache`]: atomic entries with manifests, file-hash memo, run records, gc.
//! - [`exec`]: the scheduler (what runs when, on which device), the executor that runs each job,
//!   and progress.
//! - [`stages`]: one module per stage kind; each a function of its inputs.
//! - [`model`], [`capture`], [`compress`], [`eval`], [`report`]: the numerical work.
//! - [`train`]: the quickstart's own small model, trained on a synthetic world of facts.

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
