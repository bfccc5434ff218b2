//! Evaluation tasks.

pub mod divergence;
pub mod generation;
pub mod perplexity;
pub mod template;
pub mod text_metrics;
