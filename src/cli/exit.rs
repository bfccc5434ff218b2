//! Exit codes: which failures are the caller's (2) and which are the run's (1).

use std::process::ExitCode;

use whittle::exec::device::DeviceError;
use whittle::exec::slurm::SlurmError;
use whittle::exec::ExecError;
use whittle::export::ExportError;

/// The exit codes, as `--help` states them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0    success (also when the reader of the output goes away: `whittle report p.yaml | head`)
  1    a stage failed, or reading or writing a file failed (the message names the file)
  2    the pipeline file or the command line is invalid; nothing ran
  130  interrupted (Ctrl-C)";

/// What the process reports to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A stage failed, or an I/O operation did.
    Failed,
    /// The pipeline or the arguments are wrong; nothing ran.
    Usage,
    Interrupted,
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(match o {
            Outcome::Success => 0,
            Outcome::Failed => 1,
            Outcome::Usage => 2,
            Outcome::Interrupted => 130,
        })
    }
}

/// A pipeline that failed validation: its diagnostics are already printed.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline has errors")]
pub struct Invalid;

/// A command line that asks for something the pipeline or the cache cannot give
/// (an unknown stage, a bad `--older-than`): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The outcome an error stands for. Everything not known to be the caller's mistake is a failure
/// of the run (1): a full disk must not read as an invalid pipeline.
pub fn outcome_of(e: &anyhow::Error) -> Outcome {
    for cause in e.chain() {
        if cause.is::<Invalid>() || cause.is::<Usage>() || cause.is::<DeviceError>() {
            if let Some(DeviceError::Open { .. }) = cause.downcast_ref::<DeviceError>() {
                return Outcome::Failed;
            }
            return Outcome::Usage;
        }
        if let Some(ExecError::Slurm(x)) = cause.downcast_ref::<ExecError>() {
            return match x {
                SlurmError::NoCuda { .. } | SlurmError::NotShared(_) => Outcome::Usage,
                _ => Outcome::Failed,
            };
        }
        if let Some(x) = cause.downcast_ref::<ExportError>() {
            return match x {
                ExportError::NotFound { .. }
                | ExportError::Ambiguous { .. }
                | ExportError::NotWeights { .. }
                | ExportError::NotCached { .. }
                | ExportError::OutNotEmpty(_) => Outcome::Usage,
                _ => Outcome::Failed,
            };
        }
    }
    Outcome::Failed
}

/// The error and its causes, `outer: inner`, leaving out a cause its outer message already
/// quotes (many messages embed their source; printing it again doubled them).
pub fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("stage `base`: {source}")]
    struct Quoting {
        source: std::io::Error,
    }

    #[test]
    fn a_message_quoting_its_cause_is_printed_once() {
        let e = anyhow::Error::new(Quoting {
            source: std::io::Error::other("no weights in m"),
        });
        assert_eq!(describe(&e), "stage `base`: no weights in m");
        let e = anyhow::Error::new(std::io::Error::other("disk full")).context("writing x");
        assert_eq!(describe(&e), "writing x: disk full");
    }

    #[test]
    fn io_failures_exit_1_and_caller_mistakes_exit_2() {
        let io = anyhow::Error::new(std::io::Error::from_raw_os_error(28)).context("writing x");
        assert_eq!(outcome_of(&io), Outcome::Failed);
        assert_eq!(outcome_of(&anyhow::Error::new(Invalid)), Outcome::Usage);
        assert_eq!(outcome_of(&Usage("no stage".into()).into()), Outcome::Usage);
        let dev = DeviceError::Unknown("tpu".into());
        assert_eq!(outcome_of(&dev.into()), Outcome::Usage);
    }
}
