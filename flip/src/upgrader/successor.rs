//! The old process's handle on the new one: starting it with the handoff, sending the manifest,
//! and waiting until it is ready or has failed.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use crate::error::{Error, ExitStatus};
use crate::handoff::{
    self, ALIVE_FD, ANCESTORS_VAR, CONTROL_FD, Entry, FIRST_ENTRY_FD, GENERATION_VAR, MARKER_VAR,
    Manifest, Marker, READY_FD, ReadyPipe, STDERR_VAR, Token,
};
use crate::key::Key;
use crate::launch::{self, ExitWatch, Launch};
use crate::registry::Registered;
use crate::sys;
use crate::sys::fd::FileId;

/// A new process that has the sockets and was told what they are, and is not ready yet.
///
/// Dropping it kills the process and reaps it in the background: a new process never lives on
/// unsupervised.
#[derive(Debug)]
pub(crate) struct Child {
    pid: i32,
    /// The last lines the process wrote to its standard error before it was ready.
    stderr_tail: StderrTail,
    ready: AsyncFd<OwnedFd>,
    exit: ExitWatch,
    /// Write end of the parent pipe; the new process sees EOF once this process exits.
    alive: Option<OwnedFd>,
    /// Set once the process was reaped, or once something else is in charge of it.
    done: bool,
}

impl Child {
    pub(crate) fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// The last lines it wrote to its standard error, once the relay read everything (the
    /// process ended: at most a moment) or after 250 ms (something else holds the pipe).
    pub(crate) async fn last_stderr(&self) -> Vec<String> {
        let mut closed = self.stderr_tail.closed.subscribe();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(250),
            closed.wait_for(|c| *c),
        )
        .await;
        crate::sync::lock(&self.stderr_tail.lines)
            .iter()
            .cloned()
            .collect()
    }

    /// Resolves when the child says it is ready, or with its exit status when it ended first.
    ///
    /// Both the ready pipe and the process itself are watched: a process that exits at once
    /// may leave a helper behind that holds the pipe open (a wrapper script's background job),
    /// and its end must not wait for that helper.
    pub(crate) async fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let said_ready = tokio::select! {
            said = Self::read_ready(&self.ready) => said,
            () = self.exit.exited() => {
                // It said ready and then died: that is the successor's death, handled as such
                // by whoever follows it once it serves.
                matches!(handoff::read_ready(self.ready.get_ref().as_fd()), ReadyPipe::Ready)
            }
        };
        if said_ready {
            return Ok(());
        }
        let status = self.exit.reap().await;
        self.done = true;
        Err(status)
    }

    /// Whether the ready pipe said ready (`false`: EOF, the write end is closed everywhere).
    async fn read_ready(ready: &AsyncFd<OwnedFd>) -> bool {
        loop {
            let Ok(mut guard) = ready.readable().await else {
                return false;
            };
            let read = guard.try_io(|fd| match handoff::read_ready(fd.get_ref().as_fd()) {
                ReadyPipe::Pending => Err(io::ErrorKind::WouldBlock.into()),
                other => Ok(other),
            });
            match read {
                Ok(Ok(ReadyPipe::Ready)) => return true,
                Ok(_) => return false,
                Err(_would_block) => {}
            }
        }
    }

    /// Kills the child and waits until it is reaped.
    pub(crate) async fn kill(&mut self) {
        if !self.done {
            self.exit.kill().await;
            self.done = true;
        }
    }

    /// The child is ready and now serves. Returns the write end of the pipe that tells it when
    /// this process exits (keep it open until then), and reaps the child in the background
    /// should it end while this process drains, reporting how it ended to `on_exit`.
    pub(crate) fn into_successor(
        mut self,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> Option<OwnedFd> {
        let alive = self.alive.take();
        let pid = self.pid;
        self.done = true; // the task below takes over
        if let Ok(watch) = ExitWatch::new(pid) {
            tokio::spawn(async move {
                let status = watch.reap().await;
                // A clean end is a stop, or (with several generations draining) an upgrade
                // in turn: an ordinary event. Anything else is a crash.
                if matches!(status, ExitStatus::Code(0 | 3)) {
                    tracing::info!(pid, %status, "the new process exited while this one was draining");
                } else {
                    tracing::error!(pid, %status, "the new process exited while this one was draining");
                }
                on_exit(status);
            });
        }
        alive
    }

    /// Kills and reaps the child before returning.
    fn discard(mut self) {
        if !self.done {
            launch::kill_and_reap_now(self.pid);
            self.done = true;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.done {
            // The upgrade future was dropped while the child was starting.
            launch::kill_and_reap_later(self.pid);
        }
    }
}

/// A new process that was started with every descriptor but has not been told what they are:
/// it waits for the manifest. A fresh upgrade hands over at once; a standby waits until the
/// next upgrade (see [`Options::standby`](crate::Options::standby)).
///
/// Dropping it kills and reaps the process, which would otherwise read EOF and exit by itself.
#[derive(Debug)]
pub(crate) struct Pending {
    child: Child,
    /// Write end of the control pipe; the manifest goes here.
    control: OwnedFd,
    manifest: String,
    /// What was handed over, to tell whether the registry still holds exactly this.
    handed: Vec<(Key, FileId)>,
    /// The file the process runs, `None` when that cannot be told.
    binary: Option<FileId>,
    /// How it ended, once reaped.
    ended: Option<ExitStatus>,
}

impl Pending {
    pub(crate) fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Kills the process and reaps it before returning, for a process about to exit (a reaping
    /// task would not get to run).
    pub(crate) fn discard(self) {
        self.child.discard();
    }

    /// Sends the manifest: from here on the new process adopts the descriptors and starts.
    pub(crate) fn hand_over(self) -> Result<Child, Error> {
        match handoff::write_manifest(self.control.as_fd(), self.manifest.as_bytes()) {
            Ok(()) => Ok(self.child),
            // Nobody reads the pipe: the process exited already (a binary that is not a flip
            // server, say). Waiting for it reports how it ended, which says more than EPIPE.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(self.child),
            // `child` is dropped here, which kills it.
            Err(e) => Err(Error::io("writing the handoff manifest")(e)),
        }
    }

    /// Whether the process has ended (it is reaped then).
    pub(crate) fn has_ended(&mut self) -> bool {
        self.ended().is_some()
    }

    /// How it ended, once it has (reaping it then); `None` while it runs. A process reaped
    /// elsewhere shows as ended, status unknown.
    pub(crate) fn ended(&mut self) -> Option<ExitStatus> {
        if !self.child.done
            && let Ok(Some(ended)) = sys::process::try_reap(self.child.pid)
        {
            self.child.done = true;
            self.ended = Some(ended.into());
        }
        match (self.child.done, self.ended) {
            (true, Some(status)) => Some(status),
            (true, None) => Some(ExitStatus::Unknown),
            (false, _) => None,
        }
    }

    /// Whether it is stopped (SIGSTOP): handed over, it would not get ready until continued.
    pub(crate) fn is_stopped(&self) -> bool {
        sys::pidref::Stat::read(self.child.pid).is_some_and(|s| s.stopped)
    }

    /// The file the process runs.
    pub(crate) fn binary(&self) -> Option<FileId> {
        self.binary
    }

    /// The sockets and files it was given, with their keys.
    pub(crate) fn handed(&self) -> &[(Key, FileId)] {
        &self.handed
    }
}

/// Starts the new process with every descriptor of `fds`, without telling it yet what they
/// are: [`Pending::hand_over`] does.
pub(crate) fn spawn(
    launch: &Launch,
    fds: Vec<Registered>,
    generation: u64,
    ancestors: &[handoff::ProcessName],
) -> Result<Pending, Error> {
    let ancestors = handoff::encode_ancestors(ancestors);
    let token = Token::generate().map_err(Error::io("generating the handoff token"))?;
    let (control_r, control_w) = sys::fd::pipe().map_err(Error::io("creating the handoff pipe"))?;
    let (ready_r, ready_w) = sys::fd::pipe().map_err(Error::io("creating the ready pipe"))?;
    let (alive_r, alive_w) = sys::fd::pipe().map_err(Error::io("creating the parent pipe"))?;

    let entries: Vec<Entry> = (0..)
        .zip(&fds)
        .map(|(i, r)| Entry {
            key: r.key.clone(),
            fd: FIRST_ENTRY_FD + i,
            file: r.file,
        })
        .collect();
    let handed = entries.iter().map(|e| (e.key.clone(), e.file)).collect();
    let manifest = Manifest {
        token,
        parent_pid: std::process::id(),
        ready_fd: READY_FD,
        alive_fd: ALIVE_FD,
        entries,
    }
    .encode();
    handoff::prepare_control(control_w.as_fd(), manifest.len())
        .map_err(Error::io("sizing the handoff pipe"))?;
    let pipe = sys::fd::identity(&control_r).map_err(Error::io("inspecting the handoff pipe"))?;
    let marker = Marker {
        control_fd: CONTROL_FD,
        pipe_inode: pipe.file.ino,
        token,
    };

    // The new process's standard error goes through us until it is ready (see STDERR_VAR);
    // the real one follows the entries.
    let (stderr_r, stderr_w) = sys::fd::pipe().map_err(Error::io("creating the stderr pipe"))?;
    let real_stderr = sys::fd::dup_stderr().map_err(Error::io("duplicating stderr"))?;
    let real_stderr_fd = FIRST_ENTRY_FD
        + i32::try_from(fds.len())
            .map_err(|_| Error::io("counting descriptors")(io::Error::other("too many")))?;

    // In the order of the layout: control, ready, parent pipe, then the entries.
    let mut passed: Vec<BorrowedFd<'_>> = vec![control_r.as_fd(), ready_w.as_fd(), alive_r.as_fd()];
    passed.extend(fds.iter().map(|r| r.fd.as_fd()));
    passed.push(real_stderr.as_fd());
    let started = launch
        .start(
            &[
                (OsStr::new(MARKER_VAR), OsStr::new(&marker.encode())),
                (
                    OsStr::new(GENERATION_VAR),
                    OsStr::new(&generation.to_string()),
                ),
                (
                    OsStr::new(STDERR_VAR),
                    OsStr::new(&real_stderr_fd.to_string()),
                ),
                (OsStr::new(ANCESTORS_VAR), OsStr::new(&ancestors)),
            ],
            &passed,
            Some(stderr_w.as_fd()),
        )
        .map_err(|source| Error::Spawn {
            program: launch.program.clone(),
            source,
        })?;
    drop(passed);
    drop((control_r, ready_w, alive_r, fds, stderr_w, real_stderr));

    let pid = started.pid;
    let stderr_tail = StderrTail::default();
    if let Err(e) = relay_stderr(stderr_r, stderr_tail.clone()) {
        tracing::warn!(error = %e, "cannot relay the new process's stderr");
    }
    let watches = prepare_ready(ready_r).and_then(|ready| Ok((ready, ExitWatch::new(pid)?)));
    match watches {
        Ok((ready, exit)) => Ok(Pending {
            child: Child {
                pid,
                stderr_tail,
                ready,
                exit,
                alive: Some(alive_w),
                done: false,
            },
            control: control_w,
            manifest,
            handed,
            binary: started.binary,
            ended: None,
        }),
        Err(e) => {
            launch::kill_and_reap_now(pid);
            Err(Error::io("watching the new process")(e))
        }
    }
}

/// The last lines of a new process's standard error, and whether the pipe reached EOF.
#[derive(Debug, Default)]
struct TailState {
    lines: std::sync::Mutex<std::collections::VecDeque<String>>,
    closed: tokio::sync::watch::Sender<bool>,
}

type StderrTail = std::sync::Arc<TailState>;

/// How many lines of a new process's standard error a failure reports.
const TAIL_LINES: usize = 20;

/// Passes what the new process writes to its standard error on to ours, and keeps the last
/// lines in `tail`, until the pipe reaches EOF (the process put its real stderr back at ready,
/// or exited).
fn relay_stderr(pipe: OwnedFd, tail: StderrTail) -> io::Result<()> {
    sys::fd::set_nonblocking(pipe.as_fd())?;
    let pipe = sys::fd::async_readable(pipe)?;
    tokio::spawn(async move {
        let mut partial = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let Ok(mut guard) = pipe.readable().await else {
                break;
            };
            let n = match guard.try_io(|fd| sys::fd::read(fd.get_ref().as_fd(), &mut buf)) {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_would_block) => continue,
            };
            let _ = std::io::Write::write_all(&mut std::io::stderr(), &buf[..n]);
            partial.extend_from_slice(&buf[..n]);
            while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                let mut t = crate::sync::lock(&tail.lines);
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text.chars().take(500).collect());
            }
            if partial.len() > 4096 {
                partial.clear();
            }
        }
        tail.closed.send_replace(true);
    });
    Ok(())
}

fn prepare_ready(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    sys::fd::set_nonblocking(fd.as_fd())?;
    sys::fd::async_readable(fd)
}
