//! How a [`Bootstrap`](crate::Bootstrap)(super::Bootstrap) ended, and how a starter failed.

use super::BoxError;

/// How [`Bootstrap::wait`](crate::Bootstrap::wait) ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// SIGTERM or SIGINT: immediate stop, nothing drained.
    Signaled(&'static str),
    /// A starter reported a runtime error: immediate stop.
    Failed(BoxError),
    /// SIGTERM or SIGINT with [`StopMode::Drain`]: nothing new accepted, what was accepted
    /// finished (or not: see `drain`).
    Stopped {
        /// The signal that asked for the stop.
        signal: &'static str,
        /// How the drain ended.
        drain: Drain,
    },
    /// A successor took over; this one drained.
    Upgraded {
        /// Pid of the successor.
        new_pid: Option<u32>,
        /// How the drain ended.
        drain: Drain,
    },
}

/// How the grace period after an upgrade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drain {
    /// Every server finished its work.
    Completed,
    /// The grace period ran out first.
    GracePeriodExpired,
    /// A second SIGTERM or SIGINT ended it.
    Forced(&'static str),
}

impl Outcome {
    /// The exit code `#[flip::main]` ends the process with:
    ///
    /// | code | meaning |
    /// |---|---|
    /// | 0 | stopped by SIGTERM/SIGINT (at once, or fully drained), or upgraded and fully drained |
    /// | 1 | a starter failed (at setup or at run time) |
    /// | 2 | bad environment or configuration (reported before start) |
    /// | 3 | stopped or upgraded, but the drain was cut short (grace period expired, or forced) |
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Signaled(_) => 0,
            Outcome::Failed(_) => 1,
            Outcome::Stopped {
                drain: Drain::Completed,
                ..
            } => 0,
            Outcome::Stopped { .. } => 3,
            Outcome::Upgraded {
                drain: Drain::Completed,
                ..
            } => 0,
            Outcome::Upgraded { .. } => 3,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Signaled(sig) => write!(f, "stopped by {sig}"),
            Outcome::Failed(e) => write!(f, "a server failed: {}", crate::error::Chain(&**e)),
            Outcome::Stopped { signal, drain } => {
                write!(f, "stopped by {signal}; ")?;
                match drain {
                    Drain::Completed => write!(f, "every accepted request finished"),
                    Drain::GracePeriodExpired => {
                        write!(f, "grace period expired before the drain completed")
                    }
                    Drain::Forced(sig) => write!(f, "drain forced to end by {sig}"),
                }
            }
            Outcome::Upgraded { new_pid, drain } => {
                match new_pid {
                    Some(pid) => write!(f, "upgraded to pid {pid}; ")?,
                    None => write!(f, "upgraded; ")?,
                }
                match drain {
                    Drain::Completed => write!(f, "drain completed"),
                    Drain::GracePeriodExpired => {
                        write!(f, "grace period expired before the drain completed")
                    }
                    Drain::Forced(sig) => write!(f, "drain forced to end by {sig}"),
                }
            }
        }
    }
}

/// What SIGTERM and SIGINT do to the serving process.
///
/// [`Bootstrap`](super::Bootstrap) stops at once by default, as Gitaly's bootstrap does;
/// `#[flip::main]` drains by default (`<PREFIX>_STOP`, `stop = "..."`): `docker stop`,
/// Kubernetes, `systemctl stop`, `sv down`, `s6-svc -d` and `supervisorctl stop` all send
/// SIGTERM and expect what was accepted to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StopMode {
    /// Stop at once: connections in flight are cut.
    #[default]
    Immediate,
    /// Close every listener (new connections are refused, not reset), let what was accepted
    /// finish within the grace period, then exit 0. A second SIGTERM or SIGINT stops at once.
    /// Older generations still draining finish their drain and give up taking service back.
    Drain,
}

impl std::str::FromStr for StopMode {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<StopMode, &'static str> {
        match s.trim().to_ascii_lowercase().as_str() {
            "drain" => Ok(StopMode::Drain),
            "immediate" => Ok(StopMode::Immediate),
            _ => Err("expected drain or immediate"),
        }
    }
}

/// A starter failed to set up.
#[derive(Debug, thiserror::Error)]
#[error("starter {starter} failed")]
pub struct StartError {
    /// The starter's name.
    pub starter: String,
    /// Its error.
    #[source]
    pub source: BoxError,
}
