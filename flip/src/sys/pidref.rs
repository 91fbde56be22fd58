//! A process named by something sturdier than its pid: a pidfd where the kernel has them, and
//! the process's start time (from `/proc/<pid>/stat`) everywhere. A pid alone can be recycled
//! between the moment it is learnt and the moment it is signalled; a [`ProcessRef`] signals
//! the very process it was opened for, or nobody.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::process::pidfd_open;

/// One process, pinned when it was opened.
#[derive(Debug)]
pub(crate) struct ProcessRef {
    pid: i32,
    /// Clock ticks after boot at which it started (field 22 of `/proc/<pid>/stat`).
    start: u64,
    pidfd: Option<OwnedFd>,
}

impl ProcessRef {
    /// Pins process `pid`, if it runs (a zombie does not) and, when `expected_start` is given,
    /// started at that time: otherwise the pid names another process (or none) and `None` is
    /// returned.
    pub(crate) fn open(pid: i32, expected_start: Option<u64>) -> io::Result<Option<ProcessRef>> {
        if pid <= 0 {
            return Ok(None);
        }
        // The pidfd first: once it is open, the stat read below describes the process it
        // refers to, unless that one already ended (then its stat is gone or another's, and
        // the pidfd says it ended).
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(stat) = Stat::read(pid) else {
            return Ok(None);
        };
        if stat.zombie || expected_start.is_some_and(|s| s != stat.start) {
            return Ok(None);
        }
        let this = ProcessRef {
            pid,
            start: stat.start,
            pidfd,
        };
        Ok(this.runs().then_some(this))
    }

    /// The pid, as this process's pid namespace sees it.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd, readable once the process ended; `None` without pidfds.
    pub(crate) fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// When it started, in clock ticks after boot: with the pid, a name no other process has.
    pub(crate) fn start_time(&self) -> u64 {
        self.start
    }

    /// Whether it still runs (not ended, not a zombie).
    pub(crate) fn runs(&self) -> bool {
        if let Some(fd) = &self.pidfd {
            // A pidfd turns readable when its process ends.
            let mut polled = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            return matches!(poll(&mut polled, PollTimeout::ZERO), Ok(0));
        }
        Stat::read(self.pid).is_some_and(|s| !s.zombie && s.start == self.start)
    }

    /// Sends signal number `sig` to it, and to nobody else. A process that already ended is
    /// not an error.
    pub(crate) fn signal(&self, sig: i32) -> io::Result<()> {
        let rc = match &self.pidfd {
            // SAFETY: pidfd_send_signal takes a pidfd we own, a signal number, a null siginfo
            // (the kernel fills it in as kill does) and flags 0; it reads no memory of ours.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            None => {
                // Without pidfds: the start time is checked right before the signal, which
                // leaves a window of one syscall for the pid to be recycled.
                if !self.runs() {
                    return Ok(());
                }
                // SAFETY: kill takes a pid and a signal number by value.
                i64::from(unsafe { libc::kill(self.pid, sig) })
            }
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }
}

/// What flip reads of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) parent: i32,
    pub(crate) start: u64,
    pub(crate) zombie: bool,
    /// Stopped by a signal (SIGSTOP, SIGTSTP) or traced: it runs nothing until continued.
    pub(crate) stopped: bool,
}

impl Stat {
    /// `None` when the process does not exist (or `/proc` is not mounted).
    pub(crate) fn read(pid: i32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold anything, spaces and
        // parentheses included: the fields after it start after the last ')'.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); field N is rest[N - 3].
        let state = fields.first()?;
        Some(Stat {
            parent: fields.get(1)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
            zombie: matches!(*state, "Z" | "X" | "x"),
            stopped: matches!(*state, "T" | "t"),
        })
    }
}

/// Whether process `pid` descends from process `ancestor` (is a child of it, or of a child of
/// it, ...), as the parent links in `/proc` say now. A process whose parent this pid namespace
/// cannot see (parent 0) descends from nobody here.
pub(crate) fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut at = pid;
    // Bounded: pid_max is at most 2^22, and a chain never loops, but /proc is read live.
    for _ in 0..4096 {
        let Some(stat) = Stat::read(at) else {
            return false;
        };
        if stat.parent == ancestor {
            return true;
        }
        if stat.parent <= 0 || stat.parent == at {
            return false;
        }
        at = stat.parent;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_pinned_signalled_and_seen_to_end() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        assert!(descends_from(pid, me));
        assert!(!descends_from(me, pid));
        let pinned = ProcessRef::open(pid, None).unwrap().unwrap();
        assert!(pinned.runs());
        // Another start time: another process under the same pid.
        assert!(
            ProcessRef::open(pid, Some(pinned.start_time() + 1))
                .unwrap()
                .is_none()
        );
        pinned.signal(libc::SIGTERM).unwrap();
        child.wait().unwrap();
        assert!(!pinned.runs());
        // Signalling an ended process is not an error, and reaches nobody.
        pinned.signal(libc::SIGTERM).unwrap();
        assert!(ProcessRef::open(pid, None).unwrap().is_none());
        assert!(ProcessRef::open(0, None).unwrap().is_none());
        assert!(ProcessRef::open(-1, None).unwrap().is_none());
    }
}
