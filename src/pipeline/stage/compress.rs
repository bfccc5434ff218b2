//! The compression stages: prune and quantize, their methods and the keys only some methods take,
//! module selections and per-weight sparsity overrides; and the `statistics:` a calibrate stage
//! records for them.
//!
//! A `calibration:` (and `calibration_mode:`) on a method that does not read one (magnitude,
//! random, rtn, dynamic-int8) is checked but ignored: it adds no input, so that one stage can
//! sweep `method` over calibrated and uncalibrated methods alike. Every other method-specific key
//! on the wrong method is an error.

use regex::Regex;

use crate::cache::key::ParamValue;

use super::super::diag::suggest;
use super::super::interp::Origin;
use super::super::spec::*;
use super::super::yaml::Node;
use super::{checkable, list_items, number_of, Fields};

/// The method named by `method:`, and where its value came from (for messages about keys it does
/// not take when it is swept).
struct Chosen {
    name: &'static str,
    origin: Origin,
}

impl Chosen {
    /// ` (method `x` from sweep axis `a`)` when the method is swept, else nothing.
    fn note(&self) -> String {
        match &self.origin {
            Origin::Axis(a) => format!(" (method `{}` from sweep axis `{a}`)", self.name),
            _ => String::new(),
        }
    }
}

const PRUNE_METHODS: [&str; 4] = ["magnitude", "random", "wanda", "sparsegpt"];
const QUANT_METHODS: [&str; 3] = ["rtn", "gptq", "dynamic-int8"];
/// `feed-forward` and `ffn` are other names for `mlp`.
const MODULES: [&str; 6] = ["all", "attention", "mlp", "lm_head", "feed-forward", "ffn"];
const STATISTICS: [&str; 2] = ["norms", "hessian"];

const SPARSITY: &str = "a number in [0, 1)";
const BITS: &str = "an integer from 2 to 8";
const PERCDAMP: &str = "a number in (0, 1]";
const REGEXES: &str = "a list of regular expressions";
const REGEX_HELP: &str = "regexes follow the Rust `regex` crate's syntax (in double-quoted YAML \
                          strings, write `\\\\` for one backslash)";

/// Why each calibrated method needs its calibration, for the "missing" help.
fn calibration_use(method: &str) -> &'static str {
    match method {
        "wanda" => "wanda scales weights by input activation norms",
        "sparsegpt" => "sparsegpt updates the kept weights with the inverse Hessian of the inputs",
        _ => "gptq corrects rounding errors with the inverse Hessian of the inputs",
    }
}

fn chosen(
    f: &mut Fields,
    options: &[&'static str],
    default: Option<&'static str>,
) -> Option<Chosen> {
    let name = match default {
        Some(d) if !f.has("method") => d,
        Some(_) => f.choice("method", options)?,
        None => f.req_choice("method", options)?,
    };
    let origin = f
        .params
        .iter()
        .find(|p| p.key == "method")
        .map_or(Origin::Literal, |p| p.origin.clone());
    Some(Chosen { name, origin })
}

/// Reports each of `keys` given although `method` does not take it; `why` says so for a key.
fn not_taken(f: &mut Fields, method: &Chosen, keys: &[&str], why: &dyn Fn(&str) -> String) {
    for key in keys {
        if !f.has(key) {
            continue;
        }
        let msg = format!("{}{}", why(key), method.note());
        let help = match method.origin {
            Origin::Axis(_) => {
                format!("give the methods that take `{key}` a stage of their own, without the axis")
            }
            _ => format!("remove `{key}`"),
        };
        f.fail_key(key, msg, help);
    }
}

fn only_used_by(f: &mut Fields, method: &Chosen, keys: &[&str], users: &str) {
    let name = method.name;
    not_taken(f, method, keys, &|k| {
        format!("`{k}` is only used by {users}, not by {name}")
    });
}

/// `statistics:` of a calibrate stage: a non-empty list of `norms` and `hessian` without repeats
/// (a single name is a one-item list). Sorted: the order means nothing and must not change keys.
pub(super) fn statistics(f: &mut Fields) -> Vec<Statistic> {
    if !f.has("statistics") {
        return vec![Statistic::Norms];
    }
    let what = "a non-empty list of `norms`, `hessian`";
    let Some(items) = f.items("statistics", what) else {
        return Vec::new();
    };
    let listed = f
        .stage
        .param("statistics")
        .is_some_and(|r| r.as_seq().is_some());
    if items.is_empty() {
        if let Some((n, o)) = f.get("statistics") {
            let help = Some("leave `statistics` out to record `norms` only".to_string());
            f.fail(
                "statistics",
                &n,
                &o,
                "`statistics` is empty".into(),
                Some(what),
                help,
            );
        }
        return Vec::new();
    }
    match read_statistics(&items, listed) {
        Ok(s) => s,
        Err(problems) => {
            for (key, n, o, msg) in problems {
                let help = msg
                    .contains("twice")
                    .then(|| "list each statistic once".to_string());
                f.fail(&key, &n, &o, msg, Some("`norms` or `hessian`"), help);
            }
            Vec::new()
        }
    }
}

/// A wrong item of `statistics:`: its key (`statistics[i]`), value, origin and message.
type Problem = (String, Node, Origin, String);

/// The statistics named by `items`, or each problem.
fn read_statistics(items: &[(Node, Origin)], listed: bool) -> Result<Vec<Statistic>, Vec<Problem>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, (n, o)) in items.iter().enumerate() {
        let key = if listed {
            format!("statistics[{i}]")
        } else {
            "statistics".to_string()
        };
        let stat = match n.value() {
            Some(ParamValue::Str(s)) if s == "norms" => Some(Statistic::Norms),
            Some(ParamValue::Str(s)) if s == "hessian" => Some(Statistic::Hessian),
            _ => None,
        };
        match stat {
            Some(s) if out.contains(&s) => {
                let msg = format!("`{}` is listed twice in `statistics`", s.as_str());
                problems.push((key, n.clone(), o.clone(), msg));
            }
            Some(s) => out.push(s),
            None => {
                let found = n.as_scalar().map_or("", |(s, _)| s);
                let s = suggest(found, STATISTICS);
                let msg = format!("expected `norms` or `hessian`, found {}{s}", n.describe());
                problems.push((key, n.clone(), o.clone(), msg));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    out.sort();
    Ok(out)
}

/// What the calibrate instance `r` records, read from its `statistics:` at this instance's
/// point; `None` when unreadable (which the calibrate stage reports).
fn recorded(f: &Fields, r: InstanceRef) -> Option<Vec<Statistic>> {
    let Some(raw) = f.env.stages[r.stage].param("statistics") else {
        return Some(vec![Statistic::Norms]);
    };
    if !checkable(f.env, raw) {
        return None;
    }
    let items = list_items(f.env, raw, f.point).ok()?;
    let stats = read_statistics(&items, raw.as_seq().is_some()).ok()?;
    (!stats.is_empty()).then_some(stats)
}

fn list(stats: &[Statistic]) -> String {
    let names: Vec<&str> = stats.iter().map(|s| s.as_str()).collect();
    format!("[{}]", names.join(", "))
}

/// The calibration a method needs: reported if missing, and, with `calibration_mode: dense`,
/// if the calibrate stage it resolves to does not record the statistic `need`.
fn required_calibration(
    f: &mut Fields,
    method: &Chosen,
    calibration: Option<InstanceRef>,
    mode: CalibrationMode,
    need: Statistic,
) -> Option<InstanceRef> {
    let name = method.name;
    if !f.has("calibration") {
        f.bad = true;
        let path = f.path("calibration");
        let calibs: Vec<&str> = f
            .env
            .stages
            .iter()
            .filter(|s| s.kind == Some(StageKind::Calibrate))
            .map(|s| s.name.as_str())
            .collect();
        let why = calibration_use(name);
        let help = match calibs.first() {
            Some(c) => format!("add `calibration: {c}` ({why})"),
            None => format!("add a `kind: calibrate` stage and name it in `calibration:` ({why})"),
        };
        let msg = format!(
            "{name} needs `calibration:` (stage `{}`){}",
            f.stage.name,
            method.note()
        );
        f.sink.error(f.stage.mark, path, msg).with_help(help);
        return None;
    }
    let c = calibration?;
    if mode == CalibrationMode::Dense {
        if let (Some(have), Some((n, o))) = (recorded(f, c), f.get("calibration_mode")) {
            if !have.contains(&need) {
                let what = match need {
                    Statistic::Norms => "the input norms",
                    Statistic::Hessian => "the Hessian",
                };
                let calib = &f.env.stages[c.stage].name;
                let msg = format!(
                    "{name} with `calibration_mode: dense` reads {what} from `{calib}`, which \
                     records only {}",
                    list(&have)
                );
                let mut want = have.clone();
                want.push(need);
                want.sort();
                let help = format!("add `statistics: {}` to stage `{calib}`", list(&want));
                f.fail("calibration_mode", &n, &o, msg, None, Some(help));
            }
        }
    }
    Some(c)
}

/// `calibration:`, checked whatever the method (see the module's documentation).
fn calibration(f: &mut Fields) -> Option<InstanceRef> {
    let (n, o) = f.get("calibration")?;
    f.stage_ref(
        "calibration",
        &n,
        &o,
        &|k| k == StageKind::Calibrate,
        "a calibrate stage",
    )
}

fn calibration_mode(f: &mut Fields) -> CalibrationMode {
    match f.choice("calibration_mode", &["sequential", "dense"]) {
        Some("dense") => CalibrationMode::Dense,
        _ => CalibrationMode::Sequential,
    }
}

/// A sparsity value: a fraction in [0, 1).
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
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A list of regexes (`targets:`, `ignore:`), each compiled.
fn regexes(f: &mut Fields, key: &str) -> Vec<String> {
    let Some(items) = f.items(key, REGEXES) else {
        return Vec::new();
    };
    let listed = f.stage.param(key).is_some_and(|r| r.as_seq().is_some());
    let mut out = Vec::new();
    for (i, (n, o)) in items.iter().enumerate() {
        let k = if listed {
            format!("{key}[{i}]")
        } else {
            key.to_string()
        };
        let text = match n.as_scalar() {
            Some((s, _)) if !n.is_null() => s.to_string(),
            _ => {
                let msg = format!("expected a regular expression, found {}", n.describe());
                f.fail(&k, n, o, msg, Some("a regular expression"), None);
                continue;
            }
        };
        match Regex::new(&text) {
            Ok(_) => out.push(text),
            Err(e) => {
                let msg = format!("invalid regex `{text}`: {}", regex_reason(&e));
                f.fail(&k, n, o, msg, None, Some(REGEX_HELP.to_string()));
            }
        }
    }
    out
}

/// `modules:`, `targets:` and `ignore:`.
fn selection(f: &mut Fields) -> Selection {
    let group = match f.choice("modules", &MODULES) {
        Some("attention") => ModuleGroup::Attention,
        Some("mlp" | "feed-forward" | "ffn") => ModuleGroup::Mlp,
        Some("lm_head") => ModuleGroup::LmHead,
        _ => ModuleGroup::All,
    };
    let targets = regexes(f, "targets");
    // An empty list would select nothing, or everything: neither is what it says.
    if let Some((n, o)) = f
        .get("targets")
        .filter(|(n, _)| n.as_seq().is_some_and(<[Node]>::is_empty))
    {
        let help = Some("leave `targets` out to select every weight of `modules`".to_string());
        f.fail(
            "targets",
            &n,
            &o,
            "`targets` is empty".into(),
            Some(REGEXES),
            help,
        );
    }
    let ignore = regexes(f, "ignore");
    Selection {
        group,
        targets,
        ignore,
    }
}

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
        if let Err(e) = Regex::new(pattern) {
            let msg = format!("invalid regex `{pattern}`: {}", regex_reason(&e));
            f.fail(
                &key,
                &k,
                &Origin::Literal,
                msg,
                None,
                Some(REGEX_HELP.to_string()),
            );
        }
        if let Some(sparsity) = fraction(f, &key, &v, &o) {
            out.push(SparsityOverride {
                pattern: pattern.to_string(),
                sparsity,
            });
        }
    }
    out
}

fn percdamp(f: &mut Fields) -> f64 {
    f.number("percdamp", &|x| x > 0.0 && x <= 1.0, PERCDAMP)
        .unwrap_or(0.01)
}

fn blocksize(f: &mut Fields) -> usize {
    f.count("blocksize", 1, 128)
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

pub(super) fn prune(f: &mut Fields) -> Option<StageSpec> {
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
    Some(StageSpec::Prune(PruneSpec {
        model: model?,
        method,
        sparsity: sparsity?,
        pattern: pattern?,
        selection,
        overrides,
    }))
}

/// `group_size:` ≥ 1, or -1 (the default) for one group per output channel.
fn group_size(f: &mut Fields) -> Option<usize> {
    let (n, o) = f.get("group_size")?;
    match n.value() {
        Some(ParamValue::Int(-1)) => None,
        Some(ParamValue::Int(g)) if g >= 1 => Some(g as usize),
        _ => {
            let e = "an integer ≥ 1, or -1 for per-channel";
            let msg = format!("expected {e}, found {}", n.describe());
            f.fail("group_size", &n, &o, msg, Some(e), None);
            None
        }
    }
}

pub(super) fn quantize(f: &mut Fields) -> Option<StageSpec> {
    let model = f.model_ref();
    let method = chosen(f, &QUANT_METHODS, Some("rtn"));
    let calibration = calibration(f);
    let mode = calibration_mode(f);
    let bits = f.int("bits", 2, 8, BITS).map(|b| b as u32);
    let group_size = group_size(f);
    let symmetric = f.boolean("symmetric").unwrap_or(false);
    let act_order = f.boolean("act_order").unwrap_or(false);
    let percdamp = percdamp(f);
    let blocksize = blocksize(f);
    let selection = selection(f);
    let method = method?;
    if method.name == "dynamic-int8" {
        let keys = ["bits", "group_size", "symmetric", "act_order"];
        not_taken(f, &method, &keys, &|k| {
            format!("dynamic-int8 takes no `{k}`: weights are int8 per tensor")
        });
    } else if !f.has("bits") {
        f.missing("bits", &format!("add `bits:` with {BITS}"));
    }
    if method.name == "rtn" {
        only_used_by(f, &method, &["act_order"], "gptq");
    }
    if method.name != "gptq" {
        only_used_by(f, &method, &["percdamp", "blocksize"], "sparsegpt/gptq");
    }
    let gptq_calibration = match method.name {
        "gptq" => Some(required_calibration(
            f,
            &method,
            calibration,
            mode,
            Statistic::Hessian,
        )),
        _ => None,
    };
    let method = match method.name {
        "dynamic-int8" => QuantMethod::DynamicInt8,
        "rtn" => QuantMethod::Rtn {
            bits: bits?,
            group_size,
            symmetric,
        },
        _ => QuantMethod::Gptq {
            bits: bits?,
            group_size,
            symmetric,
            act_order,
            percdamp,
            blocksize,
            calibration: gptq_calibration.flatten()?,
            mode,
        },
    };
    Some(StageSpec::Quantize(QuantizeSpec {
        model: model?,
        method,
        selection,
    }))
}
