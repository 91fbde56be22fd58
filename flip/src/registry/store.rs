//! What a service manager's fd store should hold (systemd's `FDSTORE=1`, or flip's
//! supervisor, which speaks the same protocol): every socket of the registry under its name
//! ([`Key::store_name`]), so that a process started again after a crash gets the very sockets
//! back (as `LISTEN_FDS`) and no connection is refused meanwhile; and the names of the sockets
//! this process let go at readiness, to take out of the store.

use std::io;
use std::os::fd::OwnedFd;

use super::Fds;
use crate::key::{Key, Kind};

impl Fds {
    /// Copies of every socket of the registry (files stay out), each with its store name.
    pub(crate) fn sockets_to_store(&self) -> io::Result<Vec<(String, OwnedFd)>> {
        Ok(self
            .snapshot()?
            .into_iter()
            .filter(|r| r.key.kind != Kind::File)
            .filter_map(|r| Key::store_name(&r.key).map(|name| (name, r.fd)))
            .collect())
    }

    /// The store names of the sockets closed at readiness: inherited from the predecessor or
    /// passed by the service manager, and asked for by nobody here.
    pub(crate) fn closed_store_names(&self) -> Vec<String> {
        self.lock().closed_names.clone()
    }
}
