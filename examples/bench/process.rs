//! The server processes: starting them, their pid file, log and memory, waiting for them.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::args::Config;

pub fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` still runs. A child of ours (every generation becomes one once its parent
/// exited, this program being their subreaper) is reaped here when it ended; another
/// process's state is read from /proc.
pub fn alive(pid: i32) -> bool {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => return true,
        Ok(_) => return false,
        Err(_) => {}
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as tracing-subscriber writes it
/// (`2026-11-25T16:30:39.123456Z`).
fn parse_utc(ts: &str) -> Option<std::time::SystemTime> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let nanos: u64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's civil algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// When process `pid` logged that it was ready: flip logs `ready pid=N` right after it wrote the
/// pid file and told its parent, with a microsecond clock (a file's mtime comes from the
/// kernel's coarse clock, up to a tick, 4 ms here, behind).
pub fn ready_logged_at(log: &std::path::Path, pid: i32) -> Option<std::time::SystemTime> {
    let text = std::fs::read_to_string(log).ok()?;
    let needle = format!("pid={pid}");
    text.lines().find_map(|line| {
        let ready = line.contains(" ready ") && line.split_whitespace().any(|w| w == needle);
        ready.then(|| parse_utc(line.split_whitespace().next()?))?
    })
}

pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    None
}

/// The standby's pid and memory in KiB: (pid, resident, private). Most of its resident pages
/// are the binary's code, shared with the serving process; private ones are its own cost.
pub fn standby_kib(server: i32) -> Option<(i32, u64, u64)> {
    let children =
        std::fs::read_to_string(format!("/proc/{server}/task/{server}/children")).ok()?;
    let standby: i32 = children.split_whitespace().next()?.parse().ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{standby}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = rollup.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((
        standby,
        field("Rss:")?,
        field("Private_Clean:")? + field("Private_Dirty:")?,
    ))
}

/// CPU time a process has used so far, user and system, all its threads (`/proc/PID/stat`, in
/// clock ticks of 10 ms).
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Resident memory of a process in KiB: (anonymous, file-backed).
pub fn rss_kib(pid: i32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("RssAnon:")?, field("RssFile:")?))
}

/// A command that starts a server binary, in a session of its own unless `--same-session`.
///
/// A server runs as a service: its own cgroup under systemd, or its own session (and so, with
/// the kernel's autogroup scheduling, its own share of the CPU) when started by a daemon
/// launcher. The load generator stands in for clients on other machines; in the server's
/// session, its many busy threads would outnumber the server's and take CPU from it, which
/// measures the scheduler, not the server.
pub fn server_command(c: &Config, exe: &std::path::Path) -> Command {
    let mut cmd = Command::new(exe);
    if !c.same_session {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs between fork and exec and only calls setsid(2), which is
        // async-signal-safe and touches no memory of this process.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
    }
    cmd
}

/// Reaps every child of ours that has ended: processes re-parented to this program (it is their
/// subreaper) that nobody waits for by pid.
pub fn reap_orphans() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// How many descriptors process `pid` holds.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}
