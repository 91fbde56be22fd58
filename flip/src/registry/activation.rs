//! Socket activation: the sockets systemd passed (`LISTEN_FDS`), taken at a first start and
//! used in place of new ones when a server asks for their address or name.

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;

use super::{Fds, Listener, socket_error};
use crate::address;
use crate::error::{Error, Repr};
use crate::key::{ACTIVATED_NETWORK, Key, Kind};
use crate::sys;
use crate::sys::socket::{LocalAddr, SocketInfo, SocketType};

/// A socket systemd passed, with what it is.
#[derive(Debug)]
pub(super) struct ActivatedSocket {
    pub(super) name: Option<String>,
    pub(super) fd: OwnedFd,
    pub(super) info: SocketInfo,
}

impl ActivatedSocket {
    pub(super) fn is(&self, kind: Kind) -> bool {
        match kind {
            Kind::Listener => self.info.socket_type == SocketType::Stream && self.info.listening,
            Kind::Packet => self.info.socket_type == SocketType::Datagram,
            Kind::File => false,
        }
    }
}

/// A socket systemd passed (socket activation), with its name from `LISTEN_FDNAMES`.
#[derive(Debug)]
pub(crate) struct Activated {
    pub(crate) name: Option<String>,
    pub(crate) fd: OwnedFd,
}

/// Set by flip's supervisor beside `LISTEN_FDS` when it starts the binary again after a crash:
/// its own pid, which stands in for `LISTEN_PID` (the supervisor cannot know its child's pid
/// before `posix_spawn` returns). Believed only when it is this process's parent.
pub(crate) const LISTEN_PARENT_VAR: &str = "FLIP_LISTEN_PARENT";

/// Whether each process hands its sockets to the service manager's fd store (`FDSTORE=1`):
/// `1` (flip's supervisor sets it; set it in a systemd unit with `FileDescriptorStoreMax=`).
/// systemd 254 and later set `FDSTORE` to the store's size, which counts too.
pub(crate) const FDSTORE_VAR: &str = "FLIP_FDSTORE";

/// Takes the sockets systemd passed on a first start: `LISTEN_FDS` descriptors from 3 on, when
/// `LISTEN_PID` is this process, or [`LISTEN_PARENT_VAR`] its parent (anything else means the
/// variables were inherited by accident: they are ignored). Each is made close-on-exec, and the
/// variables are removed. Call it before other threads exist.
pub(crate) fn take_activated() -> Result<Vec<Activated>, Error> {
    let pid = sys::env::take_var("LISTEN_PID");
    let parent = sys::env::take_var(LISTEN_PARENT_VAR);
    let fds = sys::env::take_var("LISTEN_FDS");
    let names = sys::env::take_var("LISTEN_FDNAMES");
    let Some(fds) = fds else {
        return Ok(Vec::new());
    };
    let bad = |name: &str, value: &OsString, reason: &'static str| {
        Error::from(Repr::Activation(format!("{name}={value:?}: {reason}")))
    };
    let for_us = match (parent, pid) {
        (Some(parent), _) => {
            let Some(parent) = parent.to_str().and_then(|p| p.parse::<u32>().ok()) else {
                return Err(bad(LISTEN_PARENT_VAR, &parent, "not a pid"));
            };
            parent == std::os::unix::process::parent_id()
        }
        (None, Some(pid)) => {
            let Some(pid) = pid.to_str().and_then(|p| p.parse::<u32>().ok()) else {
                return Err(bad("LISTEN_PID", &pid, "not a pid"));
            };
            pid == std::process::id()
        }
        (None, None) => false,
    };
    if !for_us {
        tracing::debug!("LISTEN_FDS is for another process; ignored");
        return Ok(Vec::new());
    }
    let Some(count) = fds.to_str().and_then(|n| n.parse::<i32>().ok()) else {
        return Err(bad("LISTEN_FDS", &fds, "not a number"));
    };
    if !(0..=1024).contains(&count) {
        return Err(bad("LISTEN_FDS", &fds, "not between 0 and 1024"));
    }
    let names: Vec<String> = names
        .and_then(|n| n.into_string().ok())
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..count {
        let raw = sys::spawn::FIRST_CHILD_FD + i;
        let fd = sys::fd::adopt(raw)
            .map_err(|e| Error::from(Repr::Activation(format!("LISTEN_FDS: fd {raw}: {e}"))))?;
        let name = names
            .get(i as usize)
            .filter(|n| !n.is_empty() && n.as_str() != "unknown")
            .cloned();
        out.push(Activated { name, fd });
    }
    Ok(out)
}

impl Fds {
    /// Hands systemd's sockets to the registry, for [`listen`](Fds::listen) and
    /// [`packet`](Fds::packet) to use in place of new ones. Fails when one is not a socket.
    pub(crate) fn add_activated(&self, sockets: Vec<Activated>) -> Result<(), Error> {
        let mut checked = Vec::with_capacity(sockets.len());
        for s in sockets {
            let what = s.name.as_deref().unwrap_or("unnamed");
            let info = sys::socket::inspect(&s.fd).map_err(|e| {
                Error::from(Repr::Activation(format!(
                    "a passed descriptor ({what}) is not a socket: {e}"
                )))
            })?;
            // systemd passes blocking sockets; tokio wants them non-blocking.
            sys::fd::set_nonblocking(s.fd.as_fd()).map_err(|e| {
                Error::from(Repr::Activation(format!(
                    "making the passed socket {what} non-blocking: {e}"
                )))
            })?;
            checked.push(ActivatedSocket {
                name: s.name,
                fd: s.fd,
                info,
            });
        }
        self.lock().activated.extend(checked);
        Ok(())
    }

    /// Claims the activated socket of `kind` that `fits`, registered under `key`.
    pub(super) fn claim_activated(
        &self,
        kind: Kind,
        key: Key,
        fits: impl Fn(&ActivatedSocket) -> bool,
    ) -> Result<Option<OwnedFd>, Error> {
        let mut reg = self.lock();
        let Some(i) = reg.activated.iter().position(|s| s.is(kind) && fits(s)) else {
            return Ok(None);
        };
        let socket = reg.activated.remove(i);
        drop(reg);
        tracing::debug!(%key, "using a socket systemd passed");
        self.insert(key, socket.fd).map(Some)
    }

    /// The listener systemd passed under `name`, or (after an upgrade) the one inherited under
    /// that name.
    pub(super) fn activated_listener(&self, name: &str) -> Result<Listener, Error> {
        let key = Key::new(Kind::Listener, ACTIVATED_NETWORK, name);
        let fd = match self.claim(&key)? {
            Some(fd) => fd,
            None => self
                .claim_activated(Kind::Listener, key, |s| s.name.as_deref() == Some(name))?
                .ok_or_else(|| {
                    address::address_error(
                        ACTIVATED_NETWORK,
                        name,
                        "systemd passed no listening socket of that name (FileDescriptorName=)",
                    )
                })?,
        };
        let info = sys::socket::inspect(&fd).map_err(socket_error(ACTIVATED_NETWORK, name))?;
        Ok(match info.local {
            LocalAddr::Inet(_) => Listener::Tcp(TcpListener::from(fd)),
            _ => Listener::Unix(UnixListener::from(fd)),
        })
    }
}
