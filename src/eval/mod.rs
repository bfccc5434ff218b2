//! Evaluation tasks.

pub mod perplexity;
