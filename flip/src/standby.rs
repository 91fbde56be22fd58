//! The standby process (see [`Options::standby`](crate::Options::standby)): the next process,
//! started ahead of time, waiting for the manifest. The upgrader asks this module for a standby
//! that is still current at upgrade time, and starts a fresh process when there is none.

use std::path::Path;
use std::sync::Mutex;

use crate::child::Pending;
use crate::error::Error;
use crate::key::Key;
use crate::pidfile;
use crate::process::Launch;
use crate::sys::fd::FileId;

/// The slot of the one standby process.
#[derive(Debug, Default)]
pub(crate) struct Standby {
    slot: Mutex<Option<Pending>>,
}

impl Standby {
    /// Takes the standby if it may take over: it is alive, it runs the file the launch path
    /// names now, and it holds exactly `fds`. A stale one is let go.
    pub(crate) fn take_current(
        &self,
        launch: &Launch,
        held: &[(Key, FileId)],
        pid_file: Option<&Path>,
    ) -> Option<Pending> {
        let mut standby = crate::lock(&self.slot).take()?;
        if is_current(&mut standby, launch, held) {
            return Some(standby);
        }
        tracing::debug!(
            pid = standby.pid(),
            "the standby process is stale; starting afresh"
        );
        let_go(standby, false, pid_file);
        None
    }

    /// Keeps a current standby (one that holds `held`), or starts one with `start` in place of
    /// a stale one (or of none); returns its pid. `still_wanted` is asked after a new one
    /// started: another task may have begun an upgrade or a stop meanwhile, and then it is let
    /// go.
    pub(crate) fn refresh(
        &self,
        launch: &Launch,
        held: &[(Key, FileId)],
        pid_file: Option<&Path>,
        start: impl FnOnce() -> Result<Pending, Error>,
        still_wanted: impl FnOnce() -> bool,
    ) -> Result<Option<u32>, Error> {
        let mut slot = crate::lock(&self.slot);
        if let Some(standby) = slot.as_mut() {
            if is_current(standby, launch, held) {
                return Ok(Some(standby.pid()));
            }
            tracing::debug!(pid = standby.pid(), "replacing the stale standby process");
        }
        if let Some(stale) = slot.take() {
            let_go(stale, false, pid_file);
        }
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

    /// The standby's pid, if one waits.
    pub(crate) fn pid(&self) -> Option<u32> {
        crate::lock(&self.slot).as_ref().map(Pending::pid)
    }

    /// Lets the standby go, if any, reaping it before this returns: for a process that stops.
    pub(crate) fn stop(&self, pid_file: Option<&Path>) {
        if let Some(standby) = crate::lock(&self.slot).take() {
            let_go(standby, true, pid_file);
        }
    }
}

fn is_current(standby: &mut Pending, launch: &Launch, held: &[(Key, FileId)]) -> bool {
    if standby.has_ended() {
        return false;
    }
    let same_binary = match (standby.binary(), launch.binary_now()) {
        (Some(running), Some(on_disk)) => running == on_disk,
        _ => false,
    };
    same_binary && standby.holds(held)
}

/// Kills a standby that will not be used and removes the pid file it prepared. It is reaped in
/// the background, or before this returns with `reap_now` (for a process about to exit, where
/// a reaping task would not get to run).
pub(crate) fn let_go(standby: Pending, reap_now: bool, pid_file: Option<&Path>) {
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
