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
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use crate::bootstrap::Observer;
use crate::error::{Chain, Error};
use crate::notify::{self, NOTIFY_SOCKET_VAR, Notifier};
use crate::sys;
use crate::upgrader::Upgrader;

/// Sends systemd what the Bootstrap does: an [`Observer`] for
/// [`Bootstrap::observe`](crate::Bootstrap::observe). `#[flip::main]` adds one when
/// `NOTIFY_SOCKET` is set.
#[derive(Debug)]
pub struct Notify {
    notifier: Arc<Notifier>,
    upgrade_timeout: Duration,
    /// Whose sockets go to the fd store, if they do.
    store: Option<Upgrader>,
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
            notifier: Arc::new(Notifier::new(&value)?),
            upgrade_timeout,
            store: None,
        }))
    }

    /// The value of `NOTIFY_SOCKET`.
    pub fn socket_value(&self) -> OsString {
        self.notifier.value().to_owned()
    }

    /// Also hands every socket of `upgrader`'s registry to the service manager's fd store
    /// (`FDSTORE=1` with `FDNAME=`, one message per socket), so that a process started again
    /// after a crash gets them back and no connection is refused meanwhile; takes the sockets
    /// it let go out again (`FDSTOREREMOVE=1`). A first start stores at readiness; a process an
    /// upgrade started, once its predecessor exited (before that, systemd hears only the main
    /// process, which was its predecessor). The unit needs `FileDescriptorStoreMax=`;
    /// `#[flip::main]` does this when `FLIP_FDSTORE=1` (flip's supervisor sets it) or systemd's
    /// own `FDSTORE` is set.
    pub fn store_sockets(&mut self, upgrader: &Upgrader) {
        self.store = Some(upgrader.clone());
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
        let Some(upgrader) = self.store.clone() else {
            return;
        };
        if first {
            store(&self.notifier, &upgrader);
            return;
        }
        let notifier = Arc::clone(&self.notifier);
        tokio::spawn(async move {
            if upgrader.parent_exited().await.is_ok() {
                store(&notifier, &upgrader);
            }
        });
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

/// Sends the fd store every socket of `upgrader`'s registry, and takes out those it let go.
fn store(notifier: &Notifier, upgrader: &Upgrader) {
    let fds = upgrader.fds();
    for name in fds.closed_store_names() {
        let lines = ["FDSTOREREMOVE=1".to_owned(), format!("FDNAME={name}")];
        if let Err(e) = notifier.send(&lines) {
            tracing::warn!(error = %e, name, "could not take a socket out of the fd store");
        }
    }
    let sockets = match fds.sockets_to_store() {
        Ok(sockets) => sockets,
        Err(e) => {
            tracing::warn!(error = %e, "could not copy the sockets for the fd store");
            return;
        }
    };
    let count = sockets.len();
    for (name, fd) in sockets {
        let lines = ["FDSTORE=1".to_owned(), format!("FDNAME={name}")];
        if let Err(e) = notifier.send_with_fds(&lines, &[fd.as_fd()]) {
            tracing::warn!(error = %e, name, "could not hand a socket to the fd store");
        }
    }
    tracing::debug!(sockets = count, "handed the sockets to the fd store");
}
