//! Child processes: pidfds, signals, reaping, signal masks.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Opens a pidfd for `pid`: a descriptor that becomes readable when the process exits, so tokio
/// can wait for a child without a thread or a SIGCHLD handler. `None` on kernels before 5.3.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOSYS) => Ok(None),
            _ => Err(err),
        };
    }
    let raw = i32::try_from(rc).map_err(|_| io::Error::other("pidfd_open returned a bad fd"))?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it. pidfds are
    // created close-on-exec.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// exit(code)
    Exited(i32),
    /// killed by a signal
    Signaled(i32),
}

/// Reaps `pid` if it has ended, without blocking.
pub(crate) fn try_reap(pid: i32) -> io::Result<Option<Ended>> {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))? {
        WaitStatus::Exited(_, code) => Ok(Some(Ended::Exited(code))),
        WaitStatus::Signaled(_, sig, _) => Ok(Some(Ended::Signaled(sig as i32))),
        _ => Ok(None),
    }
}

/// Waits until `pid` ended and reaps it, blocking the thread.
pub(crate) fn reap_blocking(pid: i32) -> io::Result<Ended> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Ended::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Ended::Signaled(sig as i32)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The name of a signal number (`SIGTERM`), if it is one.
pub(crate) fn signal_name(sig: i32) -> Option<&'static str> {
    Signal::try_from(sig).ok().map(Signal::as_str)
}

/// Sends SIGKILL to `pid`. A process that is already gone is not an error.
pub(crate) fn kill_hard(pid: i32) -> io::Result<()> {
    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Unblocks SIGHUP in the calling thread. A new process starts with SIGHUP blocked (see
/// `spawn`); once a handler is in place, the signal can be let in.
pub(crate) fn unblock_sighup() -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)?;
    Ok(())
}

/// Whether SIGHUP is blocked in the calling thread.
pub(crate) fn sighup_blocked() -> bool {
    SigSet::thread_get_mask()
        .map(|m| m.contains(Signal::SIGHUP))
        .unwrap_or(false)
}
