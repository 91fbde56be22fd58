//! Asking a running flip server: its status, and an upgrade that reports how it ended.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{MAX_RESPONSE, Request, Response};

/// Why a control request did not get the answer asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nobody answers at the control socket: no server, or one without a control socket.
    #[error("cannot reach the control socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("talking to the control socket")]
    Io(#[source] std::io::Error),
    /// No whole answer came within the time the client gave it.
    #[error("no answer from the control socket within {waited:?} (waiting for {what})")]
    Timeout {
        /// What the client waited for.
        what: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// The answer is not what the protocol says.
    #[error("bad answer from the control socket: {0}")]
    Protocol(String),
    /// The server refused the upgrade without starting anything: one is in progress, the
    /// previous generation still drains, upgrades are disabled, it is stopping.
    #[error("upgrade refused: {reason}")]
    Refused {
        /// Why, in the server's words.
        reason: String,
    },
    /// A successor was started and did not become ready; the server serves on.
    #[error("upgrade failed: {reason}")]
    Failed {
        /// Why, in the server's words (exit status or timeout).
        reason: String,
        /// The successor's pid.
        new_pid: Option<u32>,
        /// The last lines the successor wrote to its standard error.
        stderr: Vec<String>,
    },
    /// The successor said ready, then ended within the probation, and the server took service
    /// back: the old process serves on.
    #[error("upgrade rolled back: {cause}")]
    RolledBack {
        /// The successor that ended.
        new_pid: u32,
        /// Why, in the server's words: how the successor ended, and when.
        cause: String,
        /// The process that serves again.
        old_pid: u32,
    },
}

/// What a successful upgrade reported.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpgradeReport {
    /// The process that was serving, and now drains.
    pub old_pid: u32,
    /// The process that serves now.
    pub new_pid: u32,
    /// From the request to the successor's readiness.
    pub ready_after: Duration,
    /// The predecessor's binary: path and build identity.
    pub old_binary: String,
    /// The successor's binary: path and build identity.
    pub new_binary: String,
    /// How the successor was started: `standby`, or `fresh: ` and why (see
    /// [`SuccessorStart`](crate::SuccessorStart)). `None` from a server that does not say.
    pub started: Option<String>,
    /// From readiness to the verdict: the probation the upgrade waited out (zero without
    /// one). `None` from a server that answers at readiness (before flip 0.2).
    pub committed_after: Option<Duration>,
}

/// How the last upgrade ended, as [`Status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastUpgrade {
    /// `succeeded`, `failed` or `refused`.
    pub result: String,
    /// The successor, when one was started.
    pub new_pid: Option<u32>,
    /// How long it took.
    pub elapsed: Duration,
    /// Why it failed, or the binaries: `old -> new`.
    pub detail: String,
}

/// A server's status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The serving process.
    pub pid: u32,
    /// 1 for the first start, then one more for each upgrade.
    pub generation: u64,
    /// When this process started, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Upgrades this process started that succeeded (0 or 1: it exits after one) and failed.
    pub upgrades_succeeded: u64,
    /// Upgrades that failed in this process.
    pub upgrades_failed: u64,
    /// Upgrades of this process that were rolled back: the successor ended within the
    /// probation and this process took service back (0 from a server without probation).
    pub upgrades_rolled_back: u64,
    /// The last upgrade this process tried.
    pub last_upgrade: Option<LastUpgrade>,
    /// The previous generation, while it still drains (upgrades are refused until it exits).
    pub draining_parent: Option<u32>,
    /// How long the upgrade in progress has run, if one does.
    pub upgrading_for: Option<Duration>,
    /// The standby process, if one waits and runs.
    pub standby_pid: Option<u32>,
    /// Why none waits, when standbys kept exiting.
    pub standby_none: Option<String>,
    /// Every socket and file in the registry: `kind network address`.
    pub listeners: Vec<String>,
    /// The binary's path and build identity.
    pub binary: String,
    /// The build the predecessor ran, which [`Client::rollback`] starts again: path (marked
    /// `(deleted)` once a deploy replaced it) and build identity. `None` in a first start.
    pub previous_binary: Option<String>,
    /// The flip version the server was built with.
    pub flip_version: String,
    /// The last health check that ran in the server (during its predecessor's probation).
    pub last_health_check: Option<HealthCheck>,
}

/// A health check's result, as [`Status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    /// The check's name (its function's path with `#[flip::health]`).
    pub check: String,
    /// `ok`, or `failed: ` and the error.
    pub result: String,
    /// When it ran, seconds since the Unix epoch.
    pub at_unix: u64,
}

/// A flip server's control socket.
///
/// ```no_run
/// let server = flip::control::Client::for_pid_file("/run/app.pid");
/// let status = server.status()?;
/// println!("pid {} (generation {})", status.pid, status.generation);
/// let done = server.upgrade(std::time::Duration::from_secs(90))?;
/// println!("now {} after {:?}", done.new_pid, done.ready_after);
/// # Ok::<_, flip::control::ControlError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// The control socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client { path: path.into() }
    }

    /// The control socket of the server whose pid file is `pid_file` (see
    /// [`default_socket_path`](super::default_socket_path)).
    pub fn for_pid_file(pid_file: impl AsRef<Path>) -> Client {
        Client::new(super::default_socket_path(pid_file.as_ref()))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's status.
    pub fn status(&self) -> Result<Status, ControlError> {
        let r = self.ask(Request::Status, Duration::from_secs(10))?;
        match r.kind.as_str() {
            "ok" => parse_status(&r).map_err(ControlError::Protocol),
            _ => Err(ControlError::Protocol(
                r.get("reason").unwrap_or("no status").to_owned(),
            )),
        }
    }

    /// Asks the server to upgrade and waits for the verdict, at most `timeout`: the successor's
    /// readiness, then the probation if the server has one (see
    /// [`Bootstrap::set_probation`](crate::Bootstrap::set_probation)).
    /// [`ControlError::RolledBack`] when the successor ended within it.
    pub fn upgrade(&self, timeout: Duration) -> Result<UpgradeReport, ControlError> {
        self.upgrade_with(Request::Upgrade, timeout)
    }

    /// Asks the server to upgrade to the build its predecessor ran ([`Status::previous_binary`],
    /// pinned by descriptor, so it starts even after a deploy replaced the file), and waits for
    /// the verdict as [`upgrade`](Client::upgrade) does. Refused when there is none.
    pub fn rollback(&self, timeout: Duration) -> Result<UpgradeReport, ControlError> {
        self.upgrade_with(Request::Rollback, timeout)
    }

    fn upgrade_with(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<UpgradeReport, ControlError> {
        let r = self.ask(request, timeout)?;
        let p = ControlError::Protocol;
        match r.kind.as_str() {
            "ok" => Ok(UpgradeReport {
                old_pid: r.number("old_pid").map_err(p)?,
                new_pid: r.number("new_pid").map_err(p)?,
                ready_after: r.millis("ready_ms").map_err(p)?,
                old_binary: r.require("old_binary").map_err(p)?.to_owned(),
                new_binary: r.require("new_binary").map_err(p)?.to_owned(),
                started: r.all("started").next().map(str::to_owned),
                committed_after: r.millis("verdict_ms").ok(),
            }),
            "rolled-back" => Err(ControlError::RolledBack {
                new_pid: r.number("new_pid").map_err(p)?,
                old_pid: r.number("old_pid").map_err(p)?,
                cause: r.require("cause").map_err(p)?.to_owned(),
            }),
            // The server's reason names the refusal or failure itself: said once.
            "refused" => Err(ControlError::Refused {
                reason: unprefixed(r.require("reason").map_err(p)?, "upgrade refused: "),
            }),
            "failed" => Err(ControlError::Failed {
                reason: unprefixed(r.require("reason").map_err(p)?, "upgrade failed: "),
                new_pid: r.number("new_pid").ok(),
                stderr: r.all("stderr").map(str::to_owned).collect(),
            }),
            other => Err(ControlError::Protocol(format!(
                "{other}: {}",
                r.get("reason").unwrap_or("no reason")
            ))),
        }
    }

    fn ask(&self, request: Request, timeout: Duration) -> Result<Response, ControlError> {
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ControlError::Connect {
                path: self.path.clone(),
                source,
            })?;
        let timeout = timeout.max(Duration::from_millis(1));
        let what = match request {
            Request::Upgrade | Request::Rollback => "the upgrade's verdict",
            Request::Status => "the status",
        };
        let timed_out = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                ControlError::Timeout {
                    what,
                    waited: timeout,
                }
            }
            _ => ControlError::Io(e),
        };
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.write_all(request.encode().as_bytes()))
            .map_err(timed_out)?;
        let mut text = String::new();
        stream
            .take(MAX_RESPONSE as u64)
            .read_to_string(&mut text)
            .map_err(timed_out)?;
        Response::decode(&text).map_err(ControlError::Protocol)
    }
}

/// `reason` without `prefix`, if it starts with it.
fn unprefixed(reason: &str, prefix: &str) -> String {
    reason.strip_prefix(prefix).unwrap_or(reason).to_owned()
}

fn parse_status(r: &Response) -> Result<Status, String> {
    let last_upgrade = match r.get("last_result") {
        None => None,
        Some(result) => Some(LastUpgrade {
            result: result.to_owned(),
            new_pid: r.number("last_new_pid").ok(),
            elapsed: r.millis("last_elapsed_ms")?,
            detail: r.get("last_detail").unwrap_or("").to_owned(),
        }),
    };
    Ok(Status {
        pid: r.number("pid")?,
        generation: r.number("generation")?,
        started_unix: r.number("started_unix")?,
        upgrades_succeeded: r.number("upgrades_succeeded")?,
        upgrades_failed: r.number("upgrades_failed")?,
        upgrades_rolled_back: r.number("upgrades_rolled_back").unwrap_or(0),
        last_upgrade,
        draining_parent: r.number("draining_parent").ok(),
        upgrading_for: r
            .get("upgrading_ms")
            .map(|_| r.millis("upgrading_ms"))
            .transpose()?,
        standby_pid: r.number("standby_pid").ok(),
        standby_none: r.get("standby_none").map(str::to_owned),
        listeners: r.all("listener").map(str::to_owned).collect(),
        binary: r.require("binary")?.to_owned(),
        previous_binary: r.get("previous_binary").map(str::to_owned),
        flip_version: r.require("flip_version")?.to_owned(),
        last_health_check: match (r.get("health_check"), r.get("health_result")) {
            (Some(check), Some(result)) => Some(HealthCheck {
                check: check.to_owned(),
                result: result.to_owned(),
                at_unix: r.number("health_at_unix").unwrap_or(0),
            }),
            _ => None,
        },
    })
}
