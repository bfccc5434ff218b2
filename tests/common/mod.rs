//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The project's shared assets (`../shared` beside the repository root).
///
/// Under CI (`CI=true`) a missing asset is a failure; elsewhere the test is skipped with a reason.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared");
    let path = root.join(rel);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("shared asset {} is missing under CI", path.display());
    }
    eprintln!("skipping: shared asset {} not found", path.display());
    None
}

/// Returns early from the test when a shared asset is missing (outside CI).
#[macro_export]
macro_rules! require_shared {
    ($rel:expr) => {
        match common::shared($rel) {
            Some(p) => p,
            None => return,
        }
    };
}
