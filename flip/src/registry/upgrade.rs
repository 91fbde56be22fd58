//! What an upgrade and a stop do with the registry: the snapshot a successor is handed,
//! whether a standby still holds it, closing what nobody claimed, and letting go at a stop.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;

use super::{Fds, Registered};
use crate::key::Key;
use crate::sys;
use crate::sys::fd::FileId;
use crate::sys::socket::SocketType;

impl Fds {
    /// Closes inherited descriptors nobody asked for, and removes their unix socket paths (this
    /// process is the successor: nobody will serve there any more). Returns their keys.
    pub(crate) fn close_unclaimed(&self) -> Vec<Key> {
        // systemd keeps its own descriptors and paths of sockets nobody here asked for.
        let activated = std::mem::take(&mut self.lock().activated);
        for s in &activated {
            tracing::info!(name = ?s.name, local = ?s.info.local, "closed a socket systemd passed that nobody asked for");
        }
        let mut closed_names: Vec<String> =
            activated.iter().filter_map(|s| s.name.clone()).collect();
        drop(activated);
        let unclaimed = std::mem::take(&mut self.lock().inherited);
        let mut keys: Vec<Key> = unclaimed.keys().cloned().collect();
        keys.sort();
        drop(unclaimed);
        closed_names.extend(keys.iter().filter_map(Key::store_name));
        self.lock().closed_names = closed_names;
        for key in &keys {
            // Only a socket is removed: whatever else may stand at that path now is not ours.
            let is_socket = std::fs::symlink_metadata(&key.address)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if key.is_unix_path()
                && is_socket
                && let Err(e) = std::fs::remove_file(&key.address)
            {
                tracing::warn!(path = %key.address, error = %crate::error::Chain(&e), "could not remove the socket path of an unclaimed inherited socket");
            }
        }
        keys
    }

    /// At a draining stop: makes every TCP listener of the registry drop new connections (see
    /// [`sys::socket::drop_new_connections`]) and returns copies of them, to watch their
    /// accept queues empty.
    pub(crate) fn drop_new_connections(&self) -> Vec<OwnedFd> {
        let registry = self.lock();
        let held = registry
            .used
            .values()
            .chain(registry.inherited.values())
            .map(|h| &h.fd)
            .chain(registry.activated.iter().map(|a| &a.fd));
        let mut listeners = Vec::new();
        for fd in held {
            let tcp_listener = sys::socket::inspect(fd).is_ok_and(|info| {
                info.listening
                    && info.socket_type == SocketType::Stream
                    && matches!(info.local, sys::socket::LocalAddr::Inet(_))
            });
            if !tcp_listener {
                continue;
            }
            if let Err(e) = sys::socket::drop_new_connections(fd) {
                tracing::warn!(error = %e, "cannot make a listener drop new connections; it resets those it queued at the stop");
                continue;
            }
            if let Ok(copy) = sys::fd::dup(fd.as_fd()) {
                listeners.push(copy);
            }
        }
        listeners
    }

    /// Closes every descriptor the registry holds, at a draining stop: a listening socket
    /// stops queueing connections (so that new ones are refused) only once every copy of it
    /// is closed, and the servers close theirs as they stop accepting. Returns how many.
    pub(crate) fn close_all(&self) -> usize {
        let mut registry = self.lock();
        let taken = (
            std::mem::take(&mut registry.inherited),
            std::mem::take(&mut registry.used),
            std::mem::take(&mut registry.activated),
        );
        drop(registry);
        taken.0.len() + taken.1.len() + taken.2.len()
    }

    /// New descriptors for everything this process uses, for handing to a successor, in the
    /// order of their keys.
    pub(crate) fn snapshot(&self) -> io::Result<Vec<Registered>> {
        let reg = self.lock();
        reg.in_order()
            .into_iter()
            .map(|(key, held)| {
                Ok(Registered {
                    key: key.clone(),
                    fd: sys::fd::dup(held.fd.as_fd())?,
                    file: held.file,
                })
            })
            .collect()
    }

    /// Whether [`snapshot`](Fds::snapshot) would hand over exactly `handed`: the same keys,
    /// each with the same file. No system call, no copy: at `SIGHUP` the predecessor asks
    /// this of its standby, on the way to ready.
    pub(crate) fn holds_exactly(&self, handed: &[(Key, FileId)]) -> bool {
        let reg = self.lock();
        // The keys of `handed` are distinct (a snapshot's), and a key is either used or
        // inherited, never both: equal counts and every key found make the sets equal.
        reg.used.len() + reg.inherited.len() == handed.len()
            && handed.iter().all(|(key, file)| {
                reg.used
                    .get(key)
                    .or_else(|| reg.inherited.get(key))
                    .is_some_and(|held| held.file == *file)
            })
    }
}
