//! Starting the serving process, and starting it again after a crash: with the sockets the
//! generations stored (`LISTEN_FDS`, as systemd passes its fd store), so that connections that
//! arrive meanwhile wait in the listen queues and are served by the new process; with a backoff
//! that grows while it keeps crashing.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::inbox::{FdStore, Inbox};
use super::{SUPERVISED_VAR, Serving};
use crate::launch::Launch;
use crate::notify::NOTIFY_SOCKET_VAR;
use crate::registry::{FDSTORE_VAR, LISTEN_PARENT_VAR};
use crate::sys;
use crate::sys::pidref::ProcessRef;
use crate::sys::process::Ended;

/// A process that served at least this long before it ended is started again at once.
const STABLE: Duration = Duration::from_secs(30);
/// The first wait of a crash loop; each quick crash doubles it, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// Whether `sig` asks the service to stop: its end is the supervisor's, never restarted.
pub(super) fn is_stop(sig: i32) -> bool {
    [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT].contains(&sig)
}

/// Whether the serving process's end is a crash to start again from: anything but exit 0 (the
/// server ended on purpose) while no stop was asked for.
pub(super) fn is_crash(stopping: bool, ended: Ended) -> bool {
    !stopping && ended != Ended::Exited(0)
}

/// How long to wait before the next start.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    last_start: Option<Instant>,
    delay: Duration,
    /// Starts after a crash so far.
    pub(super) restarts: u64,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let quick = self.last_start.is_some_and(|t| t.elapsed() < STABLE);
        self.delay = if quick {
            (self.delay * 2).clamp(FIRST_DELAY, MAX_DELAY)
        } else {
            Duration::ZERO
        };
        self.restarts += 1;
        self.delay
    }

    fn started(&mut self) {
        self.last_start = Some(Instant::now());
    }
}

/// Starts the binary as the supervisor's child.
pub(super) struct Starter {
    pub(super) launch: Launch,
    /// `NOTIFY_SOCKET` for the children: the supervisor's own socket.
    pub(super) socket_value: String,
    pub(super) me: i32,
}

impl Starter {
    /// Starts the binary, with every stored socket (none at the first start).
    pub(super) fn start(&self, store: &FdStore) -> std::io::Result<Serving> {
        let stored = store.all();
        let fds: Vec<BorrowedFd<'_>> = stored.iter().map(|(_, fd)| *fd).collect();
        let count = fds.len().to_string();
        let names = stored
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(":");
        let parent = self.me.to_string();
        let mut env: Vec<(&OsStr, &OsStr)> = vec![
            (
                OsStr::new(NOTIFY_SOCKET_VAR),
                OsStr::new(&self.socket_value),
            ),
            (OsStr::new(SUPERVISED_VAR), OsStr::new("1")),
            (OsStr::new(FDSTORE_VAR), OsStr::new("1")),
        ];
        if !fds.is_empty() {
            env.extend([
                (OsStr::new("LISTEN_FDS"), OsStr::new(&count)),
                (OsStr::new("LISTEN_FDNAMES"), OsStr::new(&names)),
                (OsStr::new(LISTEN_PARENT_VAR), OsStr::new(&parent)),
            ]);
        }
        let started = self.launch.start(&env, &fds, None)?;
        // Our own child, not reaped yet: its pid cannot be recycled before we reap it.
        Ok(Serving {
            pid: started.pid,
            process: ProcessRef::open(started.pid, None)?,
        })
    }

    /// After the serving process `pid` crashed (`ended`): waits out the backoff, then starts
    /// the binary again with the stored sockets. `None` when a stop arrived meanwhile (it is
    /// passed to what is left).
    pub(super) fn restart(
        &self,
        pid: i32,
        ended: Ended,
        backoff: &mut Backoff,
        inbox: &mut Inbox,
        signals: &nix::sys::signalfd::SignalFd,
    ) -> std::io::Result<Option<Serving>> {
        let delay = backoff.next();
        tracing::warn!(
            pid,
            ?ended,
            sockets = inbox.store.len(),
            restart = backoff.restarts,
            ?delay,
            "the serving process ended outside an upgrade; starting the binary again on the same sockets"
        );
        let until = Instant::now() + delay;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !sys::fd::wait_readable_for(&[signals.as_fd()], left)? {
                break;
            }
            for sig in sys::process::read_signals(signals)? {
                if is_stop(sig) {
                    tracing::info!(
                        sig,
                        "a stop during the restart's backoff: not starting again"
                    );
                    super::signal_children(sig);
                    return Ok(None);
                }
            }
        }
        let serving = self.start(&inbox.store)?;
        backoff.started();
        tracing::info!(pid = serving.pid, "started again");
        Ok(Some(serving))
    }
}
