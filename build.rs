//! The engine version (`WHITTLE_ENGINE_VERSION`): the crate version, plus `+<commit>` (short git
//! hash, `-dirty` when tracked files differ from it) when built from a git checkout. It goes into
//! manifests, run records and provenance only, never into cache keys.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&dir);
    let mut commit = String::new();
    if let Some(hash) = git(dir, &["rev-parse", "--short=12", "HEAD"]) {
        commit = hash;
        let dirty = git(dir, &["status", "--porcelain", "--untracked-files=no"]);
        if dirty.is_some_and(|d| !d.is_empty()) {
            commit.push_str("-dirty");
        }
        // Rerun when HEAD moves or the tree changes.
        for (arg, file) in [("--git-dir", "HEAD"), ("--git-dir", "index")] {
            if let Some(d) = git(dir, &["rev-parse", arg]) {
                println!(
                    "cargo:rerun-if-changed={}",
                    dir.join(d).join(file).display()
                );
            }
        }
        if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
            if let Some(d) = git(dir, &["rev-parse", "--git-common-dir"]) {
                println!("cargo:rerun-if-changed={}", dir.join(d).join(r).display());
            }
        }
        println!("cargo:rerun-if-changed=src");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let mut version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    if !commit.is_empty() {
        version = format!("{version}+{commit}");
    }
    println!("cargo:rustc-env=WHITTLE_ENGINE_VERSION={version}");
}
