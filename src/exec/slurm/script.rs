//! What each node asks of Slurm ([`Request`], from the stage's estimate, its `resources:` and
//! the profile), and the batch script that runs `whittle run-node` for one node or, as a job
//! array, for several nodes of one stage.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::profile::{GpuRequest, Profile};
use crate::exec::device::{DeviceKind, Need};
use crate::plan::Plan;

/// What one node's job asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Runs in the submitting process instead (`resources: {local: true}`, or the profile's
    /// `local:`).
    pub local: bool,
    pub partition: Option<String>,
    pub cpus: u32,
    pub gpus: u32,
    /// Bytes.
    pub memory: u64,
    /// Seconds.
    pub time: u64,
}

impl Request {
    /// The device `whittle run-node` uses inside the job: the job's first GPU, if it has any.
    pub fn device(&self) -> DeviceKind {
        if self.gpus > 0 {
            DeviceKind::Cuda(0)
        } else {
            DeviceKind::Cpu
        }
    }

    /// Whether two nodes' jobs ask for the same, so that they can be one job array.
    pub fn same_shape(&self, other: &Request) -> bool {
        self == other
    }

    /// Memory as `sbatch --mem` takes it: whole MiB, rounded up.
    pub fn mem_mib(&self) -> u64 {
        self.memory.div_ceil(1 << 20).max(1)
    }
}

/// What a `whittle` process holds besides the stage's own estimate (binary, tokenizer, buffers),
/// added to each job's `--mem`.
pub const PROCESS_MEMORY: u64 = 512 << 20;

/// Each node's request: the stage's own estimate (`needs`: memory, whether an accelerator
/// helps), overridden by its `resources:`, with the profile's defaults for the rest.
pub fn requests(plan: &Plan, profile: &Profile, needs: &[Need]) -> Vec<Request> {
    plan.nodes
        .iter()
        .zip(needs)
        .map(|(node, need)| {
            let stage = node
                .instances
                .first()
                .map(|r| &plan.pipeline.stages[r.stage]);
            let res = stage.map(|s| s.resources.clone()).unwrap_or_default();
            let kind = node.kind();
            let local = res.local.unwrap_or_else(|| {
                profile
                    .local
                    .iter()
                    .any(|l| l == kind.as_str() || *l == node.stage)
            });
            let gpus = res
                .gpus
                .unwrap_or(if need.accelerated { profile.gpus } else { 0 });
            let partition = res.partition.or_else(|| {
                if gpus == 0 {
                    profile
                        .cpu_partition
                        .clone()
                        .or_else(|| profile.partition.clone())
                } else {
                    profile.partition.clone()
                }
            });
            Request {
                local,
                partition,
                cpus: res.cpus.unwrap_or(profile.cpus),
                gpus,
                memory: res.memory.unwrap_or(need.memory + PROCESS_MEMORY),
                time: res.time.unwrap_or(profile.time),
            }
        })
        .collect()
}

/// `D-HH:MM:SS`, as `--time` takes it.
pub fn slurm_time(seconds: u64) -> String {
    let (d, rest) = (seconds / 86400, seconds % 86400);
    format!(
        "{d}-{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The `sbatch` options of a request, as `#SBATCH` lines carry them.
pub fn sbatch_options(req: &Request, profile: &Profile, name: &str) -> Vec<String> {
    let mut o = vec![format!("--job-name={name}")];
    if let Some(p) = &req.partition {
        o.push(format!("--partition={p}"));
    }
    if let Some(a) = &profile.account {
        o.push(format!("--account={a}"));
    }
    if let Some(q) = &profile.qos {
        o.push(format!("--qos={q}"));
    }
    o.push("--nodes=1".into());
    o.push("--ntasks=1".into());
    o.push(format!("--cpus-per-task={}", req.cpus));
    o.push(format!("--mem={}M", req.mem_mib()));
    if req.gpus > 0 {
        o.push(match profile.gpu_request {
            GpuRequest::Gpus => format!("--gpus={}", req.gpus),
            GpuRequest::Gres => format!("--gres=gpu:{}", req.gpus),
        });
    }
    o.push(format!("--time={}", slurm_time(req.time)));
    o.extend(profile.sbatch.iter().cloned());
    o
}

/// One node of a batch script: the task that computes it.
#[derive(Clone, Debug)]
pub struct Task {
    pub label: String,
    pub key: String,
    pub pipeline: PathBuf,
    pub device: DeviceKind,
    /// Bytes, passed as `run-node --memory` (`None`: the device's, as the estimate assumed).
    pub memory: Option<u64>,
    /// Where `run-node` writes what it did (`--result`).
    pub result: PathBuf,
}

/// What a batch script needs besides its tasks.
pub struct ScriptSpec<'a> {
    pub whittle: &'a Path,
    pub cache: &'a Path,
    pub run_id: &'a str,
    /// `--output`: a file, or with `%a` a file per array task.
    pub output: &'a Path,
    pub options: Vec<String>,
    /// `Some(throttle)` for a job array of the tasks.
    pub array: Option<Option<usize>>,
}

/// Single-quoted for the shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script: `#SBATCH` lines, then `whittle run-node` on the key of the task
/// `SLURM_ARRAY_TASK_ID` picks (0 for a single job).
pub fn render(spec: &ScriptSpec, tasks: &[Task]) -> String {
    let mut s = String::from("#!/bin/bash\n");
    for o in &spec.options {
        let _ = writeln!(s, "#SBATCH {o}");
    }
    let _ = writeln!(s, "#SBATCH --output={}", spec.output.display());
    if let Some(dir) = spec.output.parent() {
        let _ = writeln!(s, "#SBATCH --chdir={}", dir.display());
    }
    if let Some(throttle) = spec.array {
        let _ = write!(s, "#SBATCH --array=0-{}", tasks.len().saturating_sub(1));
        if let Some(t) = throttle {
            let _ = write!(s, "%{t}");
        }
        s.push('\n');
    }
    let _ = writeln!(s, "# whittle run {}", spec.run_id);
    s.push_str("set -u\ncase \"${SLURM_ARRAY_TASK_ID:-0}\" in\n");
    for (i, t) in tasks.iter().enumerate() {
        let _ = writeln!(s, "  {i})  # {}", t.label.replace('\n', " "));
        let _ = writeln!(
            s,
            "    pipeline={} key={} device={} memory={} result={} ;;",
            quote(&t.pipeline.display().to_string()),
            t.key,
            t.device,
            t.memory.map_or(String::new(), |m| m.to_string()),
            quote(&t.result.display().to_string())
        );
    }
    s.push_str(
        "  *) echo \"no task ${SLURM_ARRAY_TASK_ID:-0} in this script\" >&2; exit 2 ;;\nesac\n",
    );
    let _ = writeln!(
        s,
        "echo \"whittle: job ${{SLURM_JOB_ID:-?}} on $(hostname): key $key\" >&2\n\
         exec {} run-node \"$pipeline\" --key \"$key\" --device \"$device\" \
         ${{memory:+--memory \"$memory\"}} --cache-dir {} --quiet --result \"$result\"",
        quote(&spec.whittle.display().to_string()),
        quote(&spec.cache.display().to_string()),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        Request {
            local: false,
            partition: Some("gpu".into()),
            cpus: 4,
            gpus: 1,
            memory: (24 << 30) + 1,
            time: 2 * 3600,
        }
    }

    #[test]
    fn options_follow_the_request_and_profile() {
        let profile = Profile {
            account: Some("lab".into()),
            sbatch: vec!["--constraint=a100".into()],
            ..Profile::default()
        };
        let o = sbatch_options(&req(), &profile, "whittle:ppl");
        assert_eq!(
            o,
            [
                "--job-name=whittle:ppl",
                "--partition=gpu",
                "--account=lab",
                "--nodes=1",
                "--ntasks=1",
                "--cpus-per-task=4",
                "--mem=24577M",
                "--gpus=1",
                "--time=0-02:00:00",
                "--constraint=a100",
            ]
        );
        let gres = Profile {
            gpu_request: GpuRequest::Gres,
            ..Profile::default()
        };
        assert!(sbatch_options(&req(), &gres, "x").contains(&"--gres=gpu:1".to_string()));
        assert_eq!(slurm_time(86400 + 61), "1-00:01:01");
    }

    #[test]
    fn an_array_script_picks_its_task() {
        let task = |i: usize| Task {
            label: format!("ppl[s={i}]"),
            key: format!("{i:064x}"),
            pipeline: "/p/it's.yaml".into(),
            device: DeviceKind::Cpu,
            memory: Some(1 << 30),
            result: format!("/c/r/{i}.json").into(),
        };
        let spec = ScriptSpec {
            whittle: Path::new("/bin/whittle"),
            cache: Path::new("/c"),
            run_id: "r1",
            output: Path::new("/c/r/ppl-%a.out"),
            options: vec!["--job-name=whittle:ppl".into()],
            array: Some(Some(2)),
        };
        let s = render(&spec, &[task(0), task(1), task(2)]);
        assert!(
            s.starts_with("#!/bin/bash\n#SBATCH --job-name=whittle:ppl\n"),
            "{s}"
        );
        assert!(s.contains("#SBATCH --array=0-2%2\n"), "{s}");
        assert!(s.contains("pipeline='/p/it'\\''s.yaml'"), "{s}");
        assert!(s.contains(&format!(
            "  2)  # ppl[s=2]\n    pipeline='/p/it'\\''s.yaml' key={:064x}",
            2
        )));
        assert!(
            s.contains("exec '/bin/whittle' run-node \"$pipeline\" --key \"$key\""),
            "{s}"
        );
        // The script is valid shell.
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &s])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
