//! Evaluation tasks.
