//! Standard output that a departing reader cannot crash: after `whittle report p.yaml | head`,
//! `println!` would panic on EPIPE. Here a broken pipe silently ends the output; the command
//! still finishes its work (a run is not cut short, reports are still written) and keeps its exit
//! code. Any other write error is kept, and turns a success into exit 1 at the end.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<std::io::Error>> = Mutex::new(None);

/// Writes to stdout, unless the reader has gone.
pub fn write(args: fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        note(e);
    }
}

/// Flushes stdout, as at the end of the command.
pub fn flush() {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = std::io::stdout().lock().flush() {
        note(e);
    }
}

fn note(e: std::io::Error) {
    CLOSED.store(true, Ordering::Relaxed);
    if e.kind() != ErrorKind::BrokenPipe {
        let mut failed = FAILED.lock().unwrap_or_else(|p| p.into_inner());
        failed.get_or_insert(e);
    }
}

/// The write error other than a broken pipe that ended the output, if any.
pub fn failure() -> Option<std::io::Error> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).take()
}
