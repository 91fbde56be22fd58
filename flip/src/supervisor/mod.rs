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
//! Who may steer it: the notification socket is an abstract name, which any process of the
//! network namespace can send to. A message counts only when its sender (the kernel's
//! `SCM_CREDENTIALS`, not the message) is a descendant of the supervisor, or is already gone
//! and ran as the supervisor's user (a generation that sent `MAINPID=` and exited before the
//! message was read). `MAINPID=` must name a running descendant, which is then pinned by a
//! pidfd: signals reach that process or nobody. Everything else is dropped with a warning.
//!
//! It never runs new code: it is the binary as it was at the first start, until the whole
//! service restarts. What it runs is this file and the few syscalls below it.

use std::os::fd::AsFd;
use std::process::ExitCode;

use crate::bootstrap::StopMode;
use crate::handoff::Token;
use crate::launch::Launch;
use crate::notify::{NOTIFY_SOCKET_VAR, Notifier};
use crate::sys;
use crate::sys::pidref::ProcessRef;
use crate::sys::process::Ended;

mod inbox;
mod restart;

use inbox::{FdStore, Inbox};
use restart::Starter;

/// Set in the first generation's environment: it is supervised and must not supervise again.
pub(crate) const SUPERVISED_VAR: &str = "FLIP_SUPERVISED";

/// Runs the supervisor until the serving generation ends; returns (or exits) the way it ended.
///
/// With [`StopMode::Drain`], the generations still draining when the serving one ends are
/// waited for (each ends within its own grace period; a further SIGTERM or SIGINT is passed
/// to all of them), not killed.
pub(crate) fn run(executable: Option<std::path::PathBuf>, stop: StopMode) -> ExitCode {
    match supervise(executable, stop) {
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

fn supervise(executable: Option<std::path::PathBuf>, stop: StopMode) -> std::io::Result<Ended> {
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
    let starter = Starter {
        launch,
        socket_value: format!("@{name}"),
        me,
    };
    let mut inbox = Inbox {
        socket: inbox,
        me,
        uid: sys::process::own_uid(),
        refused: 0,
        store: FdStore::default(),
    };
    let mut serving = starter.start(&inbox.store)?;
    tracing::info!(supervisor = me, pid = serving.pid, "supervising");
    // How the last child that was not the serving one ended: the supervisor's own end when the
    // serving process ended out of its sight (see below).
    let mut last_other = None;
    // A stop was passed on: the serving process's end is the supervisor's, whatever it is.
    let mut stopping = false;
    let mut backoff = restart::Backoff::default();
    loop {
        let mut watched = vec![signals.as_fd(), inbox.socket.as_fd()];
        watched.extend(serving.process.as_ref().and_then(ProcessRef::as_fd));
        sys::fd::wait_any_readable(&watched)?;
        drop(watched);
        // Messages first: the MAINPID an old generation sent before it exited must be known
        // before its exit is.
        inbox.read(&mut serving, upstream.as_ref())?;
        for sig in sys::process::read_signals(&signals)? {
            if sig == sys::process::SIGCHLD {
                continue;
            }
            stopping |= restart::is_stop(sig);
            tracing::debug!(sig, pid = serving.pid, "forwarding a signal");
            match &serving.process {
                Some(process) => process.signal(sig)?,
                // Nobody serves: the older generations still draining get it.
                None => signal_children(sig),
            }
        }
        let mut crashed = None;
        while let Some((pid, ended)) = sys::process::reap_any()? {
            if pid != serving.pid {
                last_other = Some(ended); // an old generation, or an orphan of one
                continue;
            }
            inbox.read(&mut serving, upstream.as_ref())?;
            if pid == serving.pid {
                if restart::is_crash(stopping, ended) {
                    crashed = Some((pid, ended));
                    break;
                }
                if stop == StopMode::Drain {
                    wait_for_the_rest(&signals)?;
                }
                end_the_rest();
                return Ok(ended);
            }
        }
        // The serving process ended, and it was not our child: its predecessor, an older
        // generation still draining, reaped it and decides. It takes service back (and says
        // so with MAINPID=), or finishes its drain and exits; when no child is left, the
        // supervisor ends the way the last of them did, or starts the binary again after a
        // crash.
        if serving.process.as_ref().is_some_and(|p| !p.runs()) {
            tracing::debug!(
                pid = serving.pid,
                "the serving process ended; its predecessor decides what follows"
            );
            serving.process = None;
        }
        if crashed.is_none() && serving.process.is_none() && children_of(me).is_empty() {
            let ended = last_other.unwrap_or(Ended::Exited(0));
            if !restart::is_crash(stopping, ended) {
                end_the_rest();
                return Ok(ended);
            }
            crashed = Some((serving.pid, ended));
        }
        if let Some((pid, ended)) = crashed {
            match starter.restart(pid, ended, &mut backoff, &mut inbox, &signals)? {
                Some(next) => serving = next,
                None => {
                    end_the_rest();
                    return Ok(ended);
                }
            }
        }
    }
}

/// Passes signal `sig` to every child.
fn signal_children(sig: i32) {
    for pid in children_of(sys::process::own_pid()) {
        // Our children, not reaped yet: their pids cannot have been recycled.
        if let Ok(Some(child)) = ProcessRef::open(pid, None) {
            let _ = child.signal(sig);
        }
    }
}

/// The generation that serves: its pid, and the process pinned when it was named (`None`
/// once it ended before it could be pinned).
struct Serving {
    pid: i32,
    process: Option<ProcessRef>,
}

/// Waits until every child has ended (older generations finishing their drain), passing
/// signals on to all of them.
fn wait_for_the_rest(signals: &nix::sys::signalfd::SignalFd) -> std::io::Result<()> {
    let me = sys::process::own_pid();
    loop {
        while sys::process::reap_any()?.is_some() {}
        let children = children_of(me);
        if children.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            ?children,
            "waiting for the older generations to finish draining"
        );
        // SIGCHLD wakes us when one ends.
        sys::fd::wait_any_readable(&[signals.as_fd()])?;
        for sig in sys::process::read_signals(signals)? {
            if sig != sys::process::SIGCHLD {
                signal_children(sig);
            }
        }
    }
}

/// The children of `pid`, from `/proc`.
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .collect()
}

/// Kills and reaps what is left (old generations still draining, orphans): nothing outlives
/// the supervisor.
fn end_the_rest() {
    for pid in children_of(sys::process::own_pid()) {
        crate::launch::kill_and_reap_now(pid);
    }
}
