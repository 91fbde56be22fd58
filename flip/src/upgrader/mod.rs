//! The upgrade state machine.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, watch};

use crate::error::{Error, ExitStatus, Result};
use crate::launch::Launch;
use crate::pidfile;
use crate::registry::{Fds, Registered, SocketSettings};
use crate::sync::lock;
use crate::sys::pidref::ProcessRef;

mod lineage;
mod options;
mod predecessor;
mod standby;
mod successor;

pub use options::{DEFAULT_BACKLOG, DEFAULT_UNIX_SOCKET_MODE, DEFAULT_UPGRADE_TIMEOUT, Options};
pub(crate) use predecessor::{has_marker, stash_marker};
pub use standby::{FreshStart, SuccessorStart};

use predecessor::ParentLink;
use standby::Standby;
use successor::Child;

#[derive(Debug)]
enum Phase {
    /// Created; `ready()` not called yet.
    Starting,
    /// Serving; upgrades may start.
    Ready,
    /// A new process is starting. `stop()` wakes the notify to cancel it.
    Upgrading(Arc<Notify>),
    /// A new process took over; this one drains and exits.
    Upgraded,
    /// `stop()` was called.
    Stopped,
}

#[derive(Debug)]
struct Shared {
    options: Options,
    fds: Fds,
    launch: Launch,
    phase: Mutex<Phase>,
    parent: Mutex<Option<ParentLink>>,
    /// This process's pid file, written ahead of time when an upgrade started it.
    prepared_pid_file: Mutex<Option<pidfile::Prepared>>,
    /// The next process, started ahead of time (`Options::standby`).
    standby: Standby,
    /// How the last successful upgrade started its new process.
    last_start: Mutex<Option<SuccessorStart>>,
    generation: u64,
    /// Older generations that ran when this one started, oldest first, pinned (never a
    /// recycled pid); empty without a verified handoff.
    ancestors: Vec<ProcessRef>,
    /// Write end of the pipe the successor watches; held open until this process exits.
    successor_link: Mutex<Option<OwnedFd>>,
    /// How the successor ended, should it end while this process still runs.
    successor_exit: watch::Sender<Option<ExitStatus>>,
    exit: watch::Sender<bool>,
}

/// Hands every socket to a new instance of the binary, and tells the old one when to go.
///
/// One `Upgrader` per process. Create it first thing in `main`, before other threads exist
/// (it reads and removes the `FLIP_HANDOFF` environment variable, which is only safe while no
/// other thread reads the environment through C code): `#[flip::main]` does this for you.
///
/// An upgrade reads as a straight path:
/// 1. [`upgrade`](Upgrader::upgrade) starts the executable again (see [`Options::executable`])
///    with the same arguments, the working directory of the first start, the same environment
///    plus the handoff marker, and every socket of [`fds`](Upgrader::fds);
/// 2. the new process builds its `Upgrader`, gets the very same sockets from its registry, and
///    calls [`ready`](Upgrader::ready): unclaimed sockets are closed, the pid file names it;
/// 3. `upgrade` resolves with the new pid and [`exit`](Upgrader::exit) resolves: the old process
///    stops accepting, drains, and exits;
/// 4. the new process notices its parent is gone and accepts upgrades itself.
///
/// If the new process exits or is not ready within the upgrade timeout, `upgrade` fails and the
/// old process simply keeps serving.
///
/// With [`Options::standby`], step 1 happens ahead of time ([`refresh_standby`]) and `upgrade`
/// only hands the sockets' manifest to the waiting process.
///
/// [`refresh_standby`]: Upgrader::refresh_standby
///
/// The executable is resolved at upgrade time from the path the process was started by: a
/// binary replaced at that path (or a symlink switched to a new release) is what runs.
#[derive(Debug, Clone)]
pub struct Upgrader {
    shared: Arc<Shared>,
}

static CREATED: AtomicBool = AtomicBool::new(false);

impl Upgrader {
    /// Reads the handoff (if this process was started by an upgrade) and builds the upgrader.
    ///
    /// Fails when the handoff is unusable, the pid file's directory does not exist, or an
    /// upgrader already exists in this process. Needs no tokio runtime. In a standby process
    /// (see [`Options::standby`]) this waits until the parent hands over, or fails with
    /// [`HandoffError::Withdrawn`](crate::HandoffError::Withdrawn) when it lets the standby go.
    pub fn new(options: Options) -> Result<Upgrader> {
        if CREATED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyCreated);
        }
        let result = Self::build(options);
        if result.is_err() {
            CREATED.store(false, Ordering::SeqCst);
        }
        result
    }

    fn build(options: Options) -> Result<Upgrader> {
        // Before the handoff: a standby waits there, so what comes first is off the upgrade's
        // path.
        let launch = Launch::capture(options.executable.clone(), options.successor_env.clone())
            .map_err(Error::io(
                "finding the executable, arguments and working directory",
            ))?;
        // Then readiness costs a rename. If this fails, `ready()` writes the file the long way
        // and reports what is wrong.
        let prepared_pid_file = match &options.pid_file {
            Some(path) if predecessor::has_marker() => {
                pidfile::prepare(path, options.pid_file_mode).ok()
            }
            _ => None,
        };
        let inherited = predecessor::take_handoff()?;
        // At first start a bad pid file path is reported before anything starts. During an
        // upgrade the write at `ready()` reports it just as clearly (and the parent keeps
        // serving), so the new process skips the probe: it is on the upgrade's critical path.
        if let (Some(path), None) = (&options.pid_file, &inherited) {
            pidfile::check_writable(path, options.pid_file_mode)?;
        }
        let settings = SocketSettings {
            backlog: options.backlog,
            unix_mode: options.unix_socket_mode,
        };
        let generation = match &inherited {
            None => 1,
            Some(_) => predecessor::take_generation().unwrap_or(0),
        };
        let (fds, parent) = match inherited {
            Some(inh) => (Fds::new(inh.fds, true, settings), Some(inh.parent)),
            None => (Fds::new(Vec::new(), false, settings), None),
        };
        if let Some(p) = &parent {
            tracing::debug!(
                parent = p.pid,
                sockets = fds.keys().len(),
                "started by an upgrade"
            );
        }
        // The lineage is believed only beside a handoff that checked out: on a first start
        // the variable is whatever the environment says (leaked from elsewhere, or forged).
        let listed = predecessor::take_ancestors();
        let ancestors = if parent.is_some() {
            pin_ancestors(&listed)
        } else {
            if !listed.is_empty() {
                tracing::warn!(
                    variable = crate::handoff::ANCESTORS_VAR,
                    "ignored: this process was not started by an upgrade"
                );
            }
            Vec::new()
        };
        let (exit, _) = watch::channel(false);
        let (successor_exit, _) = watch::channel(None);
        Ok(Upgrader {
            shared: Arc::new(Shared {
                options,
                fds,
                launch,
                phase: Mutex::new(Phase::Starting),
                parent: Mutex::new(parent),
                prepared_pid_file: Mutex::new(prepared_pid_file),
                standby: Standby::default(),
                last_start: Mutex::new(None),
                generation,
                ancestors,
                successor_link: Mutex::new(None),
                successor_exit,
                exit,
            }),
        })
    }

    /// The registry to open every socket and file through.
    pub fn fds(&self) -> &Fds {
        &self.shared.fds
    }

    /// The settings this upgrader was built with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// Whether this process was started by an upgrade.
    pub fn has_parent(&self) -> bool {
        self.shared.fds.has_parent()
    }

    /// 1 for a first start, one more for each upgrade since (0 when the process that started
    /// this one did not say).
    pub fn generation(&self) -> u64 {
        self.shared.generation
    }

    /// The path an upgrade starts.
    pub fn executable(&self) -> &std::path::Path {
        &self.shared.launch.program
    }

    /// How the new process of the last successful [`upgrade`](Upgrader::upgrade) was
    /// started: through the standby, or afresh and why. `None` before one succeeded.
    pub fn last_successor_start(&self) -> Option<SuccessorStart> {
        *lock(&self.shared.last_start)
    }

    /// The standby process, if one waits (see [`Options::standby`]).
    pub fn standby_pid(&self) -> Option<u32> {
        self.shared.standby.pid()
    }

    /// Why no standby process waits, when standbys kept exiting (the next try, or that none
    /// starts before a new binary lands); `None` otherwise.
    pub fn standby_trouble(&self) -> Option<String> {
        self.shared.standby.why_none()
    }

    /// The process that started this one, while it still runs (drains): upgrades are refused
    /// until it exits.
    pub fn draining_parent(&self) -> Result<Option<u32>> {
        self.living_parent()
    }

    /// Declares this process ready to serve: closes inherited sockets nobody asked for (removing
    /// their unix socket paths), writes the pid file, and tells the parent, which then exits.
    ///
    /// Call it once every listener is open. If the pid file cannot be written the parent is not
    /// told, so it keeps serving, and the error is returned. Calling it again does nothing.
    pub fn ready(&self) -> Result<()> {
        let mut phase = lock(&self.shared.phase);
        match *phase {
            Phase::Starting => {}
            Phase::Stopped => return Err(Error::Terminating),
            _ => return Ok(()),
        }
        for key in self.shared.fds.close_unclaimed() {
            tracing::info!(%key, "closed an inherited socket that nobody asked for");
        }
        let mut replaced = None;
        if let Some(path) = &self.shared.options.pid_file {
            match lock(&self.shared.prepared_pid_file).take() {
                Some(prepared) => replaced = prepared.commit()?,
                None => {
                    pidfile::write(path, std::process::id(), self.shared.options.pid_file_mode)?
                }
            }
        }
        if let Some(parent) = lock(&self.shared.parent).as_mut()
            && let Err(e) = parent.notify_ready()
        {
            // The parent is gone already; this process serves either way.
            tracing::warn!(parent = parent.pid, error = %crate::error::Chain(&e), "could not tell the parent that we are ready");
        }
        // Off the way to ready: the parent is on its way out already.
        pidfile::remove_replaced(replaced);
        *phase = Phase::Ready;
        Ok(())
    }

    /// Starts the new process and resolves with its pid once it is ready.
    ///
    /// Refused (with nothing started) before [`ready`](Upgrader::ready), while another upgrade
    /// runs, after a successful one, after [`stop`](Upgrader::stop), and while the process that
    /// started this one is still alive. Fails when the new process exits or is not ready within
    /// the upgrade timeout (it is then killed and reaped). After a failure this process keeps
    /// serving, and a later call may succeed. Needs a tokio runtime with I/O and time enabled.
    pub async fn upgrade(&self) -> Result<u32> {
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
        let standby = self.shared.standby.take_current(
            &self.shared.launch,
            &self.shared.fds,
            self.pid_file(),
        );
        let (mut child, mut start) = match standby {
            Ok(standby) => {
                let pid = standby.pid();
                tracing::debug!(pid, "handing over to the standby process");
                match standby.hand_over() {
                    Ok(child) => (child, SuccessorStart::Standby),
                    Err(e) => {
                        tracing::warn!(pid, error = %crate::error::Chain(&e), "the standby process is gone; starting afresh");
                        self.reclaim_pid_file(pid);
                        let fresh = self.start_fresh(self.snapshot()?)?;
                        (fresh, SuccessorStart::Fresh(FreshStart::StandbyExited))
                    }
                }
            }
            Err(why) => {
                if self.shared.options.standby {
                    tracing::info!(%why, "starting the new process afresh");
                }
                let fresh = self.start_fresh(self.snapshot()?)?;
                (fresh, SuccessorStart::Fresh(why))
            }
        };
        loop {
            let pid = child.pid();
            tracing::debug!(pid, program = %self.shared.launch.program.display(), "started the new process");
            let failed = tokio::select! {
                ready = child.wait_ready() => match ready {
                    Ok(()) => None,
                    Err(status) => Some(Error::ChildExited { pid, status, last_stderr: child.last_stderr().await }),
                },
                () = tokio::time::sleep_until(deadline) => {
                    child.kill().await;
                    Some(Error::Timeout { pid, timeout, last_stderr: child.last_stderr().await })
                }
                () = cancel.notified() => {
                    child.kill().await;
                    Some(Error::Terminating)
                }
            };
            let Some(error) = failed else { break };
            // The child may have died between writing the pid file and telling us it was ready:
            // the pid file must name the process that serves, this one.
            self.reclaim_pid_file(pid);
            match error {
                // Killed from outside a moment before the upgrade (so it still looked alive),
                // say. A fresh start is what the upgrade would have done without a standby.
                Error::ChildExited { status, .. } if start == SuccessorStart::Standby => {
                    tracing::warn!(pid, %status, "the standby process ended before it was ready; starting afresh");
                    child = self.start_fresh(self.snapshot()?)?;
                    start = SuccessorStart::Fresh(FreshStart::StandbyExited);
                }
                error => return Err(error),
            }
        }
        let pid = child.pid();
        let shared = Arc::downgrade(&self.shared);
        *lock(&self.shared.successor_link) = child.into_successor(move |status| {
            if let Some(shared) = shared.upgrade() {
                shared.successor_exit.send_replace(Some(status));
            }
        });
        {
            let mut phase = lock(&self.shared.phase);
            reset.armed = false;
            match *phase {
                // stop() raced with success: the new process serves; this one exits either way.
                Phase::Stopped => {}
                _ => *phase = Phase::Upgraded,
            }
        }
        *lock(&self.shared.last_start) = Some(start);
        self.shared.exit.send_replace(true);
        tracing::debug!(pid, elapsed = ?started.elapsed(), "the new process is ready");
        Ok(pid)
    }

    /// Starts a new process with `fds` and hands them over at once.
    fn start_fresh(&self, fds: Vec<Registered>) -> Result<Child> {
        let ancestors = self.lineage_for_child();
        successor::spawn(
            &self.shared.launch,
            fds,
            self.shared.generation + 1,
            &ancestors,
        )?
        .hand_over()
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

    /// At a stop: removes the pid file, and the control socket's path, while the pid file
    /// still names this process (a pid file left behind names a dead pid that may be reused).
    /// When it names another process, someone else serves and both are theirs.
    fn remove_own_files(&self) {
        let ours = match self.pid_file() {
            Some(path) => {
                let ours = pidfile::read(path) == Some(std::process::id());
                if ours && let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the pid file");
                }
                ours
            }
            None => true,
        };
        if let (true, Some(control)) = (ours, &self.shared.options.control_socket) {
            use std::os::unix::fs::FileTypeExt;
            let is_socket =
                std::fs::symlink_metadata(control).is_ok_and(|m| m.file_type().is_socket());
            if is_socket {
                let _ = std::fs::remove_file(control);
            }
        }
    }

    /// Whether an older generation still runs (drains).
    pub(crate) fn elders_running(&self) -> bool {
        !self.draining_ancestors().is_empty()
    }

    /// Older generations still running, oldest first.
    fn draining_ancestors(&self) -> Vec<&ProcessRef> {
        self.shared
            .ancestors
            .iter()
            .filter(|process| process.runs())
            .collect()
    }

    /// What a new process is told of its elders: those still running, and this process.
    fn lineage_for_child(&self) -> Vec<crate::handoff::ProcessName> {
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
    async fn make_room(&self, deadline: tokio::time::Instant) -> Result<()> {
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

    fn pid_file(&self) -> Option<&std::path::Path> {
        self.shared.options.pid_file.as_deref()
    }

    /// Duplicates of every socket and file of the registry, for a new process.
    fn snapshot(&self) -> Result<Vec<Registered>> {
        self.shared
            .fds
            .snapshot()
            .map_err(Error::io("duplicating the sockets to hand over"))
    }

    /// Starts a standby process if [`Options::standby`] is set and there is none that is still
    /// current (see there); returns its pid. Does nothing (and returns `None`) without the
    /// option, before [`ready`](Upgrader::ready), while the process that started this one still
    /// runs unless [`Options::max_draining`] allows upgrades then (without it, upgrades are
    /// refused until that process exits, and a standby should not compete with its drain for
    /// the CPU), during an upgrade and once this process is exiting.
    ///
    /// [`Bootstrap`](crate::Bootstrap) calls this when its parent has exited, after a failed
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
        if self.shared.options.max_draining.is_none() && self.living_parent()?.is_some() {
            return Ok(None);
        }
        let start = || {
            successor::spawn(
                &self.shared.launch,
                self.snapshot()?,
                self.shared.generation + 1,
                &self.lineage_for_child(),
            )
        };
        self.shared.standby.refresh(
            &self.shared.launch,
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
            Phase::Starting => return Err(Error::NotReady),
            Phase::Upgrading(_) => return Err(Error::InProgress),
            Phase::Upgraded => return Err(Error::AlreadyUpgraded),
            Phase::Stopped => return Err(Error::Terminating),
            Phase::Ready => {}
        }
        if let Some(reason) = &self.shared.options.upgrades_would_end_service {
            return Err(Error::WouldEndService {
                reason: reason.clone(),
            });
        }
        if let Some(parent_pid) = self.living_parent()?
            && self.shared.options.max_draining.is_none()
        {
            return Err(Error::ParentAlive { parent_pid });
        }
        let cancel = Arc::new(Notify::new());
        *phase = Phase::Upgrading(cancel.clone());
        Ok(cancel)
    }

    /// Resolves when this process should exit: a new process took over, or
    /// [`stop`](Upgrader::stop) was called.
    pub fn exit(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.exit.subscribe();
        async move {
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// Whether [`exit`](Upgrader::exit) has resolved.
    pub fn is_exiting(&self) -> bool {
        *self.shared.exit.borrow()
    }

    /// Cancels an upgrade in flight (killing the new process), refuses later ones, and resolves
    /// [`exit`](Upgrader::exit).
    pub fn stop(&self) {
        let mut phase = lock(&self.shared.phase);
        if let Phase::Upgrading(cancel) = &*phase {
            cancel.notify_one();
        }
        let serving = matches!(*phase, Phase::Ready | Phase::Upgrading(_));
        *phase = Phase::Stopped;
        drop(phase);
        if serving {
            self.remove_own_files();
        }
        self.shared.standby.stop(self.pid_file());
        self.shared.exit.send_replace(true);
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

/// Pins each listed generation that still runs as the same process (same start time); the
/// others ended, and their pids may name someone else by now.
fn pin_ancestors(listed: &[crate::handoff::ProcessName]) -> Vec<ProcessRef> {
    listed
        .iter()
        .filter_map(|&(pid, start)| ProcessRef::open(pid, Some(start)).ok().flatten())
        .collect()
}
