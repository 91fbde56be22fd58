//! The registry of sockets and files that survive an upgrade.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::error::Error;
use crate::key::{ACTIVATED_NETWORK, FILE_NETWORK, Key, Kind};
use crate::sys::fd::FileId;
use crate::sys::socket::{LocalAddr, SocketInfo, SocketType};
use crate::systemd::Activated;
use crate::{address, sys};

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

/// Every socket and file that is handed to the next process on upgrade.
///
/// Ask it for sockets instead of binding them yourself: on first start it binds a new one, and
/// in a process started by an upgrade it returns the very socket the old process was serving on,
/// with its accept queue intact, so no connection is refused. Each call returns a new descriptor
/// for the socket; the registry keeps its own, so the socket survives even when the application
/// drops what it was given.
///
/// ```no_run
/// # fn demo(upgrader: &flip::Upgrader) -> Result<(), flip::Error> {
/// let listener = upgrader.fds().tcp_listener("127.0.0.1:8080")?;
/// let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| flip::Error::Io {
///     context: "registering the listener with tokio",
///     source,
/// })?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Fds {
    registry: Mutex<Registry>,
    has_parent: bool,
    settings: SocketSettings,
}

/// How the registry creates new sockets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketSettings {
    /// Listen backlog of stream sockets.
    pub(crate) backlog: i32,
    /// Mode of new unix socket paths.
    pub(crate) unix_mode: u32,
}

#[derive(Debug, Default)]
struct Registry {
    /// Handed over by the parent and not asked for yet.
    inherited: HashMap<Key, Held>,
    /// Passed by systemd (socket activation) on a first start and not asked for yet.
    activated: Vec<ActivatedSocket>,
    /// Asked for (or created) by this process: what the next process receives.
    used: HashMap<Key, Held>,
}

impl Registry {
    /// Everything used or inherited, in the order of the keys: what a new process is handed.
    fn in_order(&self) -> Vec<(&Key, &Held)> {
        let mut all: Vec<(&Key, &Held)> = self.used.iter().chain(self.inherited.iter()).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }
}

/// A descriptor of the registry, and the file it is: known once, so that telling whether a
/// standby still holds what the registry holds costs no system call.
#[derive(Debug)]
struct Held {
    fd: OwnedFd,
    file: FileId,
}

impl Held {
    fn new(fd: OwnedFd) -> io::Result<Held> {
        let file = sys::fd::identity(&fd)?.file;
        Ok(Held { fd, file })
    }
}

/// One descriptor of the registry with its key and file: what a new process is handed, and
/// what it receives.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) key: Key,
    pub(crate) fd: OwnedFd,
    pub(crate) file: FileId,
}

/// A socket systemd passed, with what it is.
#[derive(Debug)]
struct ActivatedSocket {
    name: Option<String>,
    fd: OwnedFd,
    info: SocketInfo,
}

impl ActivatedSocket {
    fn is(&self, kind: Kind) -> bool {
        match kind {
            Kind::Listener => self.info.socket_type == SocketType::Stream && self.info.listening,
            Kind::Packet => self.info.socket_type == SocketType::Datagram,
            Kind::File => false,
        }
    }
}

fn socket_error(network: &str, address: &str) -> impl FnOnce(io::Error) -> Error {
    let (network, address) = (network.to_owned(), address.to_owned());
    move |source| Error::Socket {
        network,
        address,
        source,
    }
}

impl Fds {
    pub(crate) fn new(
        inherited: Vec<Registered>,
        has_parent: bool,
        settings: SocketSettings,
    ) -> Fds {
        // A successor claims most of what it inherits: room for all of it saves the rehashes.
        let used = HashMap::with_capacity(inherited.len());
        Fds {
            registry: Mutex::new(Registry {
                inherited: inherited
                    .into_iter()
                    .map(|r| {
                        (
                            r.key,
                            Held {
                                fd: r.fd,
                                file: r.file,
                            },
                        )
                    })
                    .collect(),
                activated: Vec::new(),
                used,
            }),
            has_parent,
            settings,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the maps half-updated (each operation is
        // a single insert or remove), so a poisoned lock is still consistent.
        crate::sync::lock(&self.registry)
    }

    /// Whether this process was started by an upgrade (sockets were inherited).
    pub fn has_parent(&self) -> bool {
        self.has_parent
    }

    /// A listening socket: `network` is `tcp`, `tcp4`, `tcp6` or `unix`; `address` is
    /// `host:port` (`:port` for every interface) or a socket path.
    ///
    /// On first start, an existing unix socket path that nobody listens on (left by a crash) is
    /// removed before binding; a live socket, or a path that is not a socket, is an error. In a
    /// process started by an upgrade nothing is ever removed: the parent still serves there.
    ///
    /// A socket systemd passed (socket activation) is used in place of a new one when its
    /// address is the one asked for; with `network` `systemd`, `address` is the name
    /// systemd gave it (`FileDescriptorName=`). After an upgrade, the new process gets the very
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

    /// The file registered under `name` by this process or its parent, if any.
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

    /// Hands systemd's sockets to the registry, for [`listen`](Fds::listen) and
    /// [`packet`](Fds::packet) to use in place of new ones. Fails when one is not a socket.
    pub(crate) fn add_activated(&self, sockets: Vec<Activated>) -> Result<(), Error> {
        let mut checked = Vec::with_capacity(sockets.len());
        for s in sockets {
            let what = s.name.as_deref().unwrap_or("unnamed");
            let info = sys::socket::inspect(&s.fd).map_err(|e| {
                Error::Activation(format!("a passed descriptor ({what}) is not a socket: {e}"))
            })?;
            // systemd passes blocking sockets; tokio wants them non-blocking.
            sys::fd::set_nonblocking(s.fd.as_fd()).map_err(|e| {
                Error::Activation(format!("making the passed socket {what} non-blocking: {e}"))
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

    /// Takes the activated socket of `kind` that `fits`, registered under `key`.
    fn take_activated(
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
    fn activated_listener(&self, name: &str) -> Result<Listener, Error> {
        let key = Key::new(Kind::Listener, ACTIVATED_NETWORK, name);
        let fd = match self.claim(&key)? {
            Some(fd) => fd,
            None => self
                .take_activated(Kind::Listener, key, |s| s.name.as_deref() == Some(name))?
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
            if let Some(fd) = self.take_activated(kind, key, |s| s.info.local == local)? {
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
            return Err(Error::Address {
                network: network.to_owned(),
                address: path.to_owned(),
                reason: "the socket path is empty".into(),
            });
        }
        let key = Key::new(kind, network, path);
        if let Some(fd) = self.claim(&key)? {
            return Ok(fd);
        }
        let local = LocalAddr::UnixPath(Some(path.to_owned()));
        if let Some(fd) = self.take_activated(kind, key.clone(), |s| s.info.local == local)? {
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

    /// A new descriptor for an inherited or already used socket, if there is one.
    fn claim(&self, key: &Key) -> Result<Option<OwnedFd>, Error> {
        let mut reg = self.lock();
        let held = match reg.used.get(key) {
            Some(held) => held,
            None => match reg.inherited.remove_entry(key) {
                Some((key, held)) => reg.used.entry(key).or_insert(held),
                None => return Ok(None),
            },
        };
        sys::fd::dup(held.fd.as_fd())
            .map(Some)
            .map_err(socket_error(&key.network, &key.address))
    }

    fn insert(&self, key: Key, fd: OwnedFd) -> Result<OwnedFd, Error> {
        let copy = sys::fd::dup(fd.as_fd()).map_err(socket_error(&key.network, &key.address))?;
        let held = Held::new(fd).map_err(socket_error(&key.network, &key.address))?;
        self.lock().used.insert(key, held);
        Ok(copy)
    }

    /// Closes inherited descriptors nobody asked for, and removes their unix socket paths (this
    /// process is the successor: nobody will serve there any more). Returns their keys.
    pub(crate) fn close_unclaimed(&self) -> Vec<Key> {
        // systemd keeps its own descriptors and paths of sockets nobody here asked for.
        let activated = std::mem::take(&mut self.lock().activated);
        for s in &activated {
            tracing::info!(name = ?s.name, local = ?s.info.local, "closed a socket systemd passed that nobody asked for");
        }
        drop(activated);
        let unclaimed = std::mem::take(&mut self.lock().inherited);
        let mut keys: Vec<Key> = unclaimed.keys().cloned().collect();
        keys.sort();
        drop(unclaimed);
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

    /// New descriptors for everything this process uses, for handing to a new process, in the
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
    /// each with the same file. No system call, no copy: at `SIGHUP` the old process asks
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

    /// Keys of everything registered, used or inherited, in order.
    pub fn keys(&self) -> Vec<Key> {
        let reg = self.lock();
        reg.in_order()
            .into_iter()
            .map(|(key, _)| key.clone())
            .collect()
    }
}

fn unreachable_kind<T>(network: &str, address: &str) -> Result<T, Error> {
    Err(Error::Address {
        network: network.to_owned(),
        address: address.to_owned(),
        reason: "the registry returned a socket of another family".into(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_SETTINGS: SocketSettings = SocketSettings {
        backlog: 16,
        unix_mode: 0o600,
    };

    #[test]
    fn unix_sockets_get_the_configured_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("flip-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let fds = Fds::new(Vec::new(), false, TEST_SETTINGS);
        fds.unix_listener(path.to_str().unwrap()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn holds_exactly_tells_a_snapshot_of_now_from_an_older_one() {
        let handed = |fds: &Fds| -> Vec<(Key, FileId)> {
            let snapshot = fds.snapshot().unwrap();
            snapshot.into_iter().map(|r| (r.key, r.file)).collect()
        };
        let fds = Fds::new(Vec::new(), false, TEST_SETTINGS);
        assert!(fds.holds_exactly(&[]));
        fds.tcp_listener("127.0.0.1:0").unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        fds.add_file("log", &file).unwrap();
        let then = handed(&fds);
        assert!(fds.holds_exactly(&then));
        assert!(!fds.holds_exactly(&then[..1]), "one missing");

        // Another file under the same name: same keys, not the same files.
        fds.add_file("log", &std::fs::File::open("/dev/zero").unwrap())
            .unwrap();
        assert!(!fds.holds_exactly(&then));
        // One more socket.
        let now = handed(&fds);
        fds.tcp_listener("127.0.0.1:0").unwrap();
        assert!(!fds.holds_exactly(&now));

        // What a successor inherited counts whether claimed yet or not.
        let successor = Fds::new(fds.snapshot().unwrap(), true, TEST_SETTINGS);
        let all = handed(&fds);
        assert!(successor.holds_exactly(&all));
        successor.file("log").unwrap();
        assert!(successor.holds_exactly(&all));
    }

    #[test]
    fn port_zero_is_keyed_by_the_bound_port() {
        let fds = Fds::new(Vec::new(), false, TEST_SETTINGS);
        let l = fds.tcp_listener("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_ne!(port, 0);
        let key = Key::new(Kind::Listener, "tcp", &format!("127.0.0.1:{port}"));
        assert_eq!(fds.keys(), vec![key]);
        // Asking again for the bound address gives the same socket, not a new bind.
        let again = fds.tcp_listener(&format!("localhost:{port}")).unwrap();
        assert_eq!(again.local_addr().unwrap().port(), port);
        assert_eq!(fds.keys().len(), 1);
        // A second port 0 is a second socket.
        let other = fds.tcp_listener("127.0.0.1:0").unwrap();
        assert_ne!(other.local_addr().unwrap().port(), port);
        assert_eq!(fds.keys().len(), 2);
    }

    #[test]
    fn sockets_are_nonblocking_and_cloexec() {
        use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
        let fds = Fds::new(Vec::new(), false, TEST_SETTINGS);
        let l = fds.tcp_listener("127.0.0.1:0").unwrap();
        let fl = OFlag::from_bits_truncate(fcntl(&l, FcntlArg::F_GETFL).unwrap());
        let fd = FdFlag::from_bits_truncate(fcntl(&l, FcntlArg::F_GETFD).unwrap());
        assert!(fl.contains(OFlag::O_NONBLOCK));
        assert!(fd.contains(FdFlag::FD_CLOEXEC));
    }

    #[test]
    fn bad_addresses_are_named() {
        let fds = Fds::new(Vec::new(), false, TEST_SETTINGS);
        for (network, address) in [
            ("tcp", "nonsense"),
            ("tcp", "127.0.0.1:99999"),
            ("tcp4", "[::1]:80"),
            ("tcp6", "127.0.0.1:80"),
            ("sctp", "127.0.0.1:80"),
            ("unix", ""),
        ] {
            let err = fds.listen(network, address).unwrap_err().to_string();
            assert!(err.contains(address) && err.contains(network), "{err}");
        }
    }

    #[test]
    fn a_live_unix_socket_is_not_stolen_and_a_stale_one_is_replaced() {
        let dir = std::env::temp_dir().join(format!("flip-fds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let path_str = path.to_str().unwrap();
        let live = UnixListener::bind(&path).unwrap();
        let fds = Fds::new(Vec::new(), false, TEST_SETTINGS);
        let err = fds.unix_listener(path_str).unwrap_err().chain().to_string();
        assert!(err.contains("another process is serving"), "{err}");
        drop(live); // std does not remove the path: now it is stale
        fds.unix_listener(path_str).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, "data").unwrap();
        let err = fds
            .unix_listener(plain.to_str().unwrap())
            .unwrap_err()
            .chain()
            .to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&plain).unwrap(), "data");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
