//! The standby process (see [`Options::standby`](crate::Options::standby)): the next process,
//! started ahead of time, waiting for the manifest. The upgrader asks this module for a standby
//! that is still current at upgrade time, and starts a fresh process when there is none.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::successor::{Spawner, Successor};
use crate::error::{Error, ExitStatus};
use crate::pidfile;
use crate::registry::Fds;
use crate::sync::lock;
use crate::sys::fd::FileId;

/// How the successor of an upgrade was started: [`Upgrader::last_successor_start`] after a
/// successful upgrade, the `started` field of `flip upgrade`, and the `upgrade succeeded` log
/// line. Its `Display` is short: `standby`, or `fresh: ` and the reason.
///
/// [`Upgrader::last_successor_start`]: crate::Upgrader::last_successor_start
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SuccessorStart {
    /// The standby process, started ahead of time, took over: the fast path.
    Standby,
    /// The successor was started at the upgrade.
    Fresh(FreshStart),
}

/// Why an upgrade started its new process afresh rather than through a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FreshStart {
    /// No standby waited: it is turned off, or none was started yet (the process that started
    /// this one still drained, or starting one failed).
    NoStandby,
    /// The standby had exited, or ended before it was ready.
    StandbyExited,
    /// The executable path names another file than the standby runs: a new binary landed
    /// after the standby started, too shortly before the upgrade for a new standby.
    NewBinary,
    /// Sockets or files were added to or removed from the registry after the standby started.
    SocketsChanged,
    /// The standby was stopped (SIGSTOP): it would not have become ready.
    StandbyStopped,
    /// A rollback starts the previous build, which no standby runs.
    Rollback,
}

impl std::fmt::Display for SuccessorStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuccessorStart::Standby => f.write_str("standby"),
            SuccessorStart::Fresh(why) => write!(f, "fresh: {why}"),
        }
    }
}

impl std::fmt::Display for FreshStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FreshStart::NoStandby => "no standby waited",
            FreshStart::StandbyExited => "the standby had exited",
            FreshStart::NewBinary => "a new binary landed after the standby started",
            FreshStart::SocketsChanged => "the sockets changed after the standby started",
            FreshStart::StandbyStopped => "the standby was stopped (SIGSTOP)",
            FreshStart::Rollback => "a rollback to the previous build",
        })
    }
}

/// The slot of the one standby process.
#[derive(Debug, Default)]
pub(crate) struct Standby {
    slot: Mutex<Option<Box<dyn Successor>>>,
    health: Mutex<Health>,
}

/// Longest wait between two tries of a standby that keeps exiting.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Standbys that exited on their own, one after the other, of the same binary.
#[derive(Debug, Default)]
struct Health {
    /// How many exited in a row without taking over.
    exits: u32,
    last: Option<ExitStatus>,
    /// The binary they ran: a new one is tried at once.
    binary: Option<FileId>,
    /// No new standby before then; `None` with `exits > 0`: not before a new binary (the
    /// last one refused the handoff: another handoff version, most likely).
    retry_at: Option<Instant>,
}

impl Health {
    /// Records a standby that exited on its own, and says so once per change.
    fn exited(&mut self, status: ExitStatus, binary: Option<FileId>) {
        self.exits += 1;
        let changed = self.last != Some(status) || self.binary != binary;
        self.last = Some(status);
        self.binary = binary;
        // Exit code 2 is a handoff this binary cannot read (or a bad environment): trying the
        // same binary again cannot help.
        if status == ExitStatus::Code(2) {
            self.retry_at = None;
            if changed {
                tracing::warn!(%status, "the standby process refused the handoff (its log says why, another handoff version most likely); no standby until a new binary lands, upgrades start afresh");
            }
            return;
        }
        let backoff = Duration::from_secs(1)
            .saturating_mul(1 << self.exits.saturating_sub(1).min(6))
            .min(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + backoff);
        if changed {
            tracing::warn!(%status, exits = self.exits, "the standby process exited before any upgrade; trying again less and less often, up to every {MAX_BACKOFF:?}");
        } else {
            tracing::debug!(%status, exits = self.exits, next_try_in = ?backoff, "the standby process exited again");
        }
    }

    /// Whether a new standby may start now (of the binary at the launch path).
    fn may_start(&mut self, binary_now: Option<FileId>) -> bool {
        if self.exits == 0 {
            return true;
        }
        if binary_now != self.binary {
            tracing::info!(
                exits = self.exits,
                "a new binary landed; trying a standby again"
            );
            *self = Health::default();
            return true;
        }
        self.retry_at.is_some_and(|at| Instant::now() >= at)
    }

    /// A standby survived until a check: the run of exits is over.
    fn alive(&mut self) {
        if self.exits > 0 {
            tracing::info!(exits = self.exits, "the standby process runs again");
            *self = Health::default();
        }
    }

    /// Why no standby waits, when exits are the reason.
    fn why_none(&self) -> Option<String> {
        let last = self.last?;
        Some(match self.retry_at {
            None => {
                format!("the last one refused the handoff ({last}); none until a new binary lands")
            }
            Some(at) => format!(
                "{} in a row exited ({last}); next try in {} s",
                self.exits,
                at.saturating_duration_since(Instant::now()).as_secs()
            ),
        })
    }
}

impl Standby {
    /// Takes the standby if it may take over: it is alive, it runs the file the launch path
    /// names now, and it holds exactly what `fds` would hand over. A stale one is let go, and
    /// why is returned.
    pub(crate) fn take_current(
        &self,
        spawner: &dyn Spawner,
        fds: &Fds,
        pid_file: Option<&Path>,
    ) -> Result<Box<dyn Successor>, FreshStart> {
        let mut standby = lock(&self.slot).take().ok_or(FreshStart::NoStandby)?;
        match staleness(standby.as_mut(), spawner, fds) {
            None => Ok(standby),
            Some(why) => {
                tracing::debug!(pid = standby.pid(), %why, "the standby process is stale");
                let_go(standby, false, pid_file);
                Err(why)
            }
        }
    }

    /// Keeps a current standby (one that holds what `fds` would hand over), or starts one with `start` in place of
    /// a stale one (or of none); returns its pid. `still_wanted` is asked after a new one
    /// started: another task may have begun an upgrade or a stop meanwhile, and then it is let
    /// go.
    pub(crate) fn refresh(
        &self,
        spawner: &dyn Spawner,
        fds: &Fds,
        pid_file: Option<&Path>,
        start: impl FnOnce() -> Result<Box<dyn Successor>, Error>,
        still_wanted: impl FnOnce() -> bool,
    ) -> Result<Option<u32>, Error> {
        let mut slot = lock(&self.slot);
        let mut health = lock(&self.health);
        if let Some(standby) = slot.as_mut() {
            match staleness(standby.as_mut(), spawner, fds) {
                None => {
                    health.alive();
                    return Ok(Some(standby.pid()));
                }
                Some(FreshStart::StandbyExited) => {
                    let status = standby.ended().unwrap_or(ExitStatus::Unknown);
                    health.exited(status, standby.binary());
                }
                Some(why) => {
                    tracing::debug!(pid = standby.pid(), %why, "replacing the stale standby process");
                }
            }
        }
        if let Some(stale) = slot.take() {
            let_go(stale, false, pid_file);
        }
        if !health.may_start(spawner.binary_now()) {
            return Ok(None);
        }
        drop(health);
        let standby = start()?;
        let pid = standby.pid();
        if !still_wanted() {
            let_go(standby, false, pid_file);
            return Ok(None);
        }
        tracing::debug!(pid, "started a standby process");
        *slot = Some(standby);
        Ok(Some(pid))
    }

    /// The standby's pid, if one waits and runs (one that exited is reaped here).
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut slot = lock(&self.slot);
        let standby = slot.as_mut()?;
        standby.ended().is_none().then(|| standby.pid())
    }

    /// Why no standby waits, when standbys kept exiting; `None` otherwise.
    pub(crate) fn why_none(&self) -> Option<String> {
        if self.pid().is_some() {
            return None;
        }
        lock(&self.health).why_none()
    }

    /// Lets the standby go, if any, reaping it before this returns: for a process that stops.
    pub(crate) fn stop(&self, pid_file: Option<&Path>) {
        if let Some(standby) = lock(&self.slot).take() {
            let_go(standby, true, pid_file);
        }
    }
}

/// Why `standby` may not take over, if it may not.
fn staleness(standby: &mut dyn Successor, spawner: &dyn Spawner, fds: &Fds) -> Option<FreshStart> {
    if standby.ended().is_some() {
        return Some(FreshStart::StandbyExited);
    }
    if standby.is_stopped() {
        return Some(FreshStart::StandbyStopped);
    }
    let same_binary = match (standby.binary(), spawner.binary_now()) {
        (Some(running), Some(on_disk)) => running == on_disk,
        _ => false,
    };
    if !same_binary {
        return Some(FreshStart::NewBinary);
    }
    (!fds.holds_exactly(standby.handed())).then_some(FreshStart::SocketsChanged)
}

/// Kills a standby that will not be used and removes the pid file it prepared. It is reaped in
/// the background, or before this returns with `reap_now` (for a process about to exit, where
/// a reaping task would not get to run).
pub(crate) fn let_go(standby: Box<dyn Successor>, reap_now: bool, pid_file: Option<&Path>) {
    let pid = standby.pid();
    if reap_now {
        standby.discard();
    } else {
        drop(standby);
    }
    if let Some(path) = pid_file {
        pidfile::remove_prepared_by(path, pid);
    }
}
