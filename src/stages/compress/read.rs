//! The compression stages: prune and quantize, their methods and the keys only some methods take,
//! module selections and per-weight sparsity overrides; and the `statistics:` a calibrate stage
//! records for them.
//!
//! A `calibration:` (and `calibration_mode:`) on a method that does not read one (magnitude,
//! random, rtn, dynamic-int8) is checked but ignored: it adds no input, so that one stage can
//! sweep `method` over calibrated and uncalibrated methods alike. Every other method-specific key
//! on the wrong method is an error.

use super::{CalibrationMode, ModuleGroup, NameRegex, Selection};
use crate::cache::key::ParamValue;
use crate::pipeline::diag::suggest;
use crate::pipeline::fields::{checkable, list_items, Fields};
use crate::pipeline::interp::Origin;
use crate::pipeline::spec::InstanceRef;
use crate::pipeline::yaml::Node;
use crate::stages::calibrate::Statistic;
use crate::stages::StageKind;

/// The method named by `method:`, and where its value came from (for messages about keys it does
/// not take when it is swept).
pub(crate) struct Chosen {
    pub(crate) name: &'static str,
    origin: Origin,
}

impl Chosen {
    /// ` (method `x` from sweep axis `a`)` when the method is swept, else nothing.
    pub(crate) fn note(&self) -> String {
        match &self.origin {
            Origin::Axis(a) => format!(" (method `{}` from sweep axis `{a}`)", self.name),
            _ => String::new(),
        }
    }
}

/// `feed-forward` and `ffn` are other names for `mlp`.
const MODULES: [&str; 7] = [
    "all",
    "attention",
    "mlp",
    "lm_head",
    "feed-forward",
    "ffn",
    "attention_output",
];
const STATISTICS: [&str; 2] = ["norms", "hessian"];

pub(crate) const SPARSITY: &str = "a number in [0, 1)";
pub(crate) const BITS: &str = "an integer from 2 to 8";
pub(crate) const PERCDAMP: &str = "a number in (0, 1]";
pub(crate) const REGEXES: &str = "a list of regular expressions";
pub(crate) const REGEX_HELP: &str =
    "regexes follow the Rust `regex` crate's syntax (in double-quoted YAML \
                          strings, write `\\\\` for one backslash)";

/// Why each calibrated method needs its calibration, for the "missing" help.
fn calibration_use(method: &str) -> &'static str {
    match method {
        "wanda" => "wanda scales weights by input activation norms",
        "sparsegpt" => "sparsegpt updates the kept weights with the inverse Hessian of the inputs",
        _ => "gptq corrects rounding errors with the inverse Hessian of the inputs",
    }
}

pub(crate) fn chosen(
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
pub(crate) fn not_taken(
    f: &mut Fields,
    method: &Chosen,
    keys: &[&str],
    why: &dyn Fn(&str) -> String,
) {
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

pub(crate) fn only_used_by(f: &mut Fields, method: &Chosen, keys: &[&str], users: &str) {
    let name = method.name;
    not_taken(f, method, keys, &|k| {
        format!("`{k}` is only used by {users}, not by {name}")
    });
}

/// `statistics:` of a calibrate stage: a list of `norms` and `hessian` without repeats (a single
/// name is a one-item list). Sorted: the order means nothing and must not change keys. An empty
/// list records the windows only, which is all a sequential method reads.
pub(crate) fn statistics(f: &mut Fields) -> Vec<Statistic> {
    if !f.has("statistics") {
        return vec![Statistic::Norms];
    }
    let what = "a list of `norms`, `hessian` (empty: windows only)";
    let Some(items) = f.items("statistics", what) else {
        return Vec::new();
    };
    let listed = f
        .stage
        .param("statistics")
        .is_some_and(|r| r.as_seq().is_some());
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
    read_statistics(&items, raw.as_seq().is_some()).ok()
}

fn list(stats: &[Statistic]) -> String {
    let names: Vec<&str> = stats.iter().map(|s| s.as_str()).collect();
    format!("[{}]", names.join(", "))
}

/// The calibration a method needs: reported if missing, and, with `calibration_mode: dense`,
/// if the calibrate stage it resolves to does not record the statistic `need`.
pub(crate) fn required_calibration(
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
                let recorded = if have.is_empty() {
                    "records the windows only (`statistics: []`)".to_string()
                } else {
                    format!("records only {}", list(&have))
                };
                let msg = format!(
                    "{name} with `calibration_mode: dense` reads {what} from `{calib}`, which \
                     {recorded}"
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
pub(crate) fn calibration(f: &mut Fields) -> Option<InstanceRef> {
    let (n, o) = f.get("calibration")?;
    f.stage_ref(
        "calibration",
        &n,
        &o,
        &|k| k == StageKind::Calibrate,
        "a calibrate stage",
    )
}

pub(crate) fn calibration_mode(f: &mut Fields) -> CalibrationMode {
    match f.choice("calibration_mode", &["sequential", "dense"]) {
        Some("dense") => CalibrationMode::Dense,
        _ => CalibrationMode::Sequential,
    }
}

/// A sparsity value: a fraction in [0, 1).
pub(crate) fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A list of regexes (`targets:`, `ignore:`), each compiled.
pub(crate) fn regexes(f: &mut Fields, key: &str) -> Vec<NameRegex> {
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
        match NameRegex::new(&text) {
            Ok(r) => out.push(r),
            Err(e) => {
                let msg = format!("invalid regex `{text}`: {}", regex_reason(&e));
                f.fail(&k, n, o, msg, None, Some(REGEX_HELP.to_string()));
            }
        }
    }
    out
}

/// `modules:`, `targets:` and `ignore:`.
pub(crate) fn selection(f: &mut Fields) -> Selection {
    let group = match f.choice("modules", &MODULES) {
        Some("attention") => ModuleGroup::Attention,
        Some("mlp" | "feed-forward" | "ffn") => ModuleGroup::Mlp,
        Some("lm_head") => ModuleGroup::LmHead,
        Some("attention_output") => ModuleGroup::AttentionOutput,
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

pub(crate) fn percdamp(f: &mut Fields) -> f64 {
    f.number("percdamp", &|x| x > 0.0 && x <= 1.0, PERCDAMP)
        .unwrap_or(0.01)
}

pub(crate) fn blocksize(f: &mut Fields) -> usize {
    f.count("blocksize", 1, 128)
}
