//! The supervisor's notification socket: who may write to it, what `MAINPID=` changes, and
//! the fd store (`FDSTORE=1`, `FDSTOREREMOVE=1`, as systemd's), which keeps a copy of every
//! listener so that a crash of the serving process refuses no connection.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::Serving;
use crate::notify::{self, Notifier};
use crate::sys;
use crate::sys::fd::FileId;
use crate::sys::pidref::{self, ProcessRef};
use crate::sys::socket::Sender;

/// Most descriptors the store keeps: a bound on what a misbehaving generation can pin here.
const MAX_STORED: usize = 1024;

/// The notification socket, and what the supervisor needs to judge who writes to it.
pub(super) struct Inbox {
    pub(super) socket: OwnedFd,
    pub(super) me: i32,
    pub(super) uid: u32,
    /// Messages dropped so far, to warn about the first few and then only now and then.
    pub(super) refused: u64,
    pub(super) store: FdStore,
}

/// The sockets the generations stored, by name, one copy of each.
#[derive(Debug, Default)]
pub(super) struct FdStore {
    entries: Vec<Stored>,
}

#[derive(Debug)]
struct Stored {
    name: String,
    fd: OwnedFd,
    file: FileId,
}

impl FdStore {
    /// Keeps `fds` under `name`; a socket already stored (the same file, under any name) is
    /// kept once.
    fn add(&mut self, name: &str, fds: Vec<OwnedFd>) {
        for fd in fds {
            let Ok(id) = sys::fd::identity(&fd) else {
                continue;
            };
            if self.entries.iter().any(|e| e.file == id.file) {
                continue;
            }
            if self.entries.len() >= MAX_STORED {
                tracing::warn!(
                    name,
                    "supervisor: the fd store is full; a socket was not kept"
                );
                continue;
            }
            tracing::debug!(name, "supervisor: keeping a copy of a socket");
            self.entries.push(Stored {
                name: name.to_owned(),
                fd,
                file: id.file,
            });
        }
    }

    fn remove(&mut self, name: &str) {
        let before = self.entries.len();
        self.entries.retain(|e| e.name != name);
        if self.entries.len() != before {
            tracing::debug!(name, "supervisor: let a stored socket go");
        }
    }

    /// The stored sockets with their names, in the order they were stored.
    pub(super) fn all(&self) -> Vec<(&str, BorrowedFd<'_>)> {
        self.entries
            .iter()
            .map(|e| (e.name.as_str(), e.fd.as_fd()))
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Inbox {
    /// Applies every queued message from a trusted sender: `MAINPID=` names the serving
    /// generation, `FDSTORE=1` and `FDSTOREREMOVE=1` change the fd store; the rest goes to
    /// the supervisor's own supervisor, if any. Descriptors of a message that is not trusted, or
    /// not `FDSTORE=1`, are closed.
    pub(super) fn read(
        &mut self,
        serving: &mut Serving,
        upstream: Option<&Notifier>,
    ) -> std::io::Result<()> {
        let mut buf = [0u8; 4096];
        while let Some(received) = sys::socket::recv_with_sender(&self.socket, &mut buf)? {
            let sender = received.sender;
            if let Err(why) = self.trusted(sender) {
                self.refuse(sender, why);
                continue;
            }
            let lines = notify::parse(&buf[..received.len]);
            let value = |key: &str| lines.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            let name = value("FDNAME").unwrap_or("stored");
            if !crate::key::is_store_name(name) {
                self.refuse(sender, "FDNAME is not a valid name");
                continue;
            }
            if value("FDSTORE") == Some("1") {
                self.store.add(name, received.fds);
            } else if !received.fds.is_empty() {
                self.refuse(sender, "descriptors without FDSTORE=1");
            }
            if value("FDSTOREREMOVE") == Some("1") {
                self.store.remove(name);
            }
            let mut forward = Vec::new();
            for &(key, value) in &lines {
                match key {
                    "MAINPID" => match self.descendant(value) {
                        Ok(process) => {
                            tracing::info!(
                                from = serving.pid,
                                to = process.pid(),
                                "serving process changed"
                            );
                            *serving = Serving {
                                pid: process.pid(),
                                process: Some(process),
                            };
                        }
                        Err(why) => self.refuse(sender, why),
                    },
                    // The store is the supervisor's: its own supervisor gets none of it.
                    "FDSTORE" | "FDSTOREREMOVE" | "FDNAME" | "FDPOLL" => {}
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

    /// Whether a message from `sender` may steer the supervisor.
    fn trusted(&self, sender: Option<Sender>) -> Result<(), &'static str> {
        let Some(sender) = sender else {
            return Err("the message carries no credentials");
        };
        if sender.pid <= 0 {
            return Err("the sender is outside this pid namespace");
        }
        if pidref::descends_from(sender.pid, self.me) {
            return Ok(());
        }
        // A generation that sent its last message and exited (and was reaped by its predecessor)
        // before the message was read: no longer in /proc, but of our user.
        if pidref::Stat::read(sender.pid).is_none() && sender.uid == self.uid {
            return Ok(());
        }
        Err("the sender is not a process this supervisor started")
    }

    /// The running descendant `value` names, pinned.
    fn descendant(&self, value: &str) -> Result<ProcessRef, &'static str> {
        let pid = value
            .parse::<i32>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or("MAINPID is not a pid")?;
        if !pidref::descends_from(pid, self.me) {
            return Err("MAINPID names a process this supervisor did not start");
        }
        let process = ProcessRef::open(pid, None)
            .ok()
            .flatten()
            .ok_or("MAINPID names a process that does not run")?;
        // Pinned now: checked again, so that the pid was not recycled in between.
        if !pidref::descends_from(pid, self.me) {
            return Err("MAINPID names a process this supervisor did not start");
        }
        Ok(process)
    }

    fn refuse(&mut self, sender: Option<Sender>, why: &str) {
        self.refused += 1;
        // A flood of forged messages must not flood the log too.
        if self.refused <= 10 || self.refused.is_power_of_two() {
            tracing::warn!(
                sender_pid = sender.map(|s| s.pid),
                sender_uid = sender.map(|s| s.uid),
                refused = self.refused,
                "supervisor: refused a notification: {why}"
            );
        }
    }
}
