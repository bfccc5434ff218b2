//! Cancellation as a value. The run's cancel flag, seen by a stage (at a check or a progress
//! tick), becomes [`Cancelled`]; it reaches the scheduler as `StageError::Cancelled` and ends
//! there as the stage's Cancelled state, never as a failure.

use super::StageError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

impl From<Cancelled> for StageError {
    fn from(_: Cancelled) -> Self {
        StageError::Cancelled
    }
}

/// Kernels report through candle's error, which carries no type of ours: inside them a
/// cancellation is this message, and the stage turns the kernel's error back into
/// [`StageError::Cancelled`] when the flag is set (`calibrate::cancelled_or`).
impl From<Cancelled> for candle_core::Error {
    fn from(c: Cancelled) -> Self {
        candle_core::Error::Msg(c.to_string())
    }
}
