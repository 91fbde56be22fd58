//! The predecessor's handle on its successor: starting it with every descriptor, handing over
//! the manifest, and waiting until it is ready or has failed.
//!
//! The upgrade's decisions see a successor only through [`Spawner`] and [`Successor`], so that
//! they can be tested with a fake process (`upgrader/tests.rs`); [`Process`] is the real one.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

use super::ready_pipe::{async_ready, read_ready, said_commit, said_ready};
use crate::error::{Error, ExitStatus, Repr};
use crate::handoff::{Handing, Layout, ProcessName, ReadyPipe, Token};
use crate::key::Key;
use crate::launch::{self, ExitWatch, Launch, StderrTail};
use crate::registry::Registered;
use crate::sync::BoxFuture;
use crate::sys;
use crate::sys::fd::FileId;

/// What starts successors: [`Launch`] starts the binary at the launch path.
pub(crate) trait Spawner: Send + Sync + std::fmt::Debug {
    /// Starts a successor holding every descriptor of `fds`, without telling it yet what they
    /// are: [`Successor::hand_over`] does.
    fn spawn(
        &self,
        fds: Vec<Registered>,
        generation: u64,
        ancestors: &[ProcessName],
    ) -> Result<Box<dyn Successor>, Error>;

    /// The file the launch path names now; `None` when that cannot be told.
    fn binary_now(&self) -> Option<FileId>;

    /// The path a successor is started from.
    fn program(&self) -> &Path;

    /// The same, starting `program` instead (a rollback to the pinned previous build).
    fn for_program(&self, program: PathBuf) -> Box<dyn Spawner>;
}

/// What a serving successor's end is reported to.
pub(crate) type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

/// What a serving successor's commit (see `handoff::COMMIT_BYTE`) is reported to.
pub(crate) type OnCommit = Box<dyn FnOnce() + Send>;

/// A started successor. Until [`hand_over`](Successor::hand_over) it holds the descriptors and
/// waits for the manifest (a standby waits there until the next upgrade); then it starts, until
/// it says it is ready or ends.
///
/// Dropping one that does not [`serve`](Successor::serve) kills it and reaps it in the
/// background: a successor never lives on unsupervised.
pub(crate) trait Successor: Send + std::fmt::Debug {
    fn pid(&self) -> u32;

    /// Sends the manifest: from here on the successor adopts the descriptors and starts. An
    /// error means it was not told (drop it to kill it).
    fn hand_over(&mut self) -> Result<(), Error>;

    /// Resolves when it says it is ready, or with its exit status when it ended first (it is
    /// reaped then).
    fn wait_ready(&mut self) -> BoxFuture<'_, Result<(), ExitStatus>>;

    /// Kills it and waits until it is reaped.
    fn kill(&mut self) -> BoxFuture<'_, ()>;

    /// The last lines it wrote to its standard error before it was ready.
    fn last_stderr(&self) -> BoxFuture<'_, Vec<String>>;

    /// How it ended, once it has (reaping it then); `None` while it runs.
    fn ended(&mut self) -> Option<ExitStatus>;

    /// Whether it is stopped (SIGSTOP): handed over, it would not get ready until continued.
    fn is_stopped(&self) -> bool;

    /// The file it runs, `None` when that cannot be told.
    fn binary(&self) -> Option<FileId>;

    /// The handoff version spoken with it (see `handoff::negotiate`).
    fn version(&self) -> u32;

    /// The sockets and files it was given, with their keys.
    fn handed(&self) -> &[(Key, FileId)];

    /// Kills it and reaps it before returning, for a process about to exit (a reaping task
    /// would not get to run).
    fn discard(self: Box<Self>);

    /// It is ready and serves. Returns the write end of the pipe that tells it when the
    /// predecessor exits (keep it open until then); `on_exit` hears how it ended, should it
    /// end while the predecessor still runs, and `on_commit` that it committed the upgrade
    /// (it is upgrading in turn).
    fn serve(self: Box<Self>, on_exit: OnExit, on_commit: OnCommit) -> Option<OwnedFd>;
}

impl Spawner for Launch {
    fn spawn(
        &self,
        fds: Vec<Registered>,
        generation: u64,
        ancestors: &[ProcessName],
    ) -> Result<Box<dyn Successor>, Error> {
        Ok(Box::new(Process::spawn(self, fds, generation, ancestors)?))
    }

    fn binary_now(&self) -> Option<FileId> {
        Launch::binary_now(self)
    }

    fn program(&self) -> &Path {
        &self.program
    }

    fn for_program(&self, program: PathBuf) -> Box<dyn Spawner> {
        Box::new(Launch::for_program(self, program))
    }
}

/// A successor process.
#[derive(Debug)]
pub(crate) struct Process {
    pid: i32,
    stderr_tail: StderrTail,
    ready: AsyncFd<OwnedFd>,
    exit: ExitWatch,
    /// Write end of the parent pipe; the successor sees EOF once the predecessor exits.
    alive: Option<OwnedFd>,
    /// Write end of the control pipe, until the manifest went there.
    control: Option<OwnedFd>,
    manifest: String,
    handed: Vec<(Key, FileId)>,
    binary: Option<FileId>,
    /// How it ended, once reaped here.
    ended: Option<ExitStatus>,
    /// Set once the process was reaped, or once something else is in charge of it.
    done: bool,
    /// The handoff version spoken with it.
    version: u32,
}

impl Process {
    fn spawn(
        launch: &Launch,
        fds: Vec<Registered>,
        generation: u64,
        ancestors: &[ProcessName],
    ) -> Result<Process, Error> {
        // What the new binary speaks, from its note, before anything is started.
        let declared = launch::elf::handoff_versions(&launch.program);
        let version = crate::handoff::negotiate(declared).ok_or_else(|| {
            let (lowest, highest) = declared.unwrap_or((1, 1));
            Error::from(Repr::HandoffVersion {
                program: launch.program.clone(),
                lowest,
                highest,
                ours: crate::handoff::SPOKEN,
            })
        })?;
        tracing::debug!(?declared, version, program = %launch.program.display(), "handoff version agreed");
        let token = Token::generate().map_err(Error::io("generating the handoff token"))?;
        let (control_r, control_w) =
            sys::fd::pipe().map_err(Error::io("creating the handoff pipe"))?;
        let (ready_r, ready_w) = sys::fd::pipe().map_err(Error::io("creating the ready pipe"))?;
        let (alive_r, alive_w) = sys::fd::pipe().map_err(Error::io("creating the parent pipe"))?;
        let pipe =
            sys::fd::identity(&control_r).map_err(Error::io("inspecting the handoff pipe"))?;
        let handed: Vec<(Key, FileId)> = fds.iter().map(|r| (r.key.clone(), r.file)).collect();
        let layout = Layout::new(&Handing {
            handed: &handed,
            token,
            pipe_inode: pipe.file.ino,
            parent_pid: std::process::id(),
            generation,
            version,
            ancestors,
        });
        // Room for the whole manifest, so writing it never waits for the successor to read.
        sys::fd::reserve_pipe(control_w.as_fd(), layout.manifest.len())
            .and_then(|()| sys::fd::set_nonblocking(control_w.as_fd()))
            .map_err(Error::io("sizing the handoff pipe"))?;

        // The successor's standard error goes through us until it is ready (see
        // `handoff::STDERR_VAR`); the real one follows the entries.
        let (stderr_r, stderr_w) =
            sys::fd::pipe().map_err(Error::io("creating the stderr pipe"))?;
        let real_stderr = sys::fd::dup_stderr().map_err(Error::io("duplicating stderr"))?;

        // In the order of the layout: control, ready, parent pipe, the entries, real stderr.
        let mut passed: Vec<BorrowedFd<'_>> =
            vec![control_r.as_fd(), ready_w.as_fd(), alive_r.as_fd()];
        passed.extend(fds.iter().map(|r| r.fd.as_fd()));
        passed.push(real_stderr.as_fd());
        let mut vars: Vec<(&OsStr, &OsStr)> = layout
            .vars
            .iter()
            .map(|(name, value)| (OsStr::new(name), OsStr::new(value)))
            .collect();
        if version >= 2 {
            vars.push((
                OsStr::new(crate::handoff::LAUNCH_PATH_VAR),
                launch.deployed.as_os_str(),
            ));
        }
        let started = launch
            .start(&vars, &passed, Some(stderr_w.as_fd()))
            .map_err(|source| {
                Error::from(Repr::Spawn {
                    program: launch.program.clone(),
                    source,
                })
            })?;
        drop(passed);
        drop((control_r, ready_w, alive_r, fds, stderr_w, real_stderr));

        let pid = started.pid;
        let stderr_tail = StderrTail::relay(stderr_r).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot relay the successor's stderr");
            StderrTail::default()
        });
        let watches = async_ready(ready_r).and_then(|ready| Ok((ready, ExitWatch::new(pid)?)));
        match watches {
            Ok((ready, exit)) => Ok(Process {
                pid,
                stderr_tail,
                ready,
                exit,
                alive: Some(alive_w),
                control: Some(control_w),
                manifest: layout.manifest,
                handed,
                binary: started.binary,
                ended: None,
                done: false,
                version,
            }),
            Err(e) => {
                launch::kill_and_reap_now(pid);
                Err(Error::io("watching the successor")(e))
            }
        }
    }

    async fn wait_ready_now(&mut self) -> Result<(), ExitStatus> {
        // Both the ready pipe and the process itself are watched: a process that exits at
        // once may leave a helper behind that holds the pipe open (a wrapper script's
        // background job), and its end must not wait for that helper.
        let said_ready = tokio::select! {
            said = said_ready(&self.ready) => said,
            () = self.exit.exited() => {
                // It said ready and then died: that is the successor's death, handled as such
                // by whoever follows it once it serves.
                read_ready(self.ready.get_ref().as_fd()) == ReadyPipe::Ready
            }
        };
        if said_ready {
            return Ok(());
        }
        let status = self.exit.reap().await;
        self.done = true;
        Err(status)
    }
}

impl Successor for Process {
    fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    fn hand_over(&mut self) -> Result<(), Error> {
        let Some(control) = self.control.take() else {
            return Ok(());
        };
        match sys::fd::write_all(control.as_fd(), self.manifest.as_bytes()) {
            Ok(()) => Ok(()),
            // Nobody reads the pipe: the process exited already (a binary that is not a flip
            // server, say). Waiting for it reports how it ended, which says more than EPIPE.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(Error::io("writing the handoff manifest")(e)),
        }
    }

    fn wait_ready(&mut self) -> BoxFuture<'_, Result<(), ExitStatus>> {
        Box::pin(self.wait_ready_now())
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if !self.done {
                self.exit.kill().await;
                self.done = true;
            }
        })
    }

    fn last_stderr(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(self.stderr_tail.last_lines())
    }

    fn ended(&mut self) -> Option<ExitStatus> {
        if !self.done
            && let Ok(Some(ended)) = sys::process::try_reap(self.pid)
        {
            self.done = true;
            self.ended = Some(ended.into());
        }
        match (self.done, self.ended) {
            (true, Some(status)) => Some(status),
            // Reaped elsewhere: ended, status unknown.
            (true, None) => Some(ExitStatus::Unknown),
            (false, _) => None,
        }
    }

    fn is_stopped(&self) -> bool {
        sys::pidref::Stat::read(self.pid).is_some_and(|s| s.stopped)
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn binary(&self) -> Option<FileId> {
        self.binary
    }

    fn handed(&self) -> &[(Key, FileId)] {
        &self.handed
    }

    fn discard(mut self: Box<Self>) {
        if !self.done {
            launch::kill_and_reap_now(self.pid);
            self.done = true;
        }
    }

    fn serve(mut self: Box<Self>, on_exit: OnExit, on_commit: OnCommit) -> Option<OwnedFd> {
        let alive = self.alive.take();
        let pid = self.pid;
        self.done = true; // the task below takes over
        let Ok(watch) = ExitWatch::new(pid) else {
            return alive;
        };
        tokio::spawn(async move {
            // Holds the ready pipe, where a commit comes.
            let process = self;
            let mut on_commit = Some(on_commit);
            let reap = watch.reap();
            tokio::pin!(reap);
            let status = loop {
                tokio::select! {
                    status = &mut reap => break status,
                    committed = said_commit(&process.ready), if on_commit.is_some() => {
                        if let (true, Some(report)) = (committed, on_commit.take()) {
                            report();
                        }
                    }
                }
            };
            // A clean end is a stop, or (with several generations draining) an upgrade
            // in turn: an ordinary event. Anything else is a crash.
            if matches!(status, ExitStatus::Code(0 | 3)) {
                tracing::info!(pid, %status, "the successor exited while this process was draining");
            } else {
                tracing::error!(pid, %status, "the successor exited while this process was draining");
            }
            on_exit(status);
        });
        alive
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.done {
            // The upgrade was given up (or its future dropped) while the successor started.
            launch::kill_and_reap_later(self.pid);
        }
    }
}
