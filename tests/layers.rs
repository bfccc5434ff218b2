//! The library's layers (ARCHITECTURE.md): a module imports only from its own layer or below.
//! Read from the sources, so that an upward `use crate::…` fails here, not in review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. `pipeline` and `stages` share a layer: the loader
/// reads each stage with its kind's reader, which uses the loader's field accessors.
const LAYERS: &[&[&str]] = &[
    &["cache", "cancel", "compress", "data", "table"],
    &["model"],
    &["capture", "eval", "overlay", "train"],
    &["pipeline", "stages"],
    &["plan"],
    &["exec", "export", "show"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a file names as `crate::<module>`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `$crate::…` in macros and `crate::ENGINE_VERSION`-style items at the root are no layer.
        let macro_path = rest[..i].ends_with('$');
        if !macro_path && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
            out.push(name);
        }
        rest = after;
    }
    out
}

/// Each source file's own module and the modules it imports.
fn imports() -> BTreeMap<PathBuf, (String, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        out.insert(rel.to_path_buf(), (module, crate_paths(&text)));
    }
    out
}

#[test]
fn every_library_module_has_a_layer() {
    for (file, (module, _)) in imports() {
        // The binary and the crate root are above every layer.
        if ["main", "cli", "lib"].contains(&module.as_str()) {
            continue;
        }
        assert!(
            layer_of(&module).is_some(),
            "src/{} belongs to `{module}`, which has no layer: add it to LAYERS and to \
             ARCHITECTURE.md",
            file.display()
        );
    }
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let mut upward = Vec::new();
    for (file, (module, deps)) in imports() {
        let Some(own) = layer_of(&module) else {
            continue;
        };
        for dep in deps {
            if layer_of(&dep).is_some_and(|l| l > own) {
                upward.push(format!(
                    "src/{} ({module}) imports crate::{dep}",
                    file.display()
                ));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

/// The planner and the executor use the stage registry's surface (`StageSpec`, `StageKind`,
/// `Dag`, …), never a kind's module.
#[test]
fn plan_and_exec_use_no_stage_kind_internals() {
    const KINDS: &[&str] = &[
        "load",
        "train",
        "calibrate",
        "prune",
        "quantize",
        "evaluate",
        "report",
        "compress",
    ];
    let mut found = Vec::new();
    for (file, (module, _)) in imports() {
        if !["plan", "exec"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src")
                .join(&file),
        )
        .unwrap();
        for kind in KINDS {
            if text.contains(&format!("stages::{kind}::")) {
                found.push(format!("src/{} names stages::{kind}", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_scanner_sees_imports() {
    let paths = crate_paths("use crate::plan::{Plan}; let x = $crate::cache::key; crate::ENGINE");
    assert_eq!(paths, ["plan"]);
}
