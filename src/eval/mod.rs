//! Evaluation tasks.

pub mod perplexity;
pub mod template;
