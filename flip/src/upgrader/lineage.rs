//! The generations around this process: the one that started it (upgrades are refused while it
//! lives) and the one it upgraded to (should it die during the drain, this process takes
//! service back).

use std::os::fd::AsFd;

use super::predecessor::PredecessorState;
use super::{Phase, Upgrader};
use crate::error::{Error, ExitStatus, Repr, Result};
use crate::handoff::DRAINED_BYTE;
use crate::pidfile;
use crate::sync::lock;
use crate::sys::pidref::ProcessRef;

impl Upgrader {
    /// The process that started this one and where it stands, while it runs.
    pub(super) fn predecessor(&self) -> Result<Option<(u32, PredecessorState)>> {
        let mut parent = lock(&self.shared.parent);
        let Some(link) = parent.as_mut() else {
            return Ok(None);
        };
        match link.state() {
            Ok(PredecessorState::Exited) => {
                *parent = None;
                Ok(None)
            }
            Ok(state) => Ok(Some((link.pid, state))),
            Err(e) => Err(Error::io("checking whether the predecessor exited")(e)),
        }
    }

    /// Whether the process that started this one still runs (drains, or waits out its
    /// probation).
    pub(crate) fn predecessor_alive(&self) -> bool {
        self.predecessor().is_ok_and(|p| p.is_some())
    }

    /// The pid of the process that started this one, while it drains: upgrades are refused
    /// then (without [`Options::max_draining`](super::Options::max_draining)). A predecessor
    /// whose drain is over and that only waits out its probation does not count.
    pub(super) fn living_predecessor(&self) -> Result<Option<u32>> {
        Ok(self
            .predecessor()?
            .filter(|(_, state)| *state == PredecessorState::Draining)
            .map(|(pid, _)| pid))
    }

    /// Commits the upgrade that started this process, if its predecessor waits out a
    /// probation: it will not take service back, and exits. Returns its pid when it did.
    pub(super) fn commit_predecessor(&self) -> Result<Option<u32>> {
        let mut parent = lock(&self.shared.parent);
        let Some(link) = parent.as_mut() else {
            return Ok(None);
        };
        match link.state() {
            Ok(PredecessorState::OnProbation) => {
                link.commit()
                    .map_err(Error::io("committing the predecessor's upgrade"))?;
                Ok(Some(link.pid))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(Error::io("checking whether the predecessor exited")(e)),
        }
    }

    /// Resolves with the successor's exit status if the process this one upgraded to ends
    /// while this one still runs (it died right after declaring itself ready, say). Nobody else
    /// serves then: see [`resume`](Upgrader::resume).
    pub fn successor_exited(&self) -> impl Future<Output = ExitStatus> + Send + 'static {
        let mut rx = self.shared.successor_exit.subscribe();
        async move {
            let status = match rx.wait_for(Option::is_some).await {
                Ok(status) => *status,
                Err(_) => None,
            };
            match status {
                Some(status) => status,
                // The upgrader is gone: nothing will ever be reported.
                None => std::future::pending().await,
            }
        }
    }

    /// Resolves once the successor committed the upgrade (see [`Upgrader::on_probation`]): it
    /// is upgrading in turn, and this process should not take service back.
    pub(crate) fn successor_committed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.successor_committed.subscribe();
        async move {
            if rx.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Tells the successor that this process's drain is over and that it only waits out its
    /// probation, ready to take service back should the successor fail: the successor may
    /// start its standby, and an upgrade it runs commits this one.
    pub(crate) fn on_probation(&self) {
        // A successor told version 1 does not know the byte.
        let version = self
            .shared
            .successor_version
            .load(std::sync::atomic::Ordering::SeqCst);
        if version < 2 {
            return;
        }
        if let Some(link) = lock(&self.shared.successor_link).as_ref()
            && let Err(e) = crate::sys::fd::write_all(link.as_fd(), &[DRAINED_BYTE])
        {
            tracing::debug!(error = %e, "cannot tell the successor that the drain is over");
        }
    }

    /// Takes service back after the successor died: this process is ready again (upgrades are
    /// accepted, [`exit`](Upgrader::exit) is pending again) and the pid file names it again.
    /// Only valid after a successful upgrade whose successor has exited.
    pub fn resume(&self) -> Result<()> {
        let mut phase = lock(&self.shared.phase);
        if !matches!(*phase, Phase::Upgraded) || self.shared.successor_exit.borrow().is_none() {
            return Err(Error::from(Repr::NotResumable));
        }
        if let Some(path) = &self.shared.options.pid_file {
            pidfile::write(path, std::process::id(), self.shared.options.pid_file_mode)?;
        }
        *lock(&self.shared.successor_link) = None;
        self.shared.successor_exit.send_replace(None);
        self.shared.successor_committed.send_replace(false);
        self.shared.exit.send_replace(false);
        *phase = Phase::Ready;
        Ok(())
    }

    /// Resolves once the process that started this one has exited (at once on a first start).
    /// Upgrades are refused until then.
    pub async fn parent_exited(&self) -> Result<()> {
        self.wait_for_predecessor(|state| state == PredecessorState::Exited)
            .await
    }

    /// Resolves once the process that started this one no longer drains: it exited, or it
    /// waits out its probation (at once on a first start). A standby may start from then on.
    pub(crate) async fn predecessor_drained(&self) -> Result<()> {
        self.wait_for_predecessor(|state| state != PredecessorState::Draining)
            .await
    }

    async fn wait_for_predecessor(&self, done: fn(PredecessorState) -> bool) -> Result<()> {
        let afd = {
            let parent = lock(&self.shared.parent);
            match parent.as_ref() {
                None => return Ok(()),
                Some(link) => link
                    .watch_fd()
                    .map_err(Error::io("watching the predecessor"))?,
            }
        };
        loop {
            {
                let mut parent = lock(&self.shared.parent);
                let Some(link) = parent.as_mut() else {
                    return Ok(());
                };
                let state = link
                    .state()
                    .map_err(Error::io("watching the predecessor"))?;
                if state == PredecessorState::Exited {
                    *parent = None;
                }
                if done(state) {
                    return Ok(());
                }
            }
            let mut guard = afd
                .readable()
                .await
                .map_err(Error::io("watching the predecessor"))?;
            guard.clear_ready();
        }
    }

    /// Tells every older generation still draining to stop now (SIGTERM): a stop of the
    /// serving process stops the whole service, not only its newest generation. Reaches only
    /// the processes a verified handoff named, pinned (never a recycled pid).
    pub(crate) fn stop_elders(&self) {
        for process in self.draining_ancestors() {
            tracing::info!(
                pid = process.pid(),
                "stopping an older generation that still drains"
            );
            if let Err(e) = process.signal(crate::sys::process::SIGTERM) {
                tracing::warn!(pid = process.pid(), error = %e, "cannot stop an older generation");
            }
        }
    }

    /// Whether an older generation still runs (drains).
    pub(crate) fn elders_running(&self) -> bool {
        !self.draining_ancestors().is_empty()
    }

    /// Older generations still running, oldest first.
    pub(super) fn draining_ancestors(&self) -> Vec<&ProcessRef> {
        self.shared
            .ancestors
            .iter()
            .filter(|process| process.runs())
            .collect()
    }

    /// What a successor is told of its elders: those still running, and this process.
    pub(super) fn lineage_for_successor(&self) -> Vec<crate::handoff::ProcessName> {
        let mut lineage: Vec<_> = self
            .draining_ancestors()
            .iter()
            .map(|p| (p.pid(), p.start_time()))
            .collect();
        let me = crate::sys::process::own_pid();
        if let Some(stat) = crate::sys::pidref::Stat::read(me) {
            lineage.push((me, stat.start));
        }
        lineage
    }

    /// With [`Options::max_draining`]: waits (until `deadline`) for the oldest draining
    /// generations to finish their drain until the upgrade leaves at most that many draining.
    /// They are not told to hurry: a generation is never made to drop requests it accepted,
    /// only its own grace period ends its drain. When they are not done by the deadline, the
    /// upgrade fails before anything was started, and this process serves on.
    pub(super) async fn make_room(&self, deadline: tokio::time::Instant) -> Result<()> {
        let Some(max) = self.shared.options.max_draining else {
            return Ok(());
        };
        // After this upgrade, this process drains too.
        let draining = self.draining_ancestors();
        let excess = (draining.len() + 1).saturating_sub(max);
        for process in draining.iter().take(excess) {
            if !process.runs() {
                continue;
            }
            tracing::info!(
                pid = process.pid(),
                max_draining = max,
                "waiting for the oldest draining generation to finish what it accepted"
            );
            while process.runs() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::io(
                        "waiting for an old generation to finish its drain",
                    )(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "pid {} still drains (max_draining = {max}); try again once it exited",
                            process.pid()
                        ),
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
        Ok(())
    }
}

/// Pins each listed generation that still runs as the same process (same start time); the
/// others ended, and their pids may name someone else by now.
pub(super) fn pin_ancestors(listed: &[crate::handoff::ProcessName]) -> Vec<ProcessRef> {
    listed
        .iter()
        .filter_map(|&(pid, start)| ProcessRef::open(pid, Some(start)).ok().flatten())
        .collect()
}
