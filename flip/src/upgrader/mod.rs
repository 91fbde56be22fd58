//! One upgrade, both sides, and the phases of the process that runs it.
//!
//! The running process (the predecessor) goes `Starting → Ready → Upgrading → Upgraded`
//! (`upgrade.rs`, with the standby in `standby.rs` and its handle on the successor in
//! `successor.rs`); the successor (the successor) reads its handoff in `predecessor.rs`,
//! checking every descriptor in `adopt.rs`, and follows the generations around it in
//! `lineage.rs`. `successor.rs` and `predecessor.rs` never import each other: the wire
//! between them is `handoff`.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::error::{Error, ExitStatus, Repr, Result};
use crate::launch::Launch;
use crate::pidfile;
use crate::registry::{Fds, SocketSettings};
use crate::sync::lock;
use crate::sys::pidref::ProcessRef;

mod adopt;
mod builds;
mod lineage;
mod options;
mod predecessor;
mod ready_pipe;
mod standby;
mod successor;
#[cfg(test)]
mod tests;
mod upgrade;

pub use options::{DEFAULT_BACKLOG, DEFAULT_UNIX_SOCKET_MODE, DEFAULT_UPGRADE_TIMEOUT, Options};
pub(crate) use predecessor::{has_marker, stash_marker};
pub use standby::{FreshStart, SuccessorStart};

use predecessor::Inherited;
use predecessor::PredecessorLink;
use standby::Standby;
use successor::Spawner;

#[derive(Debug)]
enum Phase {
    /// Created; `ready()` not called yet.
    Starting,
    /// Serving; upgrades may start.
    Ready,
    /// A successor is starting. `stop()` wakes the notify to cancel it.
    Upgrading(Arc<Notify>),
    /// The successor took over; this process drains and exits.
    Upgraded,
    /// `stop()` was called.
    Stopped,
}

#[derive(Debug)]
struct Shared {
    options: Options,
    fds: Fds,
    /// Starts successors.
    spawner: Box<dyn Spawner>,
    phase: Mutex<Phase>,
    parent: Mutex<Option<PredecessorLink>>,
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
    /// Whether the successor committed the upgrade (it upgrades in turn).
    successor_committed: watch::Sender<bool>,
    /// The handoff version spoken with the successor that serves.
    successor_version: std::sync::atomic::AtomicU32,
    exit: watch::Sender<bool>,
    /// The build the predecessor ran, pinned (see `builds.rs`); set once, when built.
    previous_build: std::sync::OnceLock<Option<std::fs::File>>,
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
/// 2. the successor builds its `Upgrader`, gets the very same sockets from its registry, and
///    calls [`ready`](Upgrader::ready): unclaimed sockets are closed, the pid file names it;
/// 3. `upgrade` resolves with the new pid and [`exit`](Upgrader::exit) resolves: the predecessor
///    stops accepting, drains, and exits;
/// 4. the successor notices its predecessor is gone and accepts upgrades itself.
///
/// If the successor exits or is not ready within the upgrade timeout, `upgrade` fails and the
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

/// What a process knows of its place among the generations when its upgrader is built.
struct Start {
    generation: u64,
    ancestors: Vec<ProcessRef>,
    prepared_pid_file: Option<pidfile::Prepared>,
}

static CREATED: AtomicBool = AtomicBool::new(false);

impl Upgrader {
    /// Reads the handoff (if this process was started by an upgrade) and builds the upgrader.
    ///
    /// Fails when the handoff is unusable, the pid file's directory does not exist, or an
    /// upgrader already exists in this process. Needs no tokio runtime. In a standby process
    /// (see [`Options::standby`]) this waits until the predecessor hands over, or fails with
    /// [`HandoffError::Withdrawn`](crate::HandoffError::Withdrawn) when it lets the standby go.
    pub fn new(options: Options) -> Result<Upgrader> {
        if CREATED.swap(true, Ordering::SeqCst) {
            return Err(Error::from(Repr::AlreadyCreated));
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
        let mut launch = Launch::capture(options.executable.clone(), options.successor_env.clone())
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
        // upgrade the write at `ready()` reports it just as clearly (and the predecessor keeps
        // serving), so the successor skips the probe: it is on the upgrade's critical path.
        if let (Some(path), None) = (&options.pid_file, &inherited) {
            pidfile::check_writable(path, options.pid_file_mode)?;
        }
        let generation = match &inherited {
            None => 1,
            Some(_) => predecessor::take_generation().unwrap_or(0),
        };
        // Believed only beside a verified handoff, as the lineage below.
        let launch_path = predecessor::take_launch_path();
        if let (Some(path), Some(_), None) = (launch_path, &inherited, &options.executable) {
            launch.deployed_at(path);
        }
        // The lineage is believed only beside a handoff that checked out: on a first start
        // the variable is whatever the environment says (leaked from elsewhere, or forged).
        let listed = predecessor::take_ancestors();
        let ancestors = if inherited.is_some() {
            lineage::pin_ancestors(&listed)
        } else {
            if !listed.is_empty() {
                tracing::warn!(
                    variable = crate::handoff::ANCESTORS_VAR,
                    "ignored: this process was not started by an upgrade"
                );
            }
            Vec::new()
        };
        let upgrader = Self::assemble(
            options,
            Box::new(launch),
            inherited,
            Start {
                generation,
                ancestors,
                prepared_pid_file,
            },
        );
        let previous = builds::pin(&upgrader.shared.fds, generation);
        let _ = upgrader.shared.previous_build.set(previous);
        Ok(upgrader)
    }

    /// Builds the upgrader from what [`build`](Upgrader::build) read, or what a test gives.
    fn assemble(
        options: Options,
        spawner: Box<dyn Spawner>,
        inherited: Option<Inherited>,
        start: Start,
    ) -> Upgrader {
        let settings = SocketSettings {
            backlog: options.backlog,
            unix_mode: options.unix_socket_mode,
        };
        let (fds, parent) = match inherited {
            Some(inh) => (Fds::new(inh.fds, true, settings), Some(inh.parent)),
            None => (Fds::new(Vec::new(), false, settings), None),
        };
        if let Some(p) = &parent {
            tracing::debug!(
                predecessor = p.pid,
                sockets = fds.keys().len(),
                "started by an upgrade"
            );
        }
        let (exit, _) = watch::channel(false);
        let (successor_exit, _) = watch::channel(None);
        let (successor_committed, _) = watch::channel(false);
        Upgrader {
            shared: Arc::new(Shared {
                options,
                fds,
                spawner,
                phase: Mutex::new(Phase::Starting),
                parent: Mutex::new(parent),
                prepared_pid_file: Mutex::new(start.prepared_pid_file),
                standby: Standby::default(),
                last_start: Mutex::new(None),
                generation: start.generation,
                ancestors: start.ancestors,
                successor_link: Mutex::new(None),
                successor_exit,
                successor_committed,
                successor_version: std::sync::atomic::AtomicU32::new(
                    crate::handoff::NEWEST_VERSION,
                ),
                exit,
                previous_build: std::sync::OnceLock::new(),
            }),
        }
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
        self.shared.spawner.program()
    }

    /// How the successor of the last successful [`upgrade`](Upgrader::upgrade) was
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
        self.living_predecessor()
    }

    /// Declares this process ready to serve: closes inherited sockets nobody asked for (removing
    /// their unix socket paths), writes the pid file, and tells the predecessor, which then exits.
    ///
    /// Call it once every listener is open. If the pid file cannot be written the predecessor is not
    /// told, so it keeps serving, and the error is returned. Calling it again does nothing.
    pub fn ready(&self) -> Result<()> {
        let mut phase = lock(&self.shared.phase);
        match *phase {
            Phase::Starting => {}
            Phase::Stopped => return Err(Error::from(Repr::Terminating)),
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
            // The predecessor is gone already; this process serves either way.
            tracing::warn!(parent = parent.pid, error = %crate::error::Chain(&e), "could not tell the predecessor that we are ready");
        }
        // Off the way to ready: the predecessor is on its way out already.
        pidfile::remove_replaced(replaced);
        *phase = Phase::Ready;
        Ok(())
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

    fn pid_file(&self) -> Option<&std::path::Path> {
        self.shared.options.pid_file.as_deref()
    }

    /// Resolves when this process should exit: a successor took over, or
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

    /// Cancels an upgrade in flight (killing the successor), refuses later ones, and resolves
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
