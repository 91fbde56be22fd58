//! What the kernel says about a process: alive, exit status, descriptors, environment,
//! children, memory.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::*;

/// The inode of the executable `pid` runs.
pub fn exe_inode(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino()
}

/// The pid a pid file names, if it names one.
pub fn pid_in(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Whether `pid` still runs (reaping it if it is our child and has ended).
pub fn alive(pid: u32) -> bool {
    let p = Pid::from_raw(pid as i32);
    match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => true,
        Ok(_) => false,
        Err(_) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| {
                rest.trim_start().starts_with('Z') || rest.trim_start().starts_with('X')
            }),
            Err(_) => false,
        },
    }
}

/// Waits until our child (or re-parented descendant) `pid` exits, and returns its exit code
/// (128 + signal number when killed).
pub fn exit_code(pid: u32, deadline: Duration) -> i32 {
    wait_for(
        &format!("process {pid} to exit"),
        deadline,
        || match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            Ok(_) => None,
            Err(e) => panic!("waitpid({pid}): {e}: not our child, or reaped already"),
        },
    )
}

pub fn wait_exit(pid: u32, deadline: Duration) {
    wait_for(&format!("process {pid} to exit"), deadline, || {
        (!alive(pid)).then_some(())
    });
}

pub fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// Number of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Targets of a process's descriptors (`socket:[123]`, `/dev/null`, ...), by number.
pub fn fd_links(pid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().parse().unwrap_or(-1);
            if let Ok(t) = std::fs::read_link(e.path()) {
                out.push((n, t.to_string_lossy().into_owned()));
            }
        }
    }
    out.sort();
    out
}

/// The environment a process was started with.
pub fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Pids of the processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The descriptor count once it holds still: the same in two looks 20 ms apart. A file the
/// server opens for a moment (its event log) is not counted; a leaked descriptor is.
pub fn settled_fd_count(pid: u32) -> usize {
    let mut last = fd_count(pid);
    wait_for("the descriptor count to settle", DEADLINE, || {
        std::thread::park_timeout(Duration::from_millis(20));
        let now = fd_count(pid);
        let same = now == last;
        last = now;
        same.then_some(now)
    })
}
