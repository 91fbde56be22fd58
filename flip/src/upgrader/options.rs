//! Settings of an [`Upgrader`](crate::Upgrader).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(doc)]
use super::Upgrader;
use crate::pidfile;

/// Default time a successor has to become ready.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default mode of new unix socket paths: owner and group may connect.
pub const DEFAULT_UNIX_SOCKET_MODE: u32 = 0o660;

/// Default listen backlog of new stream sockets.
pub const DEFAULT_BACKLOG: i32 = 1024;

/// Settings of an [`Upgrader`].
///
/// ```
/// use std::time::Duration;
/// let options = flip::Options::new()
///     .pid_file("/run/app.pid")
///     .upgrade_timeout(Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) pid_file_mode: u32,
    pub(crate) upgrade_timeout: Duration,
    pub(crate) executable: Option<PathBuf>,
    pub(crate) backlog: i32,
    pub(crate) unix_socket_mode: u32,
    pub(crate) standby: bool,
    pub(crate) successor_env: Vec<(OsString, OsString)>,
    pub(crate) control_socket: Option<PathBuf>,
    pub(crate) max_draining: Option<usize>,
    /// Why upgrades must be refused in this process's surroundings (see `surroundings`).
    pub(crate) upgrades_would_end_service: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pid_file: None,
            pid_file_mode: pidfile::DEFAULT_MODE,
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            executable: None,
            backlog: DEFAULT_BACKLOG,
            unix_socket_mode: DEFAULT_UNIX_SOCKET_MODE,
            standby: false,
            successor_env: Vec::new(),
            control_socket: None,
            max_draining: None,
            upgrades_would_end_service: None,
        }
    }
}

impl Options {
    /// Defaults: no pid file, 60 s upgrade timeout, the running executable's path.
    pub fn new() -> Options {
        Options::default()
    }

    /// Where the serving process writes its pid when it becomes ready.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Options {
        self.pid_file = Some(path.into());
        self
    }

    /// Mode bits of the pid file (default `0o644`).
    pub fn pid_file_mode(mut self, mode: u32) -> Options {
        self.pid_file_mode = mode;
        self
    }

    /// How long a successor has to become ready before it is killed (default 60 s).
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Options {
        self.upgrade_timeout = timeout;
        self
    }

    /// Start this executable on upgrade instead of the path this process was started by.
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Options {
        self.executable = Some(path.into());
        self
    }

    /// Listen backlog of stream sockets created by the registry (default 1024).
    pub fn backlog(mut self, backlog: i32) -> Options {
        self.backlog = backlog;
        self
    }

    /// Mode of unix socket paths the registry creates (default `0o660`: owner and group may
    /// connect). Set before the socket listens, so there is no moment with a wider mode.
    pub fn unix_socket_mode(mut self, mode: u32) -> Options {
        self.unix_socket_mode = mode;
        self
    }

    /// Keep the next process started ahead of time (default off here; on under
    /// `#[flip::main]`, where `FLIP_STANDBY=0` or `standby = false` turns it off).
    ///
    /// A successor spends most of its start in `exec`, the dynamic loader and runtime setup
    /// (a few milliseconds of CPU for the examples here, and several times that on a loaded
    /// machine; BENCHMARKS.md has the figures).
    /// With a standby, the serving process starts its successor as soon as it is ready and
    /// [`Upgrader::refresh_standby`] is called; the standby does all of that, then waits for the
    /// handoff. An upgrade only sends it the manifest, so the successor is ready in a
    /// fraction of the time.
    ///
    /// The standby is used only while it is still what an upgrade would start: it runs the file
    /// the executable path names now (a binary replaced there, or a switched symlink, makes it
    /// stale) and it holds exactly the sockets and files of the registry. Otherwise it is
    /// killed and the upgrade starts a fresh process, as without this option. Under
    /// [`Bootstrap`](crate::Bootstrap) a new binary gets its standby as soon as it lands (the
    /// Bootstrap watches the executable path), so a reload sent a few milliseconds after a
    /// deploy still takes the fast path; [`Upgrader::last_successor_start`] says which path an
    /// upgrade took. A standby costs
    /// one idle process (a few MiB resident for a tokio server, most of it code shared with the
    /// serving process; about 0.5 MiB of its own for the `http` example)
    /// and runs the new binary's code up to reading the handoff before anyone asked for an
    /// upgrade: with `#[flip::main]` that is logging setup and building the runtime, never a
    /// starter or the `main` body. A program that uses the `Upgrader` alone runs its `main` up
    /// to [`Upgrader::new`], which waits there for the handoff; if the standby is let go
    /// instead, `new` fails with [`HandoffError::Withdrawn`](crate::HandoffError::Withdrawn)
    /// and the program should exit quietly. Such a program calls
    /// [`Upgrader::refresh_standby`] itself.
    pub fn standby(mut self, enabled: bool) -> Options {
        self.standby = enabled;
        self
    }

    /// Gives every process an upgrade starts `name=value` on top of this process's
    /// environment: for a variable taken out of the environment at startup so that no other
    /// subprocess sees it, such as `NOTIFY_SOCKET` (`#[flip::main]` does this for it).
    pub fn successor_env(
        mut self,
        name: impl Into<OsString>,
        value: impl Into<OsString>,
    ) -> Options {
        self.successor_env.push((name.into(), value.into()));
        self
    }

    /// The control socket's path (see [`crate::control`]): `#[flip::main]` serves it there, so
    /// that `flip status` and `flip upgrade` reach the serving process, and sets it from
    /// `<PREFIX>_CONTROL_SOCKET`, the attribute's `control`, or beside the pid file. A
    /// [`Bootstrap`] built by hand serves it with [`control::serve`](crate::control::serve).
    /// The upgrader removes the path at a stop while the pid file names this process.
    ///
    /// [`Bootstrap`]: crate::Bootstrap
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Options {
        self.control_socket = Some(path.into());
        self
    }

    /// Allow upgrades while older generations still drain, with at most `n` draining at any
    /// moment (default: Gitaly's rule, no upgrade while the process that started this one
    /// runs). An upgrade that would leave more than `n` draining first tells the oldest to
    /// finish now (`SIGTERM`: its grace period ends) and waits until it exited. At most one
    /// process is ever starting; the pid file always names the serving one. For servers whose
    /// drains last long (WebSockets, long gRPC streams), so that a fix or a rollback need not
    /// wait for them. `#[flip::main]` reads `<PREFIX>_MAX_DRAINING`.
    pub fn max_draining(mut self, n: usize) -> Options {
        self.max_draining = Some(n.max(1));
        self
    }

    /// Whether a standby process is kept (see [`standby`](Options::standby)).
    pub fn standby_enabled(&self) -> bool {
        self.standby
    }

    /// The configured pid file, if any.
    pub fn pid_file_path(&self) -> Option<&Path> {
        self.pid_file.as_deref()
    }

    /// The configured upgrade timeout.
    pub fn upgrade_timeout_value(&self) -> Duration {
        self.upgrade_timeout
    }
}
