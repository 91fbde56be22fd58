//! The upgrade signal.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Subscribes to SIGHUP through tokio, then lets SIGHUP in.
///
/// A process started by an upgrade begins with SIGHUP blocked, so that a SIGHUP sent while it
/// is still starting cannot kill it (the default action); such a signal waits, pending. Once
/// this function has installed tokio's handler it unblocks SIGHUP in the calling thread; a
/// signal sent meanwhile is discarded, not delivered: it was meant for the process that was
/// serving then (a SIGHUP to the whole process group, as `dumb-init` forwards it, reaches a
/// standby too), and acting on it would upgrade twice. Call it from a thread that lives as long as the
/// process, such as the one running `main` (`block_on`). Needs a tokio runtime.
pub fn upgrade_signal() -> io::Result<Signal> {
    let stream = signal(SignalKind::hangup())?;
    if crate::sys::process::sighup_blocked() {
        let discarded = crate::sys::process::discard_pending_sighup()?;
        if discarded > 0 {
            tracing::info!("ignored a SIGHUP sent before this process served");
        }
        crate::sys::process::unblock_sighup()?;
    }
    Ok(stream)
}
