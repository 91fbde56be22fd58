//! flip's supervisor: a process whose pid never changes, for supervisors and container
//! runtimes that follow one pid (runit, s6, supervisord, systemd `Type=simple`, Docker and
//! Kubernetes, where it is PID 1).
//!
//! It is the same binary, started first: it starts the first generation and becomes the
//! reaper of every later one (`PR_SET_CHILD_SUBREAPER`; as PID 1 it is that anyway). The
//! generations tell it which of them serves through the notification protocol systemd speaks,
//! on a socket of its own (`NOTIFY_SOCKET=@flip-supervisor-...`): `MAINPID=` from the process
//! that upgraded. It forwards HUP, TERM, INT, QUIT, USR1 and USR2 to the serving generation,
//! reaps every child and orphan, and when the serving generation ends it ends the same way
//! (exit code or signal), after killing what is left. No runtime, no threads, no server
//! state: it sleeps in `poll` until a signal or a message arrives.
//!
//! It never runs new code: it is the binary as it was at the first start, until the whole
//! service restarts. What it runs is this file and the few syscalls below it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use crate::handoff::Token;
use crate::notify::{self, NOTIFY_SOCKET_VAR, Notifier};
use crate::process::Launch;
use crate::sys;
use crate::sys::process::Ended;

/// Set in the first generation's environment: it is supervised and must not supervise again.
pub(crate) const SUPERVISED_VAR: &str = "FLIP_SUPERVISED";

/// Runs the supervisor until the serving generation ends; returns (or exits) the way it ended.
pub(crate) fn run(executable: Option<std::path::PathBuf>) -> ExitCode {
    match supervise(executable) {
        Ok(ended) => {
            tracing::info!(?ended, "the serving process ended; the supervisor follows");
            sys::process::exit_like(ended)
        }
        Err(e) => {
            tracing::error!(error = %e, "supervisor failed");
            eprintln!("error: flip supervisor: {e}");
            ExitCode::from(1)
        }
    }
}

fn supervise(executable: Option<std::path::PathBuf>) -> std::io::Result<Ended> {
    let me = sys::process::own_pid();
    if me != 1 {
        sys::process::become_subreaper()?;
    }
    let signals = sys::process::signal_fd(&sys::process::SUPERVISED_SIGNALS)?;
    let name = format!("flip-supervisor-{me}-{}", Token::generate()?.to_hex());
    let inbox = sys::socket::abstract_datagram(name.as_bytes())?;
    // Under systemd (`NOTIFY_SOCKET` set for us), readiness and reloads go up, without MAINPID:
    // the supervisor is the main process and stays so.
    let upstream = match sys::env::take_var(NOTIFY_SOCKET_VAR) {
        Some(value) => Some(Notifier::new(&value)?),
        None => None,
    };
    let launch = Launch::capture(executable, Vec::new())?;
    let socket_value = format!("@{name}");
    let first = launch.start(
        &[
            (OsStr::new(NOTIFY_SOCKET_VAR), OsStr::new(&socket_value)),
            (OsStr::new(SUPERVISED_VAR), OsStr::new("1")),
        ],
        &[],
        None,
    )?;
    let mut serving = first.pid;
    tracing::info!(supervisor = me, pid = serving, "supervising");
    loop {
        sys::fd::wait_any_readable(&[signals.as_fd(), inbox.as_fd()])?;
        // Messages first: the MAINPID an old generation sent before it exited must be known
        // before its exit is.
        read_messages(&inbox, &mut serving, upstream.as_ref())?;
        for sig in sys::process::read_signals(&signals)? {
            if sig == sys::process::SIGCHLD {
                continue;
            }
            tracing::debug!(sig, pid = serving, "forwarding a signal");
            sys::process::send_signal(serving, sig)?;
        }
        while let Some((pid, ended)) = sys::process::reap_any()? {
            if pid != serving {
                continue; // an old generation, or an orphan of one
            }
            read_messages(&inbox, &mut serving, upstream.as_ref())?;
            if pid == serving {
                end_the_rest();
                return Ok(ended);
            }
        }
    }
}

/// Applies every queued message: `MAINPID=` names the serving generation.
fn read_messages(
    inbox: &OwnedFd,
    serving: &mut i32,
    upstream: Option<&Notifier>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while let Some(n) = sys::socket::recv_nonblocking(inbox, &mut buf)? {
        let mut forward = Vec::new();
        for (key, value) in notify::parse(&buf[..n]) {
            match key {
                "MAINPID" => match value.parse::<i32>() {
                    Ok(pid) if pid > 0 => {
                        tracing::info!(from = *serving, to = pid, "serving process changed");
                        *serving = pid;
                    }
                    _ => tracing::warn!(value, "ignored a bad MAINPID"),
                },
                _ => forward.push(format!("{key}={value}")),
            }
        }
        if let Some(up) = upstream
            && !forward.is_empty()
            && let Err(e) = up.send(&forward)
        {
            tracing::warn!(error = %e, "could not notify the supervisor's own supervisor");
        }
    }
    Ok(())
}

/// Kills and reaps what is left (old generations still draining, orphans): nothing outlives
/// the supervisor.
fn end_the_rest() {
    let me = sys::process::own_pid();
    let children =
        std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default();
    for pid in children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        crate::process::kill_and_reap_now(pid);
    }
}
