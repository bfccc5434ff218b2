//! Evaluation tasks: the numbers the `evaluate` stage reports.
//!
//! - [`perplexity`]: WikiText windows, sliding windows, per-document.
//! - [`divergence`]: Jensen-Shannon, KL and top-1 agreement against a reference model.
//! - [`knowledge`] over [`lama`] facts: P@k and MRR of the object.
//! - [`choice`]: lm-evaluation-harness multiple choice, scored by [`loglik`].
//! - [`generation`]: greedy decoding scored by [`text_metrics`] (EM, F1, ROUGE-1).
//! - [`task_file`]: reading and checking YAML task files; [`template`]: the `{{field}}`
//!   templates they write.

pub mod choice;
pub mod divergence;
pub mod generation;
pub mod knowledge;
pub mod lama;
pub mod loglik;
pub mod perplexity;
pub mod task_file;
pub mod template;
pub mod text_metrics;
