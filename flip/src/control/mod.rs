//! The control socket: a unix socket in every serving process that answers `status` and
//! `upgrade`, the latter only once the upgrade ended (the new pid and time to ready, or why it
//! failed). The `flip` command speaks it; [`Client`] is the same for Rust programs.
//!
//! The socket is opened through the registry, so it is handed to every generation like any
//! other socket and its path keeps working across upgrades; a successor answers on it once
//! it is ready.
//!
//! Who may use it: its path gets mode `0600`, so only the server's user (and root) can
//! connect. The server checks the peer too (`SO_PEERCRED`), so that loosened permissions (a
//! `chmod`, an ACL, a bind mount into another container) give nobody else a say: a client
//! whose user is neither root nor the server's effective user gets `error` with the reason, for
//! `status` as for `upgrade`. Both requests are equally privileged: `status` tells pids and
//! binary paths, `upgrade` starts the binary at the launch path, which the server's user could
//! start anyway. Under user namespaces the uids compared are those of the server's namespace.
//!
//! A request is one line of at most 512
//! bytes, read within 5 s: anything else gets an error answer, and a client that says nothing
//! holds up nobody but itself. It sits beside the Bootstrap: it asks for upgrades with an
//! [`UpgradeRequester`] and follows them as an [`Observer`](crate::Observer) (`state.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

mod client;
mod identity;
mod protocol;
mod state;

use state::{Follow, State, Waiting, binary_of, describe, failed_pid};

pub use client::{Client, ControlError, HealthCheck, LastUpgrade, Status, UpgradeReport};

use crate::bootstrap::{Bootstrap, Shutdown, UpgradeRequester, UpgradeResult};
use crate::error::{Chain, Error, Repr};
use crate::upgrader::Upgrader;
use protocol::{MAX_REQUEST, Request, Writer};

/// Mode of the control socket's path: only its owner may connect.
pub const CONTROL_SOCKET_MODE: u32 = 0o600;

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The control socket of the server whose pid file is `pid_file`: the same path with the
/// extension `ctl` (`/run/app.pid` → `/run/app.ctl`, `/run/app` → `/run/app.ctl`).
pub fn default_socket_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("ctl")
}

/// Serves the control socket at `path` in `bootstrap`'s processes: a starter opens it through
/// the registry, and it answers once the process is ready, until the drain begins.
/// `#[flip::main]` calls this (see `<PREFIX>_CONTROL_SOCKET`).
pub fn serve(bootstrap: &mut Bootstrap, path: PathBuf) {
    let state = Arc::new(Mutex::new(State::new()));
    bootstrap.observe(Follow(state.clone()));
    let requester = bootstrap.upgrade_requester();
    bootstrap.register_service("control", move |ctx: crate::bootstrap::StartContext| {
        let (path, state, requester) = (path.clone(), state.clone(), requester.clone());
        async move {
            let address = path.to_string_lossy().into_owned();
            let listener = ctx
                .upgrader()
                .fds()
                .unix_listener_with_mode(&address, CONTROL_SOCKET_MODE)?;
            let listener = UnixListener::from_std(listener).map_err(|source| {
                Error::from(Repr::Socket {
                    network: "unix".into(),
                    address,
                    source,
                })
            })?;
            let server = Server {
                upgrader: ctx.upgrader().clone(),
                requester,
                state,
            };
            ctx.serve(server.run(listener, ctx.shutdown()));
            Ok::<_, Error>(())
        }
    });
}

#[derive(Clone)]
struct Server {
    upgrader: Upgrader,
    requester: UpgradeRequester,
    state: Arc<Mutex<State>>,
}

impl Server {
    async fn run(self, listener: UnixListener, mut shutdown: Shutdown) -> Result<(), Error> {
        shutdown.serving().await;
        let mut clients = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.draining() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        clients.spawn(self.clone().answer(stream));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = clients.join_next(), if !clients.is_empty() => {}
            }
        }
        // The next generation answers from now on; a request already read is answered here
        // (an upgrade's answer comes right before this process drains).
        drop(listener);
        while clients.join_next().await.is_some() {}
        Ok(())
    }

    async fn answer(self, mut stream: UnixStream) {
        // Judged at once, answered once the request is read (an answer before that would
        // reach the client as a reset).
        let allowed = permitted(&stream);
        let mut line = String::new();
        let mut reader = BufReader::new((&mut stream).take(MAX_REQUEST as u64 + 1));
        let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
        drop(reader);
        let response = match read {
            Err(_) => error("no request within 5 s"),
            Ok(Err(e)) => error(&format!("reading the request: {e}")),
            Ok(Ok(_)) if line.len() > MAX_REQUEST || !line.ends_with('\n') => {
                error("the request is not one line of at most 512 bytes")
            }
            Ok(Ok(_)) if allowed.is_err() => {
                let reason = allowed.err().unwrap_or_default();
                tracing::warn!(%reason, "control socket: refused a client");
                error(&reason)
            }
            Ok(Ok(_)) => match Request::decode(&line) {
                Err(reason) => error(&reason),
                Ok(Request::Status) => self.status(),
                Ok(request @ (Request::Upgrade | Request::Rollback)) => {
                    match self.upgrade(request == Request::Rollback).await {
                        Answer::Now(text) => text,
                        Answer::AtVerdict(fields) => return self.wait_for_verdict(stream, fields),
                    }
                }
            },
        };
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// Holds the client of a successful upgrade until the verdict (at once without a
    /// probation): the observer answers it, before this process may exit.
    fn wait_for_verdict(&self, stream: UnixStream, fields: Vec<(&'static str, String)>) {
        let client = match stream.into_std().and_then(|c| {
            c.set_nonblocking(false)?;
            Ok(c)
        }) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: cannot hold the upgrade's client for the verdict");
                return;
            }
        };
        let mut s = crate::sync::lock(&self.state);
        s.waiting = Some(Waiting {
            fields,
            client,
            ready: Instant::now(),
        });
        s.answer_waiting();
    }

    fn status(&self) -> String {
        let s = crate::sync::lock(&self.state);
        let mut w = Writer::new("ok");
        w.field("pid", std::process::id())
            .field("generation", self.upgrader.generation())
            .field("started_unix", s.started_unix)
            .field("upgrades_succeeded", s.succeeded)
            .field("upgrades_failed", s.failed)
            .field("upgrades_rolled_back", s.rolled_back);
        if let Some(last) = &s.last {
            w.field("last_result", last.result)
                .field("last_elapsed_ms", protocol::ms(last.elapsed))
                .field("last_detail", &last.detail);
            if let Some(pid) = last.new_pid {
                w.field("last_new_pid", pid);
            }
        }
        if let Some(h) = &s.health {
            w.field("health_check", &h.check)
                .field("health_at_unix", h.at_unix)
                .field(
                    "health_result",
                    h.failure
                        .as_deref()
                        .map_or("ok".to_owned(), |f| format!("failed: {f}")),
                );
        }
        if let Some(began) = s.upgrade_began {
            w.field("upgrading_ms", protocol::ms(began.elapsed()));
        }
        if let Ok(Some(parent)) = self.upgrader.draining_parent() {
            w.field("draining_parent", parent);
        }
        if let Some(pid) = self.upgrader.standby_pid() {
            w.field("standby_pid", pid);
        }
        if let Some(why) = self.upgrader.standby_trouble() {
            w.field("standby_none", why);
        }
        for key in self.upgrader.fds().keys() {
            w.field("listener", key);
        }
        if let Some(previous) = self.upgrader.previous_build() {
            w.field("previous_binary", describe(&previous));
        }
        w.field("binary", &s.binary)
            .field("flip_version", env!("CARGO_PKG_VERSION"));
        w.finish()
    }

    async fn upgrade(&self, rollback: bool) -> Answer {
        let UpgradeResult { result, elapsed } = if rollback {
            self.requester.rollback().await
        } else {
            self.requester.upgrade().await
        };
        match result {
            Ok(new_pid) => {
                let old_binary = crate::sync::lock(&self.state).binary.clone();
                let mut fields = vec![
                    ("old_pid", std::process::id().to_string()),
                    ("new_pid", new_pid.to_string()),
                    ("ready_ms", protocol::ms(elapsed)),
                ];
                if let Some(start) = self.upgrader.last_successor_start() {
                    fields.push(("started", start.to_string()));
                }
                fields.push(("old_binary", old_binary));
                fields.push(("new_binary", binary_of(new_pid)));
                Answer::AtVerdict(fields)
            }
            Err(e) => {
                let mut w = Writer::new(if e.is_refusal() { "refused" } else { "failed" });
                w.field("reason", Chain(&e));
                for line in e.last_stderr() {
                    w.field("stderr", line);
                }
                if let Some(pid) = failed_pid(&e) {
                    w.field("new_pid", pid);
                }
                Answer::Now(w.finish())
            }
        }
    }
}

/// An answer to a request: now, or once the upgrade's verdict is known.
enum Answer {
    Now(String),
    AtVerdict(Vec<(&'static str, String)>),
}

/// Whether the peer may use the control socket: root, or the server's own effective user.
fn permitted(stream: &UnixStream) -> Result<(), String> {
    let own = crate::sys::process::own_uid();
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("permission denied: the client's credentials are unknown ({e})"))?;
    match peer.uid() {
        0 => Ok(()),
        uid if uid == own => Ok(()),
        uid => Err(format!(
            "permission denied: uid {uid} (pid {}) is neither root nor the server's user (uid {own})",
            peer.pid()
                .map_or_else(|| "?".to_string(), |p| p.to_string())
        )),
    }
}

fn error(reason: &str) -> String {
    let mut w = Writer::new("error");
    w.field("reason", reason);
    w.finish()
}
