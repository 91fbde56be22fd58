//! The registry of sockets and files that survive an upgrade.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Repr};
use crate::key::Key;
use crate::sys;
use crate::sys::fd::FileId;

mod activation;
mod open;
mod store;
mod upgrade;

use activation::ActivatedSocket;
pub(crate) use activation::{FDSTORE_VAR, LISTEN_PARENT_VAR, take_activated};
pub use open::{Listener, PacketSocket};

/// Every socket and file that is handed to the next process on upgrade.
///
/// Ask it for sockets instead of binding them yourself: on first start it binds a new one, and
/// in a process started by an upgrade it returns the very socket the predecessor was serving on,
/// with its accept queue intact, so no connection is refused. Each call returns a new descriptor
/// for the socket; the registry keeps its own, so the socket survives even when the application
/// drops what it was given.
///
/// ```no_run
/// # fn demo(upgrader: &flip::Upgrader) -> Result<(), Box<dyn std::error::Error>> {
/// let listener = upgrader.fds().tcp_listener("127.0.0.1:8080")?;
/// let listener = tokio::net::TcpListener::from_std(listener)?;
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
    /// Handed over by the predecessor and not asked for yet.
    inherited: HashMap<Key, Held>,
    /// Passed by systemd (socket activation) on a first start and not asked for yet.
    activated: Vec<ActivatedSocket>,
    /// Asked for (or created) by this process: what the next process receives.
    used: HashMap<Key, Held>,
    /// The fd store names of the sockets closed at readiness (see `store.rs`).
    closed_names: Vec<String>,
}

impl Registry {
    /// Everything used or inherited, in the order of the keys: what a successor is handed.
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

/// One descriptor of the registry with its key and file: what a successor is handed, and
/// what it receives.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) key: Key,
    pub(crate) fd: OwnedFd,
    pub(crate) file: FileId,
}

fn socket_error(network: &str, address: &str) -> impl FnOnce(io::Error) -> Error {
    let (network, address) = (network.to_owned(), address.to_owned());
    move |source| {
        Error::from(Repr::Socket {
            network,
            address,
            source,
        })
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
                closed_names: Vec::new(),
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

    /// Keys of everything registered, used or inherited, in order.
    pub fn keys(&self) -> Vec<Key> {
        let reg = self.lock();
        reg.in_order()
            .into_iter()
            .map(|(key, _)| key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Kind;
    use std::os::unix::net::UnixListener;

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
