//! Evaluation tasks.

pub mod choice;
pub mod knowledge;
pub mod lama;
pub mod loglik;
pub mod perplexity;
pub mod template;
