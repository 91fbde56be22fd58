//! The error type of flip.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in flip.
///
/// Upgrade refusals and failures are distinct variants so a caller can tell "try again later"
/// ([`Error::is_refusal`]: nothing was started) from "the new binary is broken"
/// ([`Error::ChildExited`], [`Error::Timeout`]). After any upgrade error the old process still
/// owns every socket and keeps serving; a later upgrade may succeed.
///
/// As in hyper, an error's `Display` says what flip was doing and its
/// [`source`](std::error::Error::source) says why; [`Error::chain`] prints both.
///
/// ```
/// let e = flip::Error::Io {
///     context: "creating the ready pipe",
///     source: std::io::Error::from_raw_os_error(24),
/// };
/// assert_eq!(e.to_string(), "creating the ready pipe");
/// assert!(e.chain().to_string().starts_with("creating the ready pipe: Too many open files"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `upgrade()` was called before `ready()`.
    #[error("upgrade refused: this process is not ready yet")]
    NotReady,
    /// Another upgrade is running; only one runs at a time.
    #[error("upgrade refused: an upgrade is already in progress")]
    InProgress,
    /// Upgrades are disabled (`<PREFIX>_UPGRADES_ENABLED=0`).
    #[error("upgrade refused: upgrades are disabled")]
    UpgradesDisabled,
    /// An upgrade already succeeded: the new process serves and this one is draining.
    #[error("upgrade refused: this process was already upgraded")]
    AlreadyUpgraded,
    /// `stop()` was called; no upgrade will start and the one in flight was cancelled.
    #[error("upgrade refused: the upgrader is terminating")]
    Terminating,
    /// This process was started by an upgrade and its parent has not exited yet: upgrading now
    /// would leave three generations alive.
    #[error("upgrade refused: the parent process {parent_pid} has not exited yet")]
    ParentAlive {
        /// Pid of the process that started this one.
        parent_pid: u32,
    },
    /// An upgrade would end the service: this process is PID 1 of its pid namespace, or its
    /// parent (a container init, a process supervisor) follows its pid. The supervisor mode
    /// (`FLIP_SUPERVISE=1`) is what works there.
    #[error("upgrade refused: {reason}")]
    WouldEndService {
        /// What follows this process, and what to set.
        reason: String,
    },
    /// The new process ended before it declared itself ready (even with exit status 0).
    #[error("the new process {pid} exited before it was ready ({status})")]
    ChildExited {
        /// Pid of the new process.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// The last lines it wrote to its standard error (at most 20).
        last_stderr: Vec<String>,
    },
    /// The new process did not declare itself ready in time; it was killed and reaped.
    #[error("the new process {pid} was not ready within {timeout:?}; it was killed")]
    Timeout {
        /// Pid of the new process.
        pid: u32,
        /// The upgrade timeout in force.
        timeout: Duration,
        /// The last lines it wrote to its standard error (at most 20).
        last_stderr: Vec<String>,
    },
    /// The new process could not be started at all.
    #[error("could not start {program}")]
    Spawn {
        /// The executable flip tried to start.
        program: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The handoff from the parent process is unusable. Nothing from it was adopted.
    #[error("invalid handoff from the parent process")]
    Handoff(#[from] HandoffError),
    /// The pid file could not be written.
    #[error("pid file {path}")]
    PidFile {
        /// The pid file path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// An address or network name given to the fd registry is not valid.
    #[error("invalid address {address:?} for network {network:?}: {reason}")]
    Address {
        /// The network asked for (`tcp`, `unix`, ...).
        network: String,
        /// The address asked for.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Opening, binding or adopting a socket or file failed.
    #[error("{network} {address}")]
    Socket {
        /// The network (`tcp`, `unix`, ... or `file`).
        network: String,
        /// The address or name.
        address: String,
        /// What the system said.
        source: io::Error,
    },
    /// A second [`Upgrader`](crate::Upgrader) was created in one process.
    #[error("an Upgrader already exists in this process")]
    AlreadyCreated,
    /// The sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) are unusable.
    #[error("socket activation: {0}")]
    Activation(String),
    /// [`Upgrader::resume`](crate::Upgrader::resume) was called, but this process was not
    /// upgraded, or its successor still runs.
    #[error("cannot take service back: no successor of this process has exited")]
    NotResumable,
    /// Any other system error, with what flip was doing.
    #[error("{context}")]
    Io {
        /// What flip was doing.
        context: &'static str,
        /// What the system said.
        source: io::Error,
    },
}

impl Error {
    /// Whether an upgrade was refused without starting anything: before ready, while another
    /// runs, after one succeeded, after stop, or while the parent still drains. Asking again
    /// later may succeed; the binary was not tried.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::NotReady
                | Error::UpgradesDisabled
                | Error::InProgress
                | Error::AlreadyUpgraded
                | Error::Terminating
                | Error::ParentAlive { .. }
                | Error::WouldEndService { .. }
        )
    }

    /// Whether a new process was started and failed: it exited before it was ready, or was not
    /// ready in time.
    pub fn is_failed_upgrade(&self) -> bool {
        matches!(self, Error::ChildExited { .. } | Error::Timeout { .. })
    }

    /// Displays this error followed by each of its sources: `a: b: c`.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }

    /// The last lines a new process that failed wrote to its standard error.
    pub fn last_stderr(&self) -> &[String] {
        match self {
            Error::ChildExited { last_stderr, .. } | Error::Timeout { last_stderr, .. } => {
                last_stderr
            }
            _ => &[],
        }
    }

    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { context, source }
    }
}

/// Why a handoff from the parent process was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// The process that started this one speaks another version of the handoff.
    #[error(
        "the process that started this one speaks handoff version {theirs}; this binary speaks version {ours}: it cannot take over from it (restart the service to move to this build)"
    )]
    Version {
        /// The version the marker carries.
        theirs: String,
        /// The version this binary speaks.
        ours: &'static str,
    },
    /// The `FLIP_HANDOFF` environment variable is malformed.
    #[error("malformed FLIP_HANDOFF marker {value:?}: {reason}")]
    Marker {
        /// The variable's value (lossy).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The marker is well formed but was not made for this process: it was inherited by a
    /// process that no upgrade started (its handoff pipe is missing, or the token differs).
    #[error("the FLIP_HANDOFF marker was not made for this process: {reason}")]
    NotForUs {
        /// What did not match.
        reason: String,
    },
    /// The manifest sent by the parent is malformed.
    #[error("malformed manifest at line {line}: {reason}")]
    Manifest {
        /// Line number (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A descriptor named by the manifest is not what the manifest says.
    #[error("fd {fd} ({what}): {reason}")]
    Fd {
        /// Descriptor number.
        fd: i32,
        /// What it should be.
        what: String,
        /// What it is instead.
        reason: String,
    },
    /// Reading the handoff failed.
    #[error("reading the handoff")]
    Io(#[source] io::Error),
    /// This process was started as a standby (see [`Options::standby`](crate::Options::standby))
    /// and its parent let it go without handing anything over: the binary changed, the parent
    /// is stopping, or it exited. Nothing is wrong; the process should exit quietly.
    #[error("the parent withdrew this standby process before handing anything over")]
    Withdrawn,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
    /// It ended, but its status was collected by someone else (a `SIGCHLD` handler of the
    /// application that reaps every child).
    Unknown,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(sig) => {
                let name = crate::sys::process::signal_name(*sig).unwrap_or("unknown signal");
                write!(f, "killed by signal {sig} ({name})")
            }
            ExitStatus::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// An error followed by each of its sources, `a: b: c`, for logs and messages to users (see
/// [`Error::chain`]). Works for any error.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// flip's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
