//! systemd: readiness, reloads and stops through the notification protocol (`Type=notify` and
//! `Type=notify-reload`), and socket activation (`LISTEN_FDS`).
//!
//! What a unit sees, with the default `NotifyAccess=main`:
//! - `READY=1` once the first process is ready;
//! - at `SIGHUP`, `RELOADING=1` with `MONOTONIC_USEC=` from the serving (main) process;
//! - once the successor is ready, `MAINPID=<new>` and `READY=1` in one datagram from the old
//!   one, so systemd follows the successor before the old one exits; a failed upgrade ends
//!   the reload with `READY=1` and a `STATUS=` line saying why;
//! - `STOPPING=1` on a real stop only, never from a process that drains after an upgrade.
//!
//! `NOTIFY_SOCKET` is taken out of the environment at startup, so no subprocess of the server
//! sees it, and handed to each process an upgrade starts.

use std::ffi::OsString;
use std::io;
use std::time::Duration;

use crate::bootstrap::Observer;
use crate::error::{Chain, Error};
use crate::notify::{self, NOTIFY_SOCKET_VAR, Notifier};
use crate::sys;

/// Sends systemd what the Bootstrap does: an [`Observer`] for
/// [`Bootstrap::observe`](crate::Bootstrap::observe). `#[flip::main]` adds one when
/// `NOTIFY_SOCKET` is set.
#[derive(Debug)]
pub struct Notify {
    notifier: Notifier,
    upgrade_timeout: Duration,
}

impl Notify {
    /// Takes `NOTIFY_SOCKET` out of the environment: `None` when it is not set. Call it before
    /// other threads exist (it changes the environment), and give the value to successors
    /// with [`Options::successor_env`](crate::Options::successor_env) (see
    /// [`socket_value`](Notify::socket_value)). `upgrade_timeout` is how long systemd is asked
    /// to wait for a reload to finish.
    pub fn from_env(upgrade_timeout: Duration) -> io::Result<Option<Notify>> {
        let Some(value) = sys::env::take_var(NOTIFY_SOCKET_VAR) else {
            return Ok(None);
        };
        Ok(Some(Notify {
            notifier: Notifier::new(&value)?,
            upgrade_timeout,
        }))
    }

    /// The value of `NOTIFY_SOCKET`.
    pub fn socket_value(&self) -> OsString {
        self.notifier.value().to_owned()
    }

    fn send(&self, lines: &[String]) {
        if let Err(e) = self.notifier.send(lines) {
            tracing::warn!(error = %e, "could not notify systemd");
        }
    }
}

impl Observer for Notify {
    fn ready(&self, first: bool) {
        // A process an upgrade started is not the unit's main process yet: its predecessor sends
        // MAINPID and READY for it.
        if first {
            self.send(&[
                "READY=1".into(),
                notify::status(&format!("serving (pid {})", std::process::id())),
            ]);
        }
    }

    fn upgrade_started(&self) {
        self.send(&[
            "RELOADING=1".into(),
            format!("MONOTONIC_USEC={}", sys::process::monotonic_usec()),
            // Room for the successor to become ready (the upgrade timeout), and a margin.
            format!(
                "EXTEND_TIMEOUT_USEC={}",
                (self.upgrade_timeout + Duration::from_secs(5)).as_micros()
            ),
            notify::status(&format!("upgrading (pid {})", std::process::id())),
        ]);
    }

    fn upgraded(&self, new_pid: u32) {
        self.send(&[
            format!("MAINPID={new_pid}"),
            "READY=1".into(),
            notify::status(&format!(
                "serving (pid {new_pid}); pid {} draining",
                std::process::id()
            )),
        ]);
    }

    fn upgrade_failed(&self, error: &Error) {
        self.send(&[
            "READY=1".into(),
            notify::status(&format!(
                "upgrade failed: {}; still serving (pid {})",
                Chain(error),
                std::process::id()
            )),
        ]);
    }

    fn serving_again(&self) {
        // Heard only with NotifyAccess=all: this process is no longer the main one.
        self.send(&[
            format!("MAINPID={}", std::process::id()),
            "READY=1".into(),
            notify::status(&format!(
                "serving again (pid {}): the successor died",
                std::process::id()
            )),
        ]);
    }

    fn stopping(&self) {
        self.send(&["STOPPING=1".into(), notify::status("stopping")]);
    }
}
