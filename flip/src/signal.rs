//! The upgrade signal.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Subscribes to SIGHUP through tokio, then lets SIGHUP in.
///
/// A process started by an upgrade begins with SIGHUP blocked, so that a SIGHUP sent while it
/// is still starting cannot kill it (the default action); such a signal waits, pending. Once
/// this function has installed tokio's handler it unblocks SIGHUP in the calling thread, and a
/// pending signal is delivered to the handler. Call it from a thread that lives as long as the
/// process, such as the one running `main` (`block_on`). Needs a tokio runtime.
pub fn upgrade_signal() -> io::Result<Signal> {
    let stream = signal(SignalKind::hangup())?;
    if crate::sys::process::sighup_blocked() {
        crate::sys::process::unblock_sighup()?;
    }
    Ok(stream)
}
