//! One upgrade, as the predecessor runs it: the refusals, the deadline and the cancel; the
//! standby or a fresh start; handing over and waiting for the successor to be ready.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::standby::{FreshStart, SuccessorStart};
use super::successor::{Spawner, Successor};
use super::{Phase, Upgrader};
use crate::error::{Error, Repr, Result};
use crate::pidfile;
use crate::registry::Registered;
use crate::sync::lock;

impl Upgrader {
    /// Starts the successor and resolves with its pid once it is ready.
    ///
    /// Refused (with nothing started) before [`ready`](Upgrader::ready), while another upgrade
    /// runs, after a successful one, after [`stop`](Upgrader::stop), and while the process that
    /// started this one is still alive. Fails when the successor exits or is not ready within
    /// the upgrade timeout (it is then killed and reaped). After a failure this process keeps
    /// serving, and a later call may succeed. Needs a tokio runtime with I/O and time enabled.
    pub async fn upgrade(&self) -> Result<u32> {
        self.upgrade_to(None).await
    }

    /// Upgrades to the build the predecessor ran (see
    /// [`previous_build`](Upgrader::previous_build)), pinned by descriptor: it starts even
    /// after a deploy replaced the file at the executable path. Otherwise as
    /// [`upgrade`](Upgrader::upgrade); the successor's own upgrades start the executable path
    /// again. Refused when there is no previous build (a first start).
    pub async fn rollback(&self) -> Result<u32> {
        let previous = self
            .previous_build()
            .ok_or_else(|| Error::from(Repr::NoPreviousBuild))?;
        self.upgrade_to(Some(previous)).await
    }

    /// An upgrade to the executable path, or to `program` (the pinned previous build).
    async fn upgrade_to(&self, program: Option<std::path::PathBuf>) -> Result<u32> {
        let rollback = program.map(|p| self.shared.spawner.for_program(p));
        let spawner: &dyn Spawner = rollback.as_deref().unwrap_or(self.shared.spawner.as_ref());
        let cancel = self.begin_upgrade()?;
        // Back to Ready on every path but success, including this future being dropped.
        let mut reset = PhaseReset {
            phase: &self.shared.phase,
            armed: true,
        };
        let started = Instant::now();
        let timeout = self.shared.options.upgrade_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        self.make_room(deadline).await?;
        let standby = match rollback {
            Some(_) => Err(FreshStart::Rollback),
            None => self
                .shared
                .standby
                .take_current(spawner, &self.shared.fds, self.pid_file()),
        };
        let (mut child, mut start) = match standby {
            Ok(mut standby) => {
                let pid = standby.pid();
                tracing::debug!(pid, "handing over to the standby process");
                match standby.hand_over() {
                    Ok(()) => (standby, SuccessorStart::Standby),
                    Err(e) => {
                        tracing::warn!(pid, error = %crate::error::Chain(&e), "the standby process is gone; starting afresh");
                        self.reclaim_pid_file(pid);
                        let fresh = self.start_fresh(spawner, self.snapshot()?)?;
                        (fresh, SuccessorStart::Fresh(FreshStart::StandbyExited))
                    }
                }
            }
            Err(why) => {
                if self.shared.options.standby {
                    tracing::info!(%why, "starting the successor afresh");
                }
                let fresh = self.start_fresh(spawner, self.snapshot()?)?;
                (fresh, SuccessorStart::Fresh(why))
            }
        };
        loop {
            let pid = child.pid();
            tracing::debug!(pid, program = %spawner.program().display(), "started the successor");
            let failed = tokio::select! {
                ready = child.wait_ready() => match ready {
                    Ok(()) => None,
                    Err(status) => Some(Error::from(Repr::SuccessorExited { pid, status, last_stderr: child.last_stderr().await })),
                },
                () = tokio::time::sleep_until(deadline) => {
                    child.kill().await;
                    Some(Error::from(Repr::Timeout { pid, timeout, last_stderr: child.last_stderr().await }))
                }
                () = cancel.notified() => {
                    child.kill().await;
                    Some(Error::from(Repr::Terminating))
                }
            };
            let Some(error) = failed else { break };
            // The successor may have died between writing the pid file and telling us it was ready:
            // the pid file must name the process that serves, this one.
            self.reclaim_pid_file(pid);
            match error.exit_status() {
                // Killed from outside a moment before the upgrade (so it still looked alive),
                // say. A fresh start is what the upgrade would have done without a standby.
                Some(status) if start == SuccessorStart::Standby => {
                    tracing::warn!(pid, %status, "the standby process ended before it was ready; starting afresh");
                    child = self.start_fresh(spawner, self.snapshot()?)?;
                    start = SuccessorStart::Fresh(FreshStart::StandbyExited);
                }
                _ => return Err(error),
            }
        }
        let pid = child.pid();
        self.shared
            .successor_version
            .store(child.version(), std::sync::atomic::Ordering::SeqCst);
        let shared = Arc::downgrade(&self.shared);
        let committed = Arc::downgrade(&self.shared);
        *lock(&self.shared.successor_link) = child.serve(
            Box::new(move |status| {
                if let Some(shared) = shared.upgrade() {
                    shared.successor_exit.send_replace(Some(status));
                }
            }),
            Box::new(move || {
                if let Some(shared) = committed.upgrade() {
                    shared.successor_committed.send_replace(true);
                }
            }),
        );
        {
            let mut phase = lock(&self.shared.phase);
            reset.armed = false;
            match *phase {
                // stop() raced with success: the successor serves; this one exits either way.
                Phase::Stopped => {}
                _ => *phase = Phase::Upgraded,
            }
        }
        *lock(&self.shared.last_start) = Some(start);
        self.shared.exit.send_replace(true);
        tracing::debug!(pid, elapsed = ?started.elapsed(), "the successor is ready");
        Ok(pid)
    }

    /// Starts a successor with `fds` and hands them over at once.
    fn start_fresh(
        &self,
        spawner: &dyn Spawner,
        fds: Vec<Registered>,
    ) -> Result<Box<dyn Successor>> {
        let mut successor = self.spawn(spawner, fds)?;
        successor.hand_over()?;
        Ok(successor)
    }

    /// Starts a successor with `fds`, not told yet what they are.
    fn spawn(&self, spawner: &dyn Spawner, fds: Vec<Registered>) -> Result<Box<dyn Successor>> {
        let ancestors = self.lineage_for_successor();
        spawner.spawn(fds, self.shared.generation + 1, &ancestors)
    }

    /// Duplicates of every socket and file of the registry, for a successor.
    fn snapshot(&self) -> Result<Vec<Registered>> {
        self.shared
            .fds
            .snapshot()
            .map_err(Error::io("duplicating the sockets to hand over"))
    }

    /// Starts a standby process if [`Options::standby`](super::Options::standby) is set and there is none that is still
    /// current (see there); returns its pid. Does nothing (and returns `None`) without the
    /// option, before [`ready`](Upgrader::ready), while the process that started this one still
    /// runs unless [`Options::max_draining`](super::Options::max_draining) allows upgrades then (without it, upgrades are
    /// refused until that process exits, and a standby should not compete with its drain for
    /// the CPU), during an upgrade and once this process is exiting.
    ///
    /// [`Bootstrap`](crate::Bootstrap) calls this when its predecessor has exited, after a failed
    /// upgrade, as soon as a new binary lands at the executable path (it watches the path's
    /// directories), and every second (a binary replaced on disk makes the standby stale; this
    /// starts one of the new binary). A program using the upgrader alone should call it when
    /// it deploys, too. Needs a tokio runtime with I/O enabled.
    pub fn refresh_standby(&self) -> Result<Option<u32>> {
        if !self.shared.options.standby || !matches!(*lock(&self.shared.phase), Phase::Ready) {
            return Ok(None);
        }
        // With upgrades allowed during drains (long-lived connections), the next one, a fix
        // or a rollback say, should not have to start afresh because the last drain is long.
        if self.shared.options.max_draining.is_none() && self.living_predecessor()?.is_some() {
            return Ok(None);
        }
        let start = || self.spawn(self.shared.spawner.as_ref(), self.snapshot()?);
        self.shared.standby.refresh(
            self.shared.spawner.as_ref(),
            &self.shared.fds,
            self.pid_file(),
            start,
            || matches!(*lock(&self.shared.phase), Phase::Ready),
        )
    }

    /// Rewrites the pid file with this process's pid if it names `child`, which is gone.
    fn reclaim_pid_file(&self, child: u32) {
        let Some(path) = &self.shared.options.pid_file else {
            return;
        };
        pidfile::remove_prepared_by(path, child);
        if pidfile::read(path) == Some(child)
            && let Err(e) =
                pidfile::write(path, std::process::id(), self.shared.options.pid_file_mode)
        {
            tracing::error!(error = %crate::error::Chain(&e), "could not restore the pid file");
        }
    }

    fn begin_upgrade(&self) -> Result<Arc<Notify>> {
        let mut phase = lock(&self.shared.phase);
        match *phase {
            Phase::Starting => return Err(Error::from(Repr::NotReady)),
            Phase::Upgrading(_) => return Err(Error::from(Repr::InProgress)),
            Phase::Upgraded => return Err(Error::from(Repr::AlreadyUpgraded)),
            Phase::Stopped => return Err(Error::from(Repr::Terminating)),
            Phase::Ready => {}
        }
        if let Some(reason) = &self.shared.options.upgrades_would_end_service {
            return Err(Error::from(Repr::WouldEndService {
                reason: reason.clone(),
            }));
        }
        if let Some(parent_pid) = self.living_predecessor()?
            && self.shared.options.max_draining.is_none()
        {
            return Err(Error::from(Repr::PredecessorAlive { pid: parent_pid }));
        }
        // A predecessor that only waits out its probation is told that this upgrade commits
        // the one before: the operator has moved on, so it exits rather than take service back.
        if let Some(pid) = self.commit_predecessor()? {
            tracing::info!(
                predecessor = pid,
                "committed the upgrade on probation: upgrading in turn"
            );
        }
        let cancel = Arc::new(Notify::new());
        *phase = Phase::Upgrading(cancel.clone());
        Ok(cancel)
    }
}

/// Puts the phase back to `Ready` unless disarmed (the upgrade succeeded).
struct PhaseReset<'a> {
    phase: &'a Mutex<Phase>,
    armed: bool,
}

impl Drop for PhaseReset<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut phase = lock(self.phase);
            if let Phase::Upgrading(_) = *phase {
                *phase = Phase::Ready;
            }
        }
    }
}
