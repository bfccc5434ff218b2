//! The Slurm commands whittle calls (`sbatch`, `squeue`, `sacct`, `scancel`, `sinfo`) and the
//! parsing of their machine-readable output. Nothing else runs them.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// A Slurm command that could not be run or refused what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run `{command}` ({source}); is Slurm installed on this machine?")]
    Spawn {
        command: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {message}")]
    Failed {
        command: &'static str,
        message: String,
    },
}

fn run(command: &'static str, args: &[&str]) -> Result<String, CommandError> {
    let out = Command::new(command)
        .args(args)
        .output()
        .map_err(|source| CommandError::Spawn { command, source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(CommandError::Failed {
            command,
            message: stderr
                .trim()
                .lines()
                .last()
                .unwrap_or("no message")
                .to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Submits `script`; returns the job id (of the array, for an array job).
pub fn sbatch(script: &Path) -> Result<String, CommandError> {
    let out = run("sbatch", &["--parsable", &script.display().to_string()])?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Failed {
            command: "sbatch",
            message: format!("unexpected output `{}`", out.trim()),
        });
    }
    Ok(id)
}

/// Cancels jobs (whole arrays by their array id, or single tasks as `id_task`).
pub fn scancel(ids: &[String]) -> Result<(), CommandError> {
    if ids.is_empty() {
        return Ok(());
    }
    let args: Vec<&str> = ids.iter().map(String::as_str).collect();
    run("scancel", &args).map(|_| ())
}

/// A job's state as Slurm reports it, and why it is pending or how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    pub state: String,
    /// `squeue`'s reason (`Priority`, `Resources`), or `sacct`'s exit code.
    pub detail: String,
}

impl JobState {
    /// Still queued or running: Slurm will report on it again.
    pub fn is_live(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "RESV_DEL_HOLD"
                | "STOPPED"
        )
    }
}

/// The state of every job `squeue` still knows among `ids` (array ids list every task, as
/// `id_task`), finished ones included while the controller keeps them (`MinJobAge`).
pub fn squeue(ids: &[String]) -> Result<HashMap<String, JobState>, CommandError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let list = ids.join(",");
    match run(
        "squeue",
        &["-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", &list],
    ) {
        Ok(out) => Ok(parse_table(&out)),
        // Every id is unknown (finished long ago): nothing to report, not an error.
        Err(CommandError::Failed { message, .. }) if message.contains("Invalid job id") => {
            Ok(HashMap::new())
        }
        Err(e) => Err(e),
    }
}

/// The final state of finished jobs from accounting (`sacct`); empty where the cluster keeps
/// no accounting (no slurmdbd).
pub fn sacct(ids: &[String]) -> HashMap<String, JobState> {
    if ids.is_empty() {
        return HashMap::new();
    }
    let list = ids.join(",");
    match run(
        "sacct",
        &[
            "-n",
            "-P",
            "-X",
            "--delimiter=|",
            "-o",
            "JobID,State,ExitCode",
            "-j",
            &list,
        ],
    ) {
        Ok(out) => parse_table(&out),
        Err(e) => {
            tracing::debug!("sacct: {e}");
            HashMap::new()
        }
    }
}

/// `id|STATE|detail` lines; `CANCELLED by 0` is `CANCELLED`.
pub fn parse_table(out: &str) -> HashMap<String, JobState> {
    out.lines()
        .filter_map(|line| {
            let mut f = line.trim().split('|');
            let id = f.next()?.trim();
            let state = f.next()?.split_whitespace().next()?.trim_end_matches('+');
            let detail = f.next().unwrap_or("").trim();
            (!id.is_empty()).then(|| {
                (
                    id.to_string(),
                    JobState {
                        state: state.to_string(),
                        detail: detail.to_string(),
                    },
                )
            })
        })
        .collect()
}

/// How many nodes the cluster has (`sinfo`), if it answers.
pub fn node_count() -> Option<usize> {
    let out = run("sinfo", &["-h", "-N", "-o", "%N"]).ok()?;
    let mut nodes: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    Some(nodes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_and_sacct_lines() {
        let t = parse_table(
            "12|RUNNING|None\n13_0|PENDING|Resources\n14|CANCELLED by 0|0:15\n15|COMPLETED+|0:0\n\n",
        );
        assert_eq!(t.len(), 4);
        assert_eq!(t["12"].state, "RUNNING");
        assert_eq!(t["13_0"].detail, "Resources");
        assert_eq!(t["14"].state, "CANCELLED");
        assert_eq!(t["15"].state, "COMPLETED");
        assert!(t["12"].is_live() && t["13_0"].is_live());
        assert!(!t["14"].is_live() && !t["15"].is_live());
    }
}
