//! What the control socket knows of this process: its upgrades and how the last one ended, the
//! client of an upgrade held back until the verdict (committed or rolled back), and the last
//! health check; followed as an [`Observer`] of the Bootstrap.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::identity;
use super::protocol::{self, Writer};
use crate::bootstrap::Observer;
use crate::error::{Chain, Error};

/// What the control socket knows of this process's upgrades.
#[derive(Debug)]
pub(super) struct State {
    pub(super) started_unix: u64,
    pub(super) binary: String,
    pub(super) succeeded: u64,
    pub(super) failed: u64,
    pub(super) rolled_back: u64,
    pub(super) upgrade_began: Option<Instant>,
    pub(super) last: Option<Last>,
    /// How the last successful upgrade was judged, once it was.
    pub(super) verdict: Option<Verdict>,
    /// The client of an upgrade that waits for its verdict.
    pub(super) waiting: Option<Waiting>,
    /// The last health check that ran here.
    pub(super) health: Option<Health>,
}

#[derive(Debug, Clone)]
pub(super) enum Verdict {
    Committed { after: Duration },
    RolledBack { cause: String, after: Duration },
}

/// An upgrade answer held back until the verdict: the fields so far, and the client.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) fields: Vec<(&'static str, String)>,
    pub(super) client: std::os::unix::net::UnixStream,
    pub(super) ready: Instant,
}

#[derive(Debug, Clone)]
pub(super) struct Health {
    pub(super) check: String,
    pub(super) failure: Option<String>,
    pub(super) at_unix: u64,
}

impl State {
    /// This process's state at its start.
    pub(super) fn new() -> State {
        State {
            started_unix: unix_now(),
            binary: binary_of(std::process::id()),
            succeeded: 0,
            failed: 0,
            rolled_back: 0,
            upgrade_began: None,
            last: None,
            verdict: None,
            waiting: None,
            health: None,
        }
    }

    /// Sends the held-back answer, now that the verdict is known.
    pub(super) fn answer_waiting(&mut self) {
        let Some(verdict) = &self.verdict else {
            return;
        };
        let Some(waiting) = self.waiting.take() else {
            return;
        };
        let text = verdict_answer(waiting.fields, verdict);
        let mut client = waiting.client;
        // A few hundred bytes to a fresh socket: the buffer takes them without waiting. A
        // client that vanished meanwhile learns nothing, and costs nothing.
        let _ = client.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = std::io::Write::write_all(&mut client, text.as_bytes());
    }
}

/// The answer to an upgrade whose verdict is known.
pub(super) fn verdict_answer(fields: Vec<(&'static str, String)>, verdict: &Verdict) -> String {
    let (kind, after) = match verdict {
        Verdict::Committed { after } => ("ok", after),
        Verdict::RolledBack { after, .. } => ("rolled-back", after),
    };
    let mut w = Writer::new(kind);
    for (key, value) in fields {
        w.field(key, value);
    }
    w.field("verdict_ms", protocol::ms(*after));
    match verdict {
        Verdict::Committed { .. } => w.field("verdict", "committed"),
        Verdict::RolledBack { cause, .. } => {
            w.field("verdict", "rolled back").field("cause", cause)
        }
    };
    w.finish()
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub(super) struct Last {
    pub(super) result: &'static str,
    pub(super) new_pid: Option<u32>,
    pub(super) elapsed: Duration,
    pub(super) detail: String,
}

/// Follows the Bootstrap's upgrades for `status`.
pub(super) struct Follow(pub(super) Arc<Mutex<State>>);

impl Observer for Follow {
    fn upgrade_started(&self) {
        let mut s = crate::sync::lock(&self.0);
        s.upgrade_began = Some(Instant::now());
        s.verdict = None;
    }

    fn committed(&self, _new_pid: Option<u32>) {
        let mut s = crate::sync::lock(&self.0);
        let after = since_ready(&s);
        s.verdict = Some(Verdict::Committed { after });
        s.answer_waiting();
    }

    fn health_checked(&self, check: &str, result: Result<(), &str>) {
        crate::sync::lock(&self.0).health = Some(Health {
            check: check.to_owned(),
            failure: result.err().map(str::to_owned),
            at_unix: unix_now(),
        });
    }

    fn upgraded(&self, new_pid: u32) {
        let mut s = crate::sync::lock(&self.0);
        s.succeeded += 1;
        let elapsed = s
            .upgrade_began
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let new_binary = binary_of(new_pid);
        tracing::info!(new_pid, old_binary = %s.binary, %new_binary, "upgraded to a build");
        let detail = format!("{} -> {new_binary}", s.binary);
        s.last = Some(Last {
            result: "succeeded",
            new_pid: Some(new_pid),
            elapsed,
            detail,
        });
    }

    fn rolled_back(&self, cause: &str) {
        let mut s = crate::sync::lock(&self.0);
        s.succeeded = s.succeeded.saturating_sub(1);
        s.rolled_back += 1;
        let (new_pid, elapsed) = s
            .last
            .as_ref()
            .map(|l| (l.new_pid, l.elapsed))
            .unwrap_or_default();
        s.last = Some(Last {
            result: "rolled back",
            new_pid,
            elapsed,
            detail: cause.to_owned(),
        });
        let after = since_ready(&s);
        s.verdict = Some(Verdict::RolledBack {
            cause: cause.to_owned(),
            after,
        });
        s.answer_waiting();
    }

    fn upgrade_failed(&self, error: &Error) {
        let mut s = crate::sync::lock(&self.0);
        let elapsed = s
            .upgrade_began
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let result = if error.is_refusal() {
            "refused"
        } else {
            s.failed += 1;
            "failed"
        };
        s.last = Some(Last {
            result,
            new_pid: failed_pid(error),
            elapsed,
            detail: Chain(error).to_string(),
        });
    }
}

/// How long the verdict took after readiness, as the waiting client saw it.
pub(super) fn since_ready(s: &State) -> Duration {
    s.waiting
        .as_ref()
        .map(|w| w.ready.elapsed())
        .unwrap_or_default()
}

pub(super) fn failed_pid(error: &Error) -> Option<u32> {
    error.is_failed_upgrade().then(|| error.pid()).flatten()
}

/// The binary process `pid` runs: its path and build identity.
pub(super) fn binary_of(pid: u32) -> String {
    describe(Path::new(&format!("/proc/{pid}/exe")))
}

/// A binary's path and build identity, through `link` (a `/proc` link to it): the path is
/// marked `(deleted)` once a deploy replaced the file.
pub(super) fn describe(link: &Path) -> String {
    let path = std::fs::read_link(link).unwrap_or_else(|_| link.to_owned());
    format!("{} ({})", path.display(), identity::of_file(link))
}
