//! Cancellation as a value. The run's cancel flag, seen at a check or a progress tick, becomes
//! [`Cancelled`]; kernels that take a [`Tick`] return it inside their own error types, and the
//! stage's error says it was cancelled, so the scheduler records the stage as cancelled, never as
//! a failure.

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// Called by long-running kernels with the units of work just done; an `Err` stops them.
pub type Tick<'a> = &'a mut dyn FnMut(u64) -> Result<(), Cancelled>;

/// Whether `error`, or an error it was caused by, is a cancellation.
pub fn is_cancelled(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(error);
    while let Some(e) = cur {
        if e.is::<Cancelled>() {
            return true;
        }
        cur = e.source();
    }
    false
}
