//! Opening sockets and files through the registry: each open claims an inherited or
//! activated socket with that key first, and binds a new one only when there is none.

use std::fs::File;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;

use super::{Fds, Held, socket_error};
use crate::address;
use crate::error::{Error, Repr};
use crate::key::{ACTIVATED_NETWORK, FILE_NETWORK, Key, Kind};
use crate::sys;
use crate::sys::socket::LocalAddr;

/// A listening socket from the registry: TCP or unix stream.
///
/// Both variants are non-blocking and close-on-exec, ready for `tokio::net::TcpListener::from_std`
/// or `tokio::net::UnixListener::from_std`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// `tcp`, `tcp4`, `tcp6`
    Tcp(TcpListener),
    /// `unix`
    Unix(UnixListener),
}

/// A datagram socket from the registry: UDP or unix datagram.
#[derive(Debug)]
#[non_exhaustive]
pub enum PacketSocket {
    /// `udp`, `udp4`, `udp6`
    Udp(UdpSocket),
    /// `unixgram`
    Unix(UnixDatagram),
}

impl Fds {
    /// A listening socket: `network` is `tcp`, `tcp4`, `tcp6` or `unix`; `address` is
    /// `host:port` (`:port` for every interface) or a socket path.
    ///
    /// On first start, an existing unix socket path that nobody listens on (left by a crash) is
    /// removed before binding; a live socket, or a path that is not a socket, is an error. In a
    /// process started by an upgrade nothing is ever removed: the predecessor still serves there.
    ///
    /// A socket systemd passed (socket activation) is used in place of a new one when its
    /// address is the one asked for; with `network` `systemd`, `address` is the name
    /// systemd gave it (`FileDescriptorName=`). After an upgrade, the successor gets the very
    /// same socket through the handoff.
    pub fn listen(&self, network: &str, address: &str) -> Result<Listener, Error> {
        match network {
            ACTIVATED_NETWORK => self.activated_listener(address),
            "tcp" | "tcp4" | "tcp6" => {
                let fd = self.inet(Kind::Listener, network, address, |addr| {
                    sys::socket::tcp_listener(network, addr, self.settings.backlog)
                })?;
                Ok(Listener::Tcp(TcpListener::from(fd)))
            }
            "unix" => {
                let fd = self.unix(Kind::Listener, network, address, |path| {
                    sys::socket::unix_listener(path, self.settings.backlog, self.settings.unix_mode)
                })?;
                Ok(Listener::Unix(UnixListener::from(fd)))
            }
            _ => Err(address::address_error(
                network,
                address,
                "listeners take the networks tcp, tcp4, tcp6 and unix",
            )),
        }
    }

    /// A TCP listener on `address` (`host:port`), IPv4 or IPv6 as the address says.
    pub fn tcp_listener(&self, address: &str) -> Result<TcpListener, Error> {
        match self.listen("tcp", address)? {
            Listener::Tcp(l) => Ok(l),
            Listener::Unix(_) => unreachable_kind("tcp", address),
        }
    }

    /// A unix stream listener at `path`.
    pub fn unix_listener(&self, path: &str) -> Result<UnixListener, Error> {
        match self.listen("unix", path)? {
            Listener::Unix(l) => Ok(l),
            Listener::Tcp(_) => unreachable_kind("unix", path),
        }
    }

    /// A unix stream listener at `path` whose path gets `mode` instead of the registry's
    /// default (a control socket: owner only).
    pub(crate) fn unix_listener_with_mode(
        &self,
        path: &str,
        mode: u32,
    ) -> Result<UnixListener, Error> {
        let fd = self.unix(Kind::Listener, "unix", path, |p| {
            sys::socket::unix_listener(p, self.settings.backlog, mode)
        })?;
        Ok(UnixListener::from(fd))
    }

    /// A datagram socket: `network` is `udp`, `udp4`, `udp6` or `unixgram`.
    pub fn packet(&self, network: &str, address: &str) -> Result<PacketSocket, Error> {
        match network {
            "udp" | "udp4" | "udp6" => {
                let fd = self.inet(Kind::Packet, network, address, |addr| {
                    sys::socket::udp_socket(network, addr)
                })?;
                Ok(PacketSocket::Udp(UdpSocket::from(fd)))
            }
            "unixgram" => {
                let fd = self.unix(Kind::Packet, network, address, |path| {
                    sys::socket::unix_datagram(path, self.settings.unix_mode)
                })?;
                Ok(PacketSocket::Unix(UnixDatagram::from(fd)))
            }
            _ => Err(address::address_error(
                network,
                address,
                "datagram sockets take the networks udp, udp4, udp6 and unixgram",
            )),
        }
    }

    /// A UDP socket bound to `address`.
    pub fn udp_socket(&self, address: &str) -> Result<UdpSocket, Error> {
        match self.packet("udp", address)? {
            PacketSocket::Udp(s) => Ok(s),
            PacketSocket::Unix(_) => unreachable_kind("udp", address),
        }
    }

    /// A unix datagram socket bound to `path`.
    pub fn unix_datagram(&self, path: &str) -> Result<UnixDatagram, Error> {
        match self.packet("unixgram", path)? {
            PacketSocket::Unix(s) => Ok(s),
            PacketSocket::Udp(_) => unreachable_kind("unixgram", path),
        }
    }

    /// The file registered under `name` by this process or its predecessor, if any.
    pub fn file(&self, name: &str) -> Result<Option<File>, Error> {
        let key = Key::new(Kind::File, FILE_NETWORK, name);
        Ok(self.claim(&key)?.map(File::from))
    }

    /// Registers `file` under `name`, so the next process finds it with [`Fds::file`]. The
    /// registry keeps its own descriptor; a file already registered under that name is replaced.
    pub fn add_file(&self, name: &str, file: &impl AsFd) -> Result<(), Error> {
        let copy = sys::fd::dup(file.as_fd())
            .and_then(Held::new)
            .map_err(socket_error(FILE_NETWORK, name))?;
        let key = Key::new(Kind::File, FILE_NETWORK, name);
        let mut reg = self.lock();
        reg.inherited.remove(&key);
        reg.used.insert(key, copy);
        Ok(())
    }

    fn inet(
        &self,
        kind: Kind,
        network: &str,
        address: &str,
        bind: impl FnOnce(&std::net::SocketAddr) -> io::Result<OwnedFd>,
    ) -> Result<OwnedFd, Error> {
        let addr = address::resolve_inet(network, address)?;
        if addr.port() != 0 {
            let key = Key::new(kind, network, &addr.to_string());
            if let Some(fd) = self.claim(&key)? {
                return Ok(fd);
            }
            let local = LocalAddr::Inet(addr);
            if let Some(fd) = self.claim_activated(kind, key, |s| s.info.local == local)? {
                return Ok(fd);
            }
        }
        let fd = bind(&addr).map_err(socket_error(network, address))?;
        let bound = sys::socket::local_inet(&fd).map_err(socket_error(network, address))?;
        self.insert(Key::new(kind, network, &bound.to_string()), fd)
    }

    fn unix(
        &self,
        kind: Kind,
        network: &str,
        path: &str,
        bind: impl Fn(&Path) -> io::Result<OwnedFd>,
    ) -> Result<OwnedFd, Error> {
        if path.is_empty() {
            return Err(Error::from(Repr::Address {
                network: network.to_owned(),
                address: path.to_owned(),
                reason: "the socket path is empty".into(),
            }));
        }
        let key = Key::new(kind, network, path);
        if let Some(fd) = self.claim(&key)? {
            return Ok(fd);
        }
        let local = LocalAddr::UnixPath(Some(path.to_owned()));
        if let Some(fd) = self.claim_activated(kind, key.clone(), |s| s.info.local == local)? {
            return Ok(fd);
        }
        let fs_path = Path::new(path);
        let fd = match bind(fs_path) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && !self.has_parent => {
                remove_stale_socket(fs_path, kind).map_err(socket_error(network, path))?;
                bind(fs_path)
            }
            other => other,
        }
        .map_err(socket_error(network, path))?;
        self.insert(key, fd)
    }
}

fn unreachable_kind<T>(network: &str, address: &str) -> Result<T, Error> {
    Err(Error::from(Repr::Address {
        network: network.to_owned(),
        address: address.to_owned(),
        reason: "the registry returned a socket of another family".into(),
    }))
}

/// Removes a unix socket left behind by a process that no longer runs. Refuses when a server
/// still accepts on it, or when the path is not a socket at all.
fn remove_stale_socket(path: &Path, kind: Kind) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the path exists and is not a socket; refusing to remove it",
        ));
    }
    if kind == Kind::Listener {
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving on this socket",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
    tracing::info!(path = %path.display(), "removing a stale unix socket");
    std::fs::remove_file(path)
}
