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

/// Unblocks SIGHUP in the calling thread. A successor starts with SIGHUP blocked (see
/// `spawn`); once a handler is in place, the signal can be let in.
pub(crate) fn unblock_sighup() -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)?;
    Ok(())
}

/// Discards every SIGHUP pending for the calling thread or the process while SIGHUP is
/// blocked; returns how many there were. A signal meant for the process that started this one
/// (a SIGHUP to the whole process group) must not upgrade this one once it serves.
pub(crate) fn discard_pending_sighup() -> io::Result<usize> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut discarded = 0;
    loop {
        // SAFETY: `set` is a valid sigset_t for the duration of the call, the siginfo pointer
        // may be null, and `zero` is a live timespec: sigtimedwait only reads the two.
        let rc = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &zero) };
        if rc >= 0 {
            discarded += 1;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(discarded),
            Some(libc::EINTR) => {}
            _ => return Err(err),
        }
    }
}

/// Whether SIGHUP is blocked in the calling thread.
pub(crate) fn sighup_blocked() -> bool {
    SigSet::thread_get_mask()
        .map(|m| m.contains(Signal::SIGHUP))
        .unwrap_or(false)
}

/// `SIGCHLD`'s number.
pub(crate) const SIGCHLD: i32 = libc::SIGCHLD;

/// `SIGHUP`'s number.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) const SIGHUP: i32 = libc::SIGHUP;

/// `SIGTERM`'s number.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;

/// The signals a supervisor forwards or handles.
pub(crate) const SUPERVISED_SIGNALS: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

/// Blocks `signals` in the calling thread and returns a descriptor that reads them instead
/// (`signalfd`): no handler runs, and a process waits for them with `poll`.
pub(crate) fn signal_fd(signals: &[Signal]) -> io::Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(SignalFd::with_flags(
        &set,
        SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
    )?)
}

/// Reads the pending signals of a [`signal_fd`], without blocking.
pub(crate) fn read_signals(fd: &nix::sys::signalfd::SignalFd) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    loop {
        match fd.read_signal() {
            Ok(Some(info)) => out.push(info.ssi_signo as i32),
            Ok(None) => return Ok(out),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends signal number `sig` to `pid`. A process that is already gone is not an error.
///
/// For the testing helpers only, which signal the pid a pid file names on the user's behalf;
/// flip itself signals processes through [`super::pidref::ProcessRef`].
#[cfg(feature = "testing")]
pub(crate) fn send_signal(pid: i32, sig: i32) -> io::Result<()> {
    let sig = Signal::try_from(sig)?;
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reaps any child that has ended, without blocking: its pid and how it ended.
pub(crate) fn reap_any() -> io::Result<Option<(i32, Ended)>> {
    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(pid, code)) => Ok(Some((pid.as_raw(), Ended::Exited(code)))),
        Ok(WaitStatus::Signaled(pid, sig, _)) => {
            Ok(Some((pid.as_raw(), Ended::Signaled(sig as i32))))
        }
        Ok(_) | Err(nix::errno::Errno::ECHILD) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`): a
/// generation whose parent exited becomes its child.
pub(crate) fn become_subreaper() -> io::Result<()> {
    Ok(nix::sys::prctl::set_child_subreaper(true)?)
}

/// This process's effective user id.
pub(crate) fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// This process's pid.
pub(crate) fn own_pid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// Ends this process as `ended` says: with the same exit code, or killed by the same signal
/// (its default action restored and unblocked first; exit code 128 + signal if it survives).
pub(crate) fn exit_like(ended: Ended) -> ! {
    match ended {
        Ended::Exited(code) => std::process::exit(code),
        Ended::Signaled(sig) => {
            if let Ok(signal) = Signal::try_from(sig) {
                // SAFETY: restoring the default action installs no Rust code as a handler.
                let _ = unsafe {
                    nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl)
                };
                let mut set = SigSet::empty();
                set.add(signal);
                let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
                let _ = kill(nix::unistd::getpid(), signal);
            }
            std::process::exit(128 + sig)
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd's `MONOTONIC_USEC=` wants it.
pub(crate) fn monotonic_usec() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let micros = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000;
            secs * 1_000_000 + micros
        }
        Err(_) => 0,
    }
}
