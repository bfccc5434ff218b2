//! The LLaMA-family model runtime.
