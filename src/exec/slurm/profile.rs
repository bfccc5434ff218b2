//! The profile file (`--profile FILE`, YAML): its `executor:` section says which executor runs
//! a pipeline and how Slurm jobs are asked for. Read once here into [`Profile`], every value
//! filled in; nothing else parses it.
//!
//! ```yaml
//! executor:
//!   kind: slurm              # or local (the default); `--executor` overrides it
//!   partition: gpu           # for stages given GPUs
//!   cpu_partition: cpu       # for stages without (default: `partition`)
//!   account: mylab
//!   qos: normal
//!   time: 4h                 # default time limit of a job
//!   cpus: 4                  # CPUs per job
//!   gpus: 1                  # GPUs per job of a stage that uses an accelerator
//!   gpu_request: gpus        # `gpus` (--gpus=N) or `gres` (--gres=gpu:N)
//!   sbatch: [--constraint=a100]
//!   max_queued: 100          # jobs queued or running at once
//!   arrays: true             # sweep points of one stage go as one job array
//!   array_throttle: 8        # at most this many tasks of an array at once (%N)
//!   local: [load, report]    # stage kinds or names run in the submitting process
//!   poll: 10s                # how often squeue is asked
//!   retries: 2               # reruns after NODE_FAIL, PREEMPTED or TIMEOUT
//!   timeout_factor: 2        # a job that hit its time limit reruns with this much more
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pipeline::resources::parse_duration;

/// Which executor runs the jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorKind {
    /// Threads of this process, on `--devices`.
    Local,
    /// One Slurm job per node (`sbatch`), followed with `squeue`.
    Slurm,
}

impl ExecutorKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(ExecutorKind::Local),
            "slurm" => Some(ExecutorKind::Slurm),
            _ => None,
        }
    }
}

/// How a job asks for GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuRequest {
    /// `--gpus=N`
    Gpus,
    /// `--gres=gpu:N`, for clusters configured before `--gpus` existed.
    Gres,
}

/// The `executor:` section, every value filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// The file it came from (`None`: the defaults).
    pub path: Option<PathBuf>,
    /// `kind:`, if given.
    pub kind: Option<ExecutorKind>,
    pub partition: Option<String>,
    pub cpu_partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Seconds.
    pub time: u64,
    pub cpus: u32,
    pub gpus: u32,
    pub gpu_request: GpuRequest,
    pub sbatch: Vec<String>,
    pub max_queued: usize,
    pub arrays: bool,
    pub array_throttle: Option<usize>,
    /// Stage kinds or stage names run in the submitting process.
    pub local: Vec<String>,
    pub poll: Duration,
    pub retries: u32,
    pub timeout_factor: f64,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            path: None,
            kind: None,
            partition: None,
            cpu_partition: None,
            account: None,
            qos: None,
            time: 4 * 3600,
            cpus: 4,
            // A build without CUDA cannot use a GPU: by default its jobs ask for none.
            gpus: u32::from(cfg!(feature = "cuda")),
            gpu_request: GpuRequest::Gpus,
            sbatch: Vec::new(),
            max_queued: 100,
            arrays: true,
            array_throttle: None,
            local: Vec::new(),
            poll: Duration::from_secs(10),
            retries: 2,
            timeout_factor: 2.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read the profile {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    executor: Option<Section>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    kind: Option<String>,
    partition: Option<String>,
    cpu_partition: Option<String>,
    account: Option<String>,
    qos: Option<String>,
    time: Option<String>,
    cpus: Option<u32>,
    gpus: Option<u32>,
    gpu_request: Option<GpuRequest>,
    sbatch: Option<Vec<String>>,
    max_queued: Option<usize>,
    arrays: Option<bool>,
    array_throttle: Option<usize>,
    local: Option<Vec<String>>,
    poll: Option<String>,
    retries: Option<u32>,
    timeout_factor: Option<f64>,
}

impl Profile {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Profile::parse(path, &text)
    }

    /// Reads profile text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Profile, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: File = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut p = Profile {
            path: Some(path.to_path_buf()),
            ..Profile::default()
        };
        let Some(s) = file.executor else {
            return Ok(p);
        };
        if let Some(k) = s.kind {
            p.kind = Some(ExecutorKind::parse(&k).ok_or_else(|| {
                invalid(format!(
                    "executor.kind: expected `local` or `slurm`, found `{k}`"
                ))
            })?);
        }
        let duration = |key: &str, v: &str| {
            parse_duration(v).ok_or_else(|| {
                invalid(format!(
                    "executor.{key}: expected a duration such as `2h`, `90m`, `1s` or \
                     `1-12:00:00`, found `{v}`"
                ))
            })
        };
        if let Some(t) = &s.time {
            p.time = duration("time", t)?;
        }
        if let Some(t) = &s.poll {
            p.poll = Duration::from_secs(duration("poll", t)?);
        }
        if s.cpus == Some(0) {
            return Err(invalid("executor.cpus: a job needs at least 1 CPU".into()));
        }
        if s.max_queued == Some(0) || s.array_throttle == Some(0) {
            return Err(invalid(
                "executor.max_queued and executor.array_throttle must be at least 1".into(),
            ));
        }
        if let Some(f) = s.timeout_factor {
            if !(f.is_finite() && f >= 1.0) {
                return Err(invalid(format!(
                    "executor.timeout_factor: expected a number of at least 1, found {f}"
                )));
            }
            p.timeout_factor = f;
        }
        for (key, v) in [
            ("partition", &s.partition),
            ("cpu_partition", &s.cpu_partition),
            ("account", &s.account),
            ("qos", &s.qos),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(invalid(format!(
                        "executor.{key}: expected a name without spaces, found `{v}`"
                    )));
                }
            }
        }
        for flag in s.sbatch.iter().flatten() {
            if !flag.starts_with('-') {
                return Err(invalid(format!(
                    "executor.sbatch: `{flag}` is not an sbatch option (write `--name=value`)"
                )));
            }
        }
        p.partition = s.partition;
        p.cpu_partition = s.cpu_partition;
        p.account = s.account;
        p.qos = s.qos;
        p.cpus = s.cpus.unwrap_or(p.cpus);
        p.gpus = s.gpus.unwrap_or(p.gpus);
        p.gpu_request = s.gpu_request.unwrap_or(p.gpu_request);
        p.sbatch = s.sbatch.unwrap_or_default();
        p.max_queued = s.max_queued.unwrap_or(p.max_queued);
        p.arrays = s.arrays.unwrap_or(p.arrays);
        p.array_throttle = s.array_throttle;
        p.local = s.local.unwrap_or_default();
        p.retries = s.retries.unwrap_or(p.retries);
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile, ProfileError> {
        Profile::parse(Path::new("whittle.yaml"), text)
    }

    #[test]
    fn a_full_section() {
        let p = parse(
            "executor:\n  kind: slurm\n  partition: gpu\n  cpu_partition: cpu\n  time: 2h\n  \
             poll: 1s\n  sbatch: [--constraint=a100]\n  local: [load]\n  array_throttle: 2\n  \
             gpu_request: gres\n",
        )
        .unwrap();
        assert_eq!(p.kind, Some(ExecutorKind::Slurm));
        assert_eq!(p.partition.as_deref(), Some("gpu"));
        assert_eq!(p.time, 7200);
        assert_eq!(p.poll, Duration::from_secs(1));
        assert_eq!(p.sbatch, ["--constraint=a100"]);
        assert_eq!(p.local, ["load"]);
        assert_eq!(p.array_throttle, Some(2));
        assert_eq!(p.gpu_request, GpuRequest::Gres);
        assert_eq!(p.cpus, 4, "defaults fill the rest");
    }

    #[test]
    fn mistakes_name_the_key_and_line() {
        let e = parse("executor:\n  kind: slurm\n  partitoin: gpu\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `partitoin`"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = parse("executor:\n  time: soon\n").unwrap_err().to_string();
        assert!(e.contains("executor.time") && e.contains("`soon`"), "{e}");
        let e = parse("executor:\n  kind: pbs\n").unwrap_err().to_string();
        assert!(e.contains("`local` or `slurm`"), "{e}");
        let e = parse("executor:\n  sbatch: [constraint=a100]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an sbatch option"), "{e}");
    }
}
