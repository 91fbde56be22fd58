//! Starting the new binary and waiting for processes to end: what to execute, with which
//! arguments, environment and working directory; waiting on a pidfd; killing and reaping.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::error::ExitStatus;
use crate::sys;
use crate::sys::fd::FileId;
use crate::sys::process::Ended;
use crate::sys::spawn::SpawnRequest;

pub(crate) mod elf;
mod stderr;

pub(crate) use stderr::StderrTail;

/// How the successor is started: captured once, when the first `Upgrader` is built.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The file to execute.
    pub(crate) program: PathBuf,
    /// The path upgrades start from (the deploy path), passed on to successors: `program`
    /// itself, but for a launch of the pinned previous build (see [`Launch::for_program`]).
    pub(crate) deployed: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
    /// Variables every started process gets on top of this process's environment.
    pub(crate) env: Vec<(OsString, OsString)>,
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
    pub(crate) fn capture(
        program: Option<PathBuf>,
        env: Vec<(OsString, OsString)>,
    ) -> io::Result<Launch> {
        elf::keep_note();
        let args: Vec<OsString> = std::env::args_os().collect();
        let cwd = std::env::current_dir()?;
        let program = match program {
            Some(p) if p.is_absolute() => p,
            Some(p) => cwd.join(p),
            None => Self::from_argv0(args.first(), &cwd)
                .or_else(|| std::env::current_exe().ok())
                .ok_or_else(|| io::Error::other("cannot tell which executable is running"))?,
        };
        Ok(Launch {
            deployed: program.clone(),
            program,
            args,
            cwd,
            env,
        })
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

    /// The same launch, executing `program` instead; successors still learn the deploy path.
    pub(crate) fn for_program(&self, program: PathBuf) -> Launch {
        Launch {
            program,
            ..self.clone()
        }
    }

    /// Upgrades start from `path` (a verified predecessor said so), not from argv\[0\].
    pub(crate) fn deployed_at(&mut self, path: PathBuf) {
        self.program = path.clone();
        self.deployed = path;
    }

    /// The file the launch path names now; `None` when that cannot be told.
    pub(crate) fn binary_now(&self) -> Option<FileId> {
        sys::fs::file_id(&self.program).ok()
    }

    /// Starts the program with this process's environment, the launch's own variables and
    /// `extra` on top (each replacing a variable of the same name), and `fds` at 3, 4, 5, ...
    /// Returns the pid and the file it runs.
    pub(crate) fn start(
        &self,
        extra: &[(&OsStr, &OsStr)],
        fds: &[BorrowedFd<'_>],
        stderr: Option<BorrowedFd<'_>>,
    ) -> io::Result<Started> {
        let own = self.env.iter().map(|(n, v)| (n.as_os_str(), v.as_os_str()));
        let added: Vec<(&OsStr, &OsStr)> = own.chain(extra.iter().copied()).collect();
        let mut envp: Vec<CString> = Vec::new();
        let inherited = std::env::vars_os();
        for (name, value) in inherited {
            if added.iter().any(|(n, _)| *n == name.as_os_str()) {
                continue;
            }
            envp.push(env_pair(&name, &value)?);
        }
        for (name, value) in &added {
            envp.push(env_pair(name, value)?);
        }
        let argv = self
            .args
            .iter()
            .map(|a| cstring(a.as_bytes(), "an argument"))
            .collect::<io::Result<Vec<_>>>()?;
        let program = cstring(self.program.as_os_str().as_bytes(), "the program path")?;
        let cwd = cstring(self.cwd.as_os_str().as_bytes(), "the working directory")?;
        let before = self.binary_now();
        let pid = sys::spawn::spawn(&SpawnRequest {
            program: &program,
            argv: &argv,
            envp: &envp,
            cwd: &cwd,
            fds,
            stderr,
        })?;
        // "The binary" is the file at the launch path, the path the operator deploys to:
        // for a wrapper script there, the process runs a shell or what the script starts,
        // never that file. If the path changed during the spawn, which file started is not
        // known: `None`, which a later check takes for stale.
        let binary = before.filter(|b| self.binary_now() == Some(*b));
        Ok(Started { pid, binary })
    }
}

/// A process [`Launch::start`] started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    pub(crate) pid: i32,
    /// The file it runs, `None` when that cannot be told.
    pub(crate) binary: Option<FileId>,
}

fn env_pair(name: &OsStr, value: &OsStr) -> io::Result<CString> {
    let mut pair = name.as_bytes().to_vec();
    pair.push(b'=');
    pair.extend_from_slice(value.as_bytes());
    cstring(&pair, "an environment variable")
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// Waits for a process to end without a thread: a pidfd where the kernel has them, polling
/// otherwise.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    pid: i32,
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl ExitWatch {
    /// Needs a tokio runtime with I/O enabled.
    pub(crate) fn new(pid: i32) -> io::Result<ExitWatch> {
        let pidfd = match sys::process::pidfd_open(pid)? {
            Some(fd) => Some(sys::fd::async_readable(fd)?),
            None => None,
        };
        Ok(ExitWatch { pid, pidfd })
    }

    /// Waits until the process ended and reaps it.
    pub(crate) async fn reap(&self) -> ExitStatus {
        loop {
            match sys::process::try_reap(self.pid) {
                Ok(Some(ended)) => return ended.into(),
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

    /// Waits until the process ended, without reaping it.
    pub(crate) async fn exited(&self) {
        // Readable from the moment it ends, and stays so: nothing to clear.
        if let Some(fd) = &self.pidfd
            && fd.readable().await.is_ok()
        {
            return;
        }
        while sys::pidref::Stat::read(self.pid).is_some_and(|s| !s.zombie) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills the process and waits until it is reaped.
    pub(crate) async fn kill(&self) -> ExitStatus {
        let _ = sys::process::kill_hard(self.pid);
        self.reap().await
    }
}

impl From<Ended> for ExitStatus {
    fn from(ended: Ended) -> ExitStatus {
        match ended {
            Ended::Exited(code) => ExitStatus::Code(code),
            Ended::Signaled(sig) => ExitStatus::Signal(sig),
        }
    }
}

/// Kills `pid` and reaps it before returning: for a process about to exit, where a reaping
/// task would not get to run.
pub(crate) fn kill_and_reap_now(pid: i32) {
    let _ = sys::process::kill_hard(pid);
    let _ = sys::process::reap_blocking(pid);
}

/// Kills `pid` and reaps it in the background on the current tokio runtime (at once without
/// one), so that no process outlives the handle on it and no zombie is left.
pub(crate) fn kill_and_reap_later(pid: i32) {
    let _ = sys::process::kill_hard(pid);
    let watch = match tokio::runtime::Handle::try_current() {
        Ok(handle) => ExitWatch::new(pid).map(|watch| (handle, watch)),
        Err(_) => Err(io::Error::other("no runtime")),
    };
    match watch {
        Ok((handle, watch)) => {
            handle.spawn(async move { watch.reap().await });
        }
        Err(_) => {
            let _ = sys::process::reap_blocking(pid);
        }
    }
}
