//! The error type of flip: an opaque [`Error`] with a [`kind`](Error::kind) to act on and its
//! cause through [`source`](std::error::Error::source), as hyper's.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

mod handoff;

pub use handoff::HandoffError;

/// Everything that can go wrong in flip.
///
/// An error says what flip was doing (`Display`, its own level only) and why
/// ([`source`](std::error::Error::source)); [`Error::chain`] prints both. Act on its
/// [`kind`](Error::kind), never on its text: upgrade refusals ([`Error::is_refusal`]: nothing
/// was started, asking again later may succeed) are told from an upgrade whose successor
/// failed ([`Error::is_failed_upgrade`]). After any upgrade error the predecessor still owns
/// every socket and keeps serving; a later upgrade may succeed.
///
/// ```no_run
/// # async fn demo(upgrader: &flip::Upgrader) {
/// match upgrader.upgrade().await {
///     Ok(pid) => println!("upgraded to {pid}"),
///     Err(e) if e.kind() == flip::ErrorKind::InProgress => {} // the one running will do
///     Err(e) if e.is_failed_upgrade() => {
///         eprintln!("the new build is broken: {}", e.chain());
///         for line in e.last_stderr() {
///             eprintln!("  | {line}");
///         }
///     }
///     Err(e) => eprintln!("upgrade failed: {}", e.chain()),
/// }
/// # }
/// ```
pub struct Error {
    inner: Box<Repr>,
}

/// What kind of error an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An upgrade was asked for before [`ready`](crate::Upgrader::ready).
    NotReady,
    /// Another upgrade is running; only one runs at a time.
    InProgress,
    /// Upgrades are disabled (`<PREFIX>_UPGRADES_ENABLED=0`).
    UpgradesDisabled,
    /// An upgrade already succeeded: the successor serves and this process drains.
    AlreadyUpgraded,
    /// The upgrader is stopping: no upgrade starts, and the one in flight was cancelled.
    Terminating,
    /// This process was started by an upgrade and its predecessor has not exited yet:
    /// upgrading now would leave three generations alive. [`Error::pid`] names it.
    PredecessorAlive,
    /// A rollback was asked for, and there is no previous build to start: this process is a
    /// first start, or its predecessor did not pass its build on.
    NoPreviousBuild,
    /// An upgrade would end the service: this process is PID 1 of its pid namespace, or what
    /// started it (a container init, a process supervisor) follows its pid. The supervisor
    /// mode (`FLIP_SUPERVISE=1`) is what works there.
    WouldEndService,
    /// The successor ended before it said it was ready (even with exit status 0).
    /// [`Error::pid`], [`Error::exit_status`] and [`Error::last_stderr`] say more.
    SuccessorExited,
    /// The successor was not ready within the upgrade timeout; it was killed and reaped.
    Timeout,
    /// The successor could not be started at all.
    Spawn,
    /// The new binary speaks no handoff version this one speaks (its ELF note says which it
    /// does): nothing was started, and this process serves on.
    HandoffVersion,
    /// The handoff from the predecessor is unusable; nothing from it was adopted. The source
    /// is a [`HandoffError`].
    Handoff,
    /// The pid file could not be written.
    PidFile,
    /// An address or network name given to the registry is not valid.
    Address,
    /// Opening, binding or adopting a socket or file failed.
    Socket,
    /// A second [`Upgrader`](crate::Upgrader) was created in one process.
    AlreadyCreated,
    /// The sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) are unusable.
    Activation,
    /// [`Upgrader::resume`](crate::Upgrader::resume) was called, but this process was not
    /// upgraded, or its successor still runs.
    NotResumable,
    /// Any other system error.
    Io,
}

/// What an [`Error`] holds: one variant per kind, with what it reports.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Repr {
    #[error("upgrade refused: this process is not ready yet")]
    NotReady,
    #[error("upgrade refused: an upgrade is already in progress")]
    InProgress,
    #[error("upgrade refused: upgrades are disabled")]
    UpgradesDisabled,
    #[error("upgrade refused: this process was already upgraded")]
    AlreadyUpgraded,
    #[error("upgrade refused: the upgrader is terminating")]
    Terminating,
    #[error("upgrade refused: the predecessor {pid} has not exited yet")]
    PredecessorAlive { pid: u32 },
    #[error(
        "rollback refused: there is no previous build (this process was not started by an upgrade)"
    )]
    NoPreviousBuild,
    #[error("upgrade refused: {reason}")]
    WouldEndService { reason: String },
    #[error("the successor {pid} exited before it was ready ({status})")]
    SuccessorExited {
        pid: u32,
        status: ExitStatus,
        last_stderr: Vec<String>,
    },
    #[error("the successor {pid} was not ready within {timeout:?}; it was killed")]
    Timeout {
        pid: u32,
        timeout: Duration,
        last_stderr: Vec<String>,
    },
    #[error("could not start {program}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error(
        "upgrade failed before anything started: {program} speaks handoff versions {lowest} to {highest}; this binary speaks versions {ours}"
    )]
    HandoffVersion {
        program: PathBuf,
        lowest: u32,
        highest: u32,
        ours: &'static str,
    },
    #[error("invalid handoff from the predecessor")]
    Handoff(#[from] HandoffError),
    #[error("pid file {path}")]
    PidFile { path: PathBuf, source: io::Error },
    #[error("invalid address {address:?} for network {network:?}: {reason}")]
    Address {
        network: String,
        address: String,
        reason: String,
    },
    #[error("{network} {address}")]
    Socket {
        network: String,
        address: String,
        source: io::Error,
    },
    #[error("an Upgrader already exists in this process")]
    AlreadyCreated,
    #[error("socket activation: {0}")]
    Activation(String),
    #[error("cannot take service back: no successor of this process has exited")]
    NotResumable,
    #[error("{context}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
}

impl Error {
    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        match &*self.inner {
            Repr::NotReady => ErrorKind::NotReady,
            Repr::InProgress => ErrorKind::InProgress,
            Repr::UpgradesDisabled => ErrorKind::UpgradesDisabled,
            Repr::AlreadyUpgraded => ErrorKind::AlreadyUpgraded,
            Repr::Terminating => ErrorKind::Terminating,
            Repr::PredecessorAlive { .. } => ErrorKind::PredecessorAlive,
            Repr::NoPreviousBuild => ErrorKind::NoPreviousBuild,
            Repr::WouldEndService { .. } => ErrorKind::WouldEndService,
            Repr::SuccessorExited { .. } => ErrorKind::SuccessorExited,
            Repr::Timeout { .. } => ErrorKind::Timeout,
            Repr::Spawn { .. } => ErrorKind::Spawn,
            Repr::HandoffVersion { .. } => ErrorKind::HandoffVersion,
            Repr::Handoff(_) => ErrorKind::Handoff,
            Repr::PidFile { .. } => ErrorKind::PidFile,
            Repr::Address { .. } => ErrorKind::Address,
            Repr::Socket { .. } => ErrorKind::Socket,
            Repr::AlreadyCreated => ErrorKind::AlreadyCreated,
            Repr::Activation(_) => ErrorKind::Activation,
            Repr::NotResumable => ErrorKind::NotResumable,
            Repr::Io { .. } => ErrorKind::Io,
        }
    }

    /// Whether an upgrade was refused without starting anything: before ready, while another
    /// runs, after one succeeded, after stop, or while the predecessor still drains. Asking
    /// again later may succeed; the binary was not tried.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::NotReady
                | ErrorKind::UpgradesDisabled
                | ErrorKind::InProgress
                | ErrorKind::AlreadyUpgraded
                | ErrorKind::Terminating
                | ErrorKind::PredecessorAlive
                | ErrorKind::NoPreviousBuild
                | ErrorKind::WouldEndService
        )
    }

    /// Whether a successor was started and failed: it exited before it was ready, or was not
    /// ready in time.
    pub fn is_failed_upgrade(&self) -> bool {
        matches!(self.kind(), ErrorKind::SuccessorExited | ErrorKind::Timeout)
    }

    /// The process the error is about: the successor that failed
    /// ([`SuccessorExited`](ErrorKind::SuccessorExited), [`Timeout`](ErrorKind::Timeout)), or
    /// the predecessor that still drains ([`PredecessorAlive`](ErrorKind::PredecessorAlive)).
    pub fn pid(&self) -> Option<u32> {
        match &*self.inner {
            Repr::SuccessorExited { pid, .. }
            | Repr::Timeout { pid, .. }
            | Repr::PredecessorAlive { pid } => Some(*pid),
            _ => None,
        }
    }

    /// How the successor ended, for [`SuccessorExited`](ErrorKind::SuccessorExited).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match &*self.inner {
            Repr::SuccessorExited { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The last lines a successor that failed wrote to its standard error (at most 20).
    pub fn last_stderr(&self) -> &[String] {
        match &*self.inner {
            Repr::SuccessorExited { last_stderr, .. } | Repr::Timeout { last_stderr, .. } => {
                last_stderr
            }
            _ => &[],
        }
    }

    /// The handoff's own error, for [`Handoff`](ErrorKind::Handoff) (also its
    /// [`source`](std::error::Error::source)).
    pub fn handoff(&self) -> Option<&HandoffError> {
        match &*self.inner {
            Repr::Handoff(e) => Some(e),
            _ => None,
        }
    }

    /// Displays this error followed by each of its sources: `a: b: c`.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }

    /// An I/O error with what flip was doing: `.map_err(Error::io("creating the ready pipe"))`.
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Repr::Io { context, source }.into()
    }
}

impl From<Repr> for Error {
    fn from(repr: Repr) -> Error {
        Error {
            inner: Box::new(repr),
        }
    }
}

impl From<HandoffError> for Error {
    fn from(e: HandoffError) -> Error {
        Repr::Handoff(e).into()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("flip::Error").field(&self.inner).finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.inner)
    }
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
