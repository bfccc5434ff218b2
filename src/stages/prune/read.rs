//! The keys of a `prune` stage: the method and what it needs, the pattern, the sparsity (with
//! per-weight overrides) and the selection.

use super::{Pattern, PruneMethod, PruneSpec, Scope, Sparsity, SparsityOverride};
use crate::cache::key::ParamValue;
use crate::pipeline::diag::suggest;
use crate::pipeline::fields::{number_of, Fields};
use crate::pipeline::interp::Origin;
use crate::pipeline::yaml::Node;
use crate::stages::calibrate::Statistic;
use crate::stages::compress::read::*;
use crate::stages::compress::NameRegex;

const PRUNE_METHODS: [&str; 4] = ["magnitude", "random", "wanda", "sparsegpt"];

fn fraction(f: &mut Fields, key: &str, n: &Node, o: &Origin) -> Option<Sparsity> {
    let x = number_of(n);
    let s = x.and_then(Sparsity::new);
    if s.is_none() {
        let msg = format!("expected {SPARSITY}, found {}", n.describe());
        let help = x
            .filter(|x| (1.0..=100.0).contains(x))
            .map(|_| "sparsity is a fraction: write 0.5 for 50%".to_string());
        f.fail(key, n, o, msg, Some(SPARSITY), help);
    }
    s
}

/// `unstructured`, `rows` or `N:M` with 0 < N < M.
fn pattern(f: &mut Fields) -> Option<Pattern> {
    let (n, o) = f.get("pattern")?;
    let expected = "`unstructured`, `rows` or `N:M` (e.g. `2:4`)";
    let text = match n.value() {
        Some(ParamValue::Str(s)) => s,
        _ => {
            let msg = format!("expected {expected}, found {}", n.describe());
            f.fail("pattern", &n, &o, msg, Some(expected), None);
            return None;
        }
    };
    match text.as_str() {
        "unstructured" => return Some(Pattern::Unstructured),
        "rows" => return Some(Pattern::Rows),
        _ => {}
    }
    let parsed = text.split_once(':').and_then(|(a, b)| {
        Some((
            a.trim().parse::<usize>().ok()?,
            b.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((nn, m)) if nn > 0 && nn < m => Some(Pattern::NM { n: nn, m }),
        Some((nn, m)) => {
            let msg = format!("pattern `{text}` needs 0 < N < M, found N = {nn}, M = {m}");
            let help = Some(format!(
                "N:M zeroes N of every M weights; e.g. `2:4`{}",
                if m > 0 && m < nn {
                    format!(" (did you mean `{m}:{nn}`?)")
                } else {
                    String::new()
                }
            ));
            f.fail("pattern", &n, &o, msg, Some(expected), help);
            None
        }
        None => {
            let s = suggest(&text, ["unstructured", "rows"]);
            let msg = format!("expected {expected}, found {}{s}", n.describe());
            f.fail("pattern", &n, &o, msg, Some(expected), None);
            None
        }
    }
}

/// `sparsity:`; implied by an N:M pattern (and then, if given, must agree with it).
fn sparsity(f: &mut Fields, pattern: Option<Pattern>) -> Option<Sparsity> {
    if !f.has("sparsity") {
        match pattern? {
            Pattern::NM { n, m } => return Sparsity::new(n as f64 / m as f64),
            Pattern::Unstructured => f.missing(
                "sparsity",
                "add `sparsity:` with the fraction of weights to zero",
            ),
            Pattern::Rows => f.missing(
                "sparsity",
                "add `sparsity:` with the fraction of each matrix's rows to remove",
            ),
        }
        return None;
    }
    let (n, o) = f.get("sparsity")?;
    let s = fraction(f, "sparsity", &n, &o)?;
    if let Some(Pattern::NM { n: pn, m }) = pattern {
        let implied = pn as f64 / m as f64;
        if (s.get() - implied).abs() > 1e-9 {
            let msg = format!(
                "sparsity {} does not match pattern `{pn}:{m}`, which prunes {implied}",
                s.get()
            );
            let help = Some("leave `sparsity` out with an N:M pattern".to_string());
            f.fail("sparsity", &n, &o, msg, None, help);
            return None;
        }
    }
    Some(s)
}

/// The regex crate's reason, on one line (its message draws the pattern with a caret).
/// `overrides:`, a map from weight-name regex to sparsity, in file order.
fn overrides(f: &mut Fields) -> Vec<SparsityOverride> {
    let what = "a map from weight-name regex to sparsity";
    let Some(entries) = f.map_entries("overrides", what) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v, o) in entries {
        let Some((pattern, _)) = k.as_scalar().filter(|_| !k.is_null()) else {
            let msg = format!(
                "expected a regular expression as key, found {}",
                k.describe()
            );
            f.fail("overrides", &k, &Origin::Literal, msg, None, None);
            continue;
        };
        let key = format!("overrides.{pattern}");
        let regex = match NameRegex::new(pattern) {
            Ok(r) => Some(r),
            Err(e) => {
                let msg = format!("invalid regex `{pattern}`: {}", regex_reason(&e));
                f.fail(
                    &key,
                    &k,
                    &Origin::Literal,
                    msg,
                    None,
                    Some(REGEX_HELP.to_string()),
                );
                None
            }
        };
        if let (Some(sparsity), Some(pattern)) = (fraction(f, &key, &v, &o), regex) {
            out.push(SparsityOverride { pattern, sparsity });
        }
    }
    out
}

/// Which patterns and overrides the method (and scope) can do; each mismatch reported.
fn check_pattern(f: &mut Fields, method: &Chosen, pattern: Pattern, scope: Scope) {
    let at = |f: &mut Fields, key: &str| f.get(key);
    let name = method.name;
    if pattern == Pattern::Rows && name != "magnitude" {
        if let Some((n, o)) = at(f, "pattern") {
            let msg = format!(
                "pattern `rows` is only supported by magnitude pruning, not {name}{}",
                method.note()
            );
            let help = "`rows` removes the output rows of smallest L1 norm: use `method: \
                        magnitude`, or an unstructured or N:M pattern";
            f.fail("pattern", &n, &o, msg, None, Some(help.into()));
        }
    }
    if name == "random" && pattern != Pattern::Unstructured {
        if let Some((n, o)) = at(f, "pattern") {
            let msg = format!(
                "random pruning supports only `pattern: unstructured`, found `{pattern}`{}",
                method.note()
            );
            f.fail("pattern", &n, &o, msg, None, None);
        }
    }
    let global = name == "magnitude" && scope == Scope::Global;
    if global && pattern != Pattern::Unstructured {
        if let Some((n, o)) = at(f, "scope") {
            let msg = format!("`scope: global` needs `pattern: unstructured`, found `{pattern}`");
            let help = "a global threshold ranks the weights of every selected matrix together; \
                        N:M groups and rows are chosen within each matrix: use `scope: layer`";
            f.fail("scope", &n, &o, msg, None, Some(help.into()));
        }
    }
    if !f.has("overrides") {
        return;
    }
    if pattern != Pattern::Unstructured {
        let help = match pattern {
            Pattern::Rows => "`overrides` need `pattern: unstructured`",
            _ => {
                "N:M prunes exactly N of every M weights in every matrix; `overrides` need \
                  `pattern: unstructured`"
            }
        };
        let msg = format!("`overrides` cannot be used with pattern `{pattern}`");
        f.fail_key("overrides", msg, help.into());
    } else if global {
        let help = "a global threshold is shared by every selected matrix; use `scope: layer` \
                    to give some matrices a sparsity of their own";
        f.fail_key(
            "overrides",
            "`overrides` cannot be used with `scope: global`".into(),
            help.into(),
        );
    }
}

pub(super) fn read(f: &mut Fields) -> Option<PruneSpec> {
    let model = f.model_ref();
    let method = chosen(f, &PRUNE_METHODS, None);
    let pattern = if f.has("pattern") {
        pattern(f)
    } else {
        Some(Pattern::Unstructured)
    };
    let sparsity = sparsity(f, pattern);
    let calibration = calibration(f);
    let mode = calibration_mode(f);
    let scope = match f.choice("scope", &["layer", "global"]) {
        Some("global") => Scope::Global,
        _ => Scope::Layer,
    };
    let seed = f.int("seed", 0, i64::MAX, "an integer ≥ 0").unwrap_or(0) as u64;
    let percdamp = percdamp(f);
    let blocksize = blocksize(f);
    let selection = selection(f);
    let overrides = overrides(f);
    let method = method?;
    let name = method.name;
    if name != "magnitude" {
        only_used_by(f, &method, &["scope"], "magnitude");
    }
    if name != "random" {
        only_used_by(f, &method, &["seed"], "random");
    }
    if name != "sparsegpt" {
        only_used_by(f, &method, &["percdamp", "blocksize"], "sparsegpt/gptq");
    }
    if let Some(p) = pattern {
        check_pattern(f, &method, p, scope);
    }
    let method = match name {
        "magnitude" => PruneMethod::Magnitude { scope },
        "random" => PruneMethod::Random { seed },
        "wanda" => PruneMethod::Wanda {
            calibration: required_calibration(f, &method, calibration, mode, Statistic::Norms)?,
            mode,
        },
        _ => PruneMethod::SparseGpt {
            calibration: required_calibration(f, &method, calibration, mode, Statistic::Hessian)?,
            mode,
            percdamp,
            blocksize,
        },
    };
    Some(PruneSpec {
        model: model?,
        method,
        sparsity: sparsity?,
        pattern: pattern?,
        selection,
        overrides,
    })
}
