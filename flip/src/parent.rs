//! The old process's side of an upgrade: starting the new binary with the handoff, and waiting
//! until it is ready or has failed.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::error::{Error, ExitStatus};
use crate::handoff::{Entry, MARKER_VAR, Manifest, Marker, Token};
use crate::key::Key;
use crate::sys;
use crate::sys::process::Ended;
use crate::sys::spawn::{FIRST_CHILD_FD, SpawnRequest};

/// How the new process is started: captured once, when the first `Upgrader` is built.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
}

impl Launch {
    /// Captures arguments and working directory now, and picks the path to execute at upgrade
    /// time.
    ///
    /// The path is the one the process was started by (argv\[0\], made absolute against the
    /// starting directory or looked up in `PATH`), not the resolved `/proc/self/exe`: a binary
    /// replaced at that path, or a `current -> release-N` symlink switched to a new release, is
    /// what the upgrade runs. When argv\[0\] does not lead to this very binary (a launcher that
    /// sets a custom argv\[0\]), the resolved path of the running binary is used instead.
    pub(crate) fn capture(program: Option<PathBuf>) -> io::Result<Launch> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let cwd = std::env::current_dir()?;
        let program = match program {
            Some(p) if p.is_absolute() => p,
            Some(p) => cwd.join(p),
            None => Self::from_argv0(args.first(), &cwd)
                .or_else(|| std::env::current_exe().ok())
                .ok_or_else(|| io::Error::other("cannot tell which executable is running"))?,
        };
        Ok(Launch { program, args, cwd })
    }

    fn from_argv0(argv0: Option<&OsString>, cwd: &Path) -> Option<PathBuf> {
        let argv0 = Path::new(argv0?);
        let candidate = if argv0.as_os_str().as_bytes().contains(&b'/') {
            cwd.join(argv0)
        } else {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| cwd.join(dir).join(argv0))
                .find(|p| p.is_file())?
        };
        let running = std::env::current_exe().ok()?.canonicalize().ok()?;
        (candidate.canonicalize().ok()? == running).then_some(candidate)
    }
}

/// Waits for a process to end without a thread: a pidfd where the kernel has them, polling
/// otherwise.
#[derive(Debug)]
struct ExitWatch {
    pid: i32,
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl ExitWatch {
    fn new(pid: i32) -> io::Result<ExitWatch> {
        let pidfd = match sys::process::pidfd_open(pid)? {
            Some(fd) => Some(sys::fd::async_readable(fd)?),
            None => None,
        };
        Ok(ExitWatch { pid, pidfd })
    }

    /// Waits until the process ended and reaps it.
    async fn reap(&self) -> ExitStatus {
        loop {
            match sys::process::try_reap(self.pid) {
                Ok(Some(Ended::Exited(code))) => return ExitStatus::Code(code),
                Ok(Some(Ended::Signaled(sig))) => return ExitStatus::Signal(sig),
                Ok(None) => {}
                // Someone else reaped it (a SIGCHLD handler of the application): it is gone.
                Err(_) => return ExitStatus::Unknown,
            }
            match &self.pidfd {
                Some(fd) => match fd.readable().await {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                },
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

/// A new process that has not declared itself ready yet.
#[derive(Debug)]
pub(crate) struct Child {
    pid: i32,
    ready: AsyncFd<OwnedFd>,
    exit: ExitWatch,
    alive: Option<OwnedFd>,
    reaped: bool,
}

impl Child {
    pub(crate) fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Resolves when the child says it is ready, or with its exit status when it ended first.
    pub(crate) async fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let mut buf = [0u8; 8];
        loop {
            let Ok(mut guard) = self.ready.readable().await else {
                break;
            };
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_fd(), &mut buf).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) if n > 0 => return Ok(()),
                // EOF: the child closed its end, which only happens when it exits.
                Ok(Ok(_)) => break,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => break,
                Err(_would_block) => {}
            }
        }
        let status = self.exit.reap().await;
        self.reaped = true;
        Err(status)
    }

    /// Kills the child and waits until it is reaped.
    pub(crate) async fn kill(&mut self) {
        if !self.reaped {
            let _ = sys::process::kill_hard(self.pid);
            self.exit.reap().await;
            self.reaped = true;
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
        self.reaped = true; // the task below takes over
        if let Ok(watch) = ExitWatch::new(pid) {
            tokio::spawn(async move {
                let status = watch.reap().await;
                tracing::error!(pid, %status, "the new process exited while this one was draining");
                on_exit(status);
            });
        }
        alive
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // The upgrade future was dropped while the child was starting: the child must not live
        // on unsupervised.
        let _ = sys::process::kill_hard(self.pid);
        let pid = self.pid;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Ok(watch) = ExitWatch::new(pid) {
                        watch.reap().await;
                    }
                });
            }
            Err(_) => {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            }
        }
    }
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// A new process that was started with every descriptor but has not been told what they are:
/// it waits for the manifest. A fresh upgrade hands over at once; a standby waits until the
/// next upgrade (see [`Options::standby`](crate::Options::standby)).
///
/// Dropping it kills and reaps the process, which would otherwise read EOF and exit by itself.
#[derive(Debug)]
pub(crate) struct Pending {
    child: Child,
    /// Write end of the handoff pipe; the manifest goes here.
    control: OwnedFd,
    manifest: String,
    /// What was handed over, to tell whether the registry still holds exactly this.
    handed: Vec<(Key, u64, u64)>,
    /// Device and inode of the file the process runs, `None` when that cannot be told.
    binary: Option<(u64, u64)>,
}

impl Pending {
    pub(crate) fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Kills the process and reaps it before returning, for a process about to exit (a reaping
    /// task would not get to run).
    pub(crate) fn discard(mut self) {
        if !self.child.reaped {
            let _ = sys::process::kill_hard(self.child.pid);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.child.pid), None);
            self.child.reaped = true;
        }
    }

    /// Sends the manifest: from here on the new process adopts the descriptors and starts.
    pub(crate) fn hand_over(self) -> Result<Child, Error> {
        let Pending {
            child,
            control,
            manifest,
            ..
        } = self;
        // On failure `child` is dropped here, which kills it.
        write_manifest(&control, manifest.as_bytes())
            .map_err(Error::io("writing the handoff manifest"))?;
        Ok(child)
    }

    /// Whether this process may still take over: it is alive, it runs the file the launch path
    /// names now, and it holds exactly the sockets and files of `fds`.
    pub(crate) fn is_current(&mut self, launch: &Launch, fds: &[(Key, OwnedFd)]) -> bool {
        if self.child.reaped {
            return false;
        }
        if let Ok(Some(_)) = sys::process::try_reap(self.child.pid) {
            self.child.reaped = true;
            return false;
        }
        let same_binary = match (self.binary, file_identity(&launch.program)) {
            (Some(running), Some(on_disk)) => running == on_disk,
            _ => false,
        };
        same_binary
            && fds.len() == self.handed.len()
            && fds
                .iter()
                .zip(&self.handed)
                .all(|((key, fd), (k, dev, ino))| {
                    key == k && sys::fd::identity(fd).is_ok_and(|(d, i, _)| (d, i) == (*dev, *ino))
                })
    }
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Starts the new process with every descriptor of `fds`, without telling it yet what they
/// are: [`Pending::hand_over`] does.
pub(crate) fn spawn(launch: &Launch, fds: Vec<(Key, OwnedFd)>) -> Result<Pending, Error> {
    let spawn_err = |source: io::Error| Error::Spawn {
        program: launch.program.clone(),
        source,
    };
    let token = Token::generate().map_err(Error::io("generating the handoff token"))?;
    let (control_r, control_w) = sys::fd::pipe().map_err(Error::io("creating the handoff pipe"))?;
    let (ready_r, ready_w) = sys::fd::pipe().map_err(Error::io("creating the ready pipe"))?;
    let (alive_r, alive_w) = sys::fd::pipe().map_err(Error::io("creating the parent pipe"))?;

    // Layout in the child: control pipe, ready pipe, parent pipe, then the sockets and files.
    let first_entry = FIRST_CHILD_FD + 3;
    let mut entries = Vec::with_capacity(fds.len());
    for (i, (key, fd)) in (0..).zip(&fds) {
        let (dev, ino, _) =
            sys::fd::identity(fd).map_err(Error::io("inspecting a handed-over descriptor"))?;
        entries.push(Entry {
            key: key.clone(),
            fd: first_entry + i,
            dev,
            ino,
        });
    }
    let handed = entries
        .iter()
        .map(|e| (e.key.clone(), e.dev, e.ino))
        .collect();
    let manifest = Manifest {
        token,
        parent_pid: std::process::id(),
        ready_fd: FIRST_CHILD_FD + 1,
        alive_fd: FIRST_CHILD_FD + 2,
        entries,
    }
    .encode();
    prepare_control(&control_w, manifest.len()).map_err(Error::io("sizing the handoff pipe"))?;

    let (_, pipe_inode, _) =
        sys::fd::identity(&control_r).map_err(Error::io("inspecting the handoff pipe"))?;
    let marker = Marker {
        control_fd: FIRST_CHILD_FD,
        pipe_inode,
        token,
    };
    let mut envp: Vec<CString> = Vec::new();
    for (name, value) in std::env::vars_os() {
        if name.as_bytes() == MARKER_VAR.as_bytes() {
            continue;
        }
        let mut pair = name.as_bytes().to_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        envp.push(cstring(&pair, "an environment variable").map_err(spawn_err)?);
    }
    envp.push(
        cstring(
            format!("{MARKER_VAR}={}", marker.encode()).as_bytes(),
            MARKER_VAR,
        )
        .map_err(spawn_err)?,
    );
    let argv = launch
        .args
        .iter()
        .map(|a| cstring(a.as_bytes(), "an argument"))
        .collect::<io::Result<Vec<_>>>()
        .map_err(spawn_err)?;
    let program =
        cstring(launch.program.as_os_str().as_bytes(), "the program path").map_err(spawn_err)?;
    let cwd =
        cstring(launch.cwd.as_os_str().as_bytes(), "the working directory").map_err(spawn_err)?;

    let mut passed: Vec<BorrowedFd<'_>> = vec![control_r.as_fd(), ready_w.as_fd(), alive_r.as_fd()];
    passed.extend(fds.iter().map(|(_, fd)| fd.as_fd()));
    let before = file_identity(&launch.program);
    let pid = sys::spawn::spawn(&SpawnRequest {
        program: &program,
        argv: &argv,
        envp: &envp,
        cwd: &cwd,
        fds: &passed,
    })
    .map_err(spawn_err)?;
    drop(passed);
    drop((control_r, ready_w, alive_r, fds));
    // What the child runs, exactly: `posix_spawn` returns once it has called `execve`. Without
    // /proc, the file as it was just before.
    let binary = file_identity(Path::new(&format!("/proc/{pid}/exe"))).or(before);

    let watches = prepare_ready(ready_r).and_then(|ready| Ok((ready, ExitWatch::new(pid)?)));
    match watches {
        Ok((ready, exit)) => Ok(Pending {
            child: Child {
                pid,
                ready,
                exit,
                alive: Some(alive_w),
                reaped: false,
            },
            control: control_w,
            manifest,
            handed,
            binary,
        }),
        Err(e) => {
            let _ = sys::process::kill_hard(pid);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Err(Error::io("watching the new process")(e))
        }
    }
}

fn prepare_ready(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    sys::fd::set_nonblocking(fd.as_fd())?;
    sys::fd::async_readable(fd)
}

/// Makes the handoff pipe non-blocking and large enough for the whole manifest, so writing it
/// never waits for the child to read.
fn prepare_control(fd: &OwnedFd, len: usize) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, fcntl};
    let capacity = fcntl(fd.as_fd(), FcntlArg::F_GETPIPE_SZ)?;
    if usize::try_from(capacity).unwrap_or(0) < len {
        let want = i32::try_from(len).map_err(|_| io::Error::other("manifest too large"))?;
        fcntl(fd.as_fd(), FcntlArg::F_SETPIPE_SZ(want))?;
    }
    sys::fd::set_nonblocking(fd.as_fd())
}

/// Writes the whole manifest into the pipe `prepare_control` made room in.
fn write_manifest(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
