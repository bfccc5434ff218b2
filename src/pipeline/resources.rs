//! A stage's `resources:`: what it asks of a cluster job (GPUs, CPUs, memory, time, partition,
//! or to stay in the submitting process). Read once per stage, never part of a key: the same
//! computation on another partition is the same entry. Also the one reader of durations
//! (`2h`, `1-12:00:00`) and sizes (`24G`) that the pipeline and the executor profile share.

use super::diag::{one_of, suggest, Sink};
use super::schema::entries;
use super::yaml::{join, Node};
use crate::cache::key::ParamValue;

/// What a stage asks of the job that computes it; unset fields take the profile's defaults and
/// the stage's own estimate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub gpus: Option<u32>,
    pub cpus: Option<u32>,
    /// Bytes.
    pub memory: Option<u64>,
    /// Seconds.
    pub time: Option<u64>,
    pub partition: Option<String>,
    /// Run in the submitting process instead of as a cluster job.
    pub local: Option<bool>,
}

pub const RESOURCE_KEYS: [&str; 6] = ["gpus", "cpus", "memory", "time", "partition", "local"];

/// A duration: `90s`, `30m`, `2h`, `1d`, combined (`1h30m`), or Slurm's `[D-]HH:MM[:SS]`.
/// `None` for anything else, zero included.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.contains(':') {
        let (days, rest) = match s.split_once('-') {
            Some((d, r)) => (d.parse::<u64>().ok()?, r),
            None => (0, s),
        };
        let parts: Vec<u64> = rest
            .split(':')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        let (h, m, sec) = match parts.as_slice() {
            [h, m] => (*h, *m, 0),
            [h, m, s] => (*h, *m, *s),
            _ => return None,
        };
        if m >= 60 || sec >= 60 {
            return None;
        }
        let total = days * 86400 + h * 3600 + m * 60 + sec;
        return (total > 0).then_some(total);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        total = total.checked_add(num.parse::<u64>().ok()?.checked_mul(unit)?)?;
        num.clear();
    }
    if !num.is_empty() {
        return None; // a number without a unit is ambiguous
    }
    (total > 0).then_some(total)
}

/// A byte count with an optional binary unit: `4G`, `4GiB`, `512M`, `1048576`.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| (n * (1u64 << shift) as f64) as u64)
}

/// Reads a stage's `resources:` map at `path` (`stages.<name>.resources`).
pub(crate) fn read(node: &Node, path: &str, sink: &mut Sink) -> Resources {
    let mut r = Resources::default();
    let Some(fields) = entries(node, path, sink) else {
        return r;
    };
    for (key, k, v) in fields {
        let kp = join(path, key);
        let text = match v.as_scalar() {
            Some((t, _)) if !v.is_null() => t,
            _ => {
                sink.error(
                    v.mark,
                    &kp,
                    format!("expected a value for `{key}`, found {}", v.describe()),
                );
                continue;
            }
        };
        if text.contains("${") {
            sink.error(v.mark, &kp, "`resources` cannot use sweep axes")
                .with_help("resources apply to every instance of the stage");
            continue;
        }
        let count = |what: &str, sink: &mut Sink| match v.value() {
            Some(ParamValue::Int(n)) if (0..=4096).contains(&n) => Some(n as u32),
            _ => {
                sink.error(v.mark, &kp, format!("expected {what}, found `{text}`"))
                    .with_expected(what.to_string());
                None
            }
        };
        match key {
            "gpus" => r.gpus = count("a whole number of GPUs (0 or more)", sink),
            "cpus" => {
                r.cpus = count("a whole number of CPUs (1 or more)", sink).and_then(|n| {
                    if n == 0 {
                        sink.error(v.mark, &kp, "a job needs at least 1 CPU")
                            .with_expected("1 or more");
                        None
                    } else {
                        Some(n)
                    }
                })
            }
            "memory" => match parse_size(text).filter(|&b| b > 0) {
                Some(b) => r.memory = Some(b),
                None => {
                    sink.error(v.mark, &kp, format!("expected a size, found `{text}`"))
                        .with_expected("a size such as `24G` or `512M`");
                }
            },
            "time" => match parse_duration(text) {
                Some(t) => r.time = Some(t),
                None => {
                    sink.error(v.mark, &kp, format!("expected a duration, found `{text}`"))
                        .with_expected("a duration such as `2h`, `90m`, `1d12h` or `1-12:00:00`");
                }
            },
            "partition" => {
                if text.is_empty() || text.contains(char::is_whitespace) {
                    sink.error(
                        v.mark,
                        &kp,
                        format!("expected a partition name, found `{text}`"),
                    );
                } else {
                    r.partition = Some(text.to_string());
                }
            }
            "local" => match v.value() {
                Some(ParamValue::Bool(b)) => r.local = Some(b),
                _ => {
                    sink.error(
                        v.mark,
                        &kp,
                        format!("expected true or false, found `{text}`"),
                    )
                    .with_help("`local: true` runs the stage in the submitting process");
                }
            },
            other => {
                let s = suggest(other, RESOURCE_KEYS);
                sink.error(
                    k.mark,
                    &kp,
                    format!("unknown key `{other}` in `resources`{s}"),
                )
                .with_expected(one_of(&RESOURCE_KEYS));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("2h"), Some(7200));
        assert_eq!(parse_duration("1d12h"), Some(86400 + 12 * 3600));
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("02:30:00"), Some(9000));
        assert_eq!(parse_duration("1-00:00:00"), Some(86400));
        assert_eq!(parse_duration("10:00"), Some(36000));
        for bad in ["", "2", "0h", "2x", "h", "1:60:00", "a-01:00:00", "1:2:3:4"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("4Q"), None);
        assert_eq!(parse_size("G"), None);
    }
}
