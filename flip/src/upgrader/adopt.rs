//! Checking every handed-over descriptor before adopting any: each must be what the manifest
//! says (the same file, a socket of the right kind on the right address), or the whole handoff
//! is rejected and every descriptor left as it was.

use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use crate::error::HandoffError;
use crate::handoff::Manifest;
use crate::key::{ACTIVATED_NETWORK, Key, Kind};
use crate::registry::Registered;
use crate::sys;
use crate::sys::fd::{FileId, Identity, Marked};
use crate::sys::socket::{LocalAddr, SocketInfo, SocketType};

/// What a handed-over descriptor must be.
#[derive(Clone, Copy)]
enum Want {
    Pipe,
    Socket(FileId),
    File(FileId),
}

/// The handed-over descriptors as found before the manifest came: every check that needs a
/// system call, done while a standby waits rather than on the upgrade's path.
///
/// The checks are the same as without it; only their results are kept. Surveying marks each
/// open number close-on-exec (a flag of our own descriptor table) and closes nothing, so a
/// handoff rejected afterwards still leaves every descriptor open.
#[derive(Debug, Default)]
pub(super) struct Survey {
    first: RawFd,
    found: Vec<Option<Surveyed>>,
}

#[derive(Debug)]
struct Surveyed {
    marked: Option<Marked>,
    id: Identity,
    /// For a socket: what it is, and whether it is non-blocking.
    socket: Option<(io::Result<SocketInfo>, bool)>,
}

/// More than this many entries is not a handoff we made; the numbers are checked one by one
/// after the manifest instead.
const MAX_SURVEY: RawFd = 1 << 16;

impl Survey {
    pub(super) fn take(range: std::ops::Range<RawFd>) -> Survey {
        if range.end.saturating_sub(range.start) > MAX_SURVEY {
            return Survey::default();
        }
        let found = range
            .clone()
            .map(|fd| {
                let marked = sys::fd::mark(fd).ok()?;
                let id = sys::fd::identity(&marked).ok()?;
                let socket = id.is_socket().then(|| {
                    let nonblocking = sys::fd::is_nonblocking(marked.as_fd()).unwrap_or(false);
                    (sys::socket::inspect(&marked), nonblocking)
                });
                Some(Surveyed {
                    marked: Some(marked),
                    id,
                    socket,
                })
            })
            .collect();
        Survey {
            first: range.start,
            found,
        }
    }

    fn get(&mut self, fd: RawFd) -> Option<&mut Surveyed> {
        let i = usize::try_from(fd.checked_sub(self.first)?).ok()?;
        self.found.get_mut(i)?.as_mut()
    }

    fn identity(&mut self, fd: RawFd) -> io::Result<Identity> {
        match self.get(fd) {
            Some(s) => Ok(s.id),
            None => sys::fd::identity_raw(fd),
        }
    }

    fn adopt(&mut self, fd: RawFd) -> io::Result<OwnedFd> {
        match self.get(fd).and_then(|s| s.marked.take()) {
            Some(marked) => Ok(marked.adopt()),
            None => sys::fd::adopt(fd),
        }
    }

    /// What the socket at `fd` is, and whether it is non-blocking, as surveyed.
    fn socket(&mut self, fd: RawFd) -> Option<(io::Result<SocketInfo>, bool)> {
        self.get(fd)?.socket.take()
    }
}

fn check_identity(
    survey: &mut Survey,
    fd: RawFd,
    what: &dyn std::fmt::Display,
    want: Want,
) -> Result<(), HandoffError> {
    let bad = |reason: String| HandoffError::Fd {
        fd,
        what: what.to_string(),
        reason,
    };
    let id = survey
        .identity(fd)
        .map_err(|e| bad(format!("not open ({e})")))?;
    let (type_fits, file) = match want {
        Want::Pipe => (id.is_pipe(), None),
        Want::Socket(file) => (id.is_socket(), Some(file)),
        Want::File(file) => (true, Some(file)),
    };
    if !type_fits {
        return Err(bad(format!(
            "file type {:o} is not a {}",
            id.file_type,
            match want {
                Want::Pipe => "pipe",
                _ => "socket",
            }
        )));
    }
    if let Some(want) = file
        && id.file != want
    {
        return Err(bad(format!(
            "device/inode {}/{}, the predecessor handed over {}/{}",
            id.file.dev, id.file.ino, want.dev, want.ino
        )));
    }
    Ok(())
}

/// Checks that an inherited socket is what its key says, and returns the address it is really
/// bound to (canonical form), or why it is not.
///
/// A listener systemd passed and the predecessor asked for by name is keyed by that name, not its
/// address: only its type is checked.
fn check_socket(info: io::Result<SocketInfo>, key: &Key) -> Result<String, String> {
    let (kind, network) = (key.kind, key.network.as_str());
    let info = info.map_err(|e| format!("not a socket ({e})"))?;
    let want_ty = match kind {
        Kind::Listener => SocketType::Stream,
        Kind::Packet => SocketType::Datagram,
        Kind::File => return Err("a file entry cannot be inspected as a socket".into()),
    };
    if info.socket_type != want_ty {
        return Err(format!(
            "socket type is {:?}, expected {want_ty:?}",
            info.socket_type
        ));
    }
    if kind == Kind::Listener && !info.listening {
        return Err("the socket is not listening".into());
    }
    match (network, info.local) {
        (ACTIVATED_NETWORK, _) => Ok(key.address.clone()),
        ("unix" | "unixgram", LocalAddr::UnixPath(Some(path))) => Ok(path),
        ("unix" | "unixgram", LocalAddr::UnixPath(None)) => Err("socket path is not UTF-8".into()),
        ("unix" | "unixgram", other) => Err(format!(
            "expected a unix socket with a path, found {other:?}"
        )),
        (_, LocalAddr::Inet(addr)) => {
            let fits = match network.chars().last() {
                Some('4') => addr.is_ipv4(),
                Some('6') => addr.is_ipv6(),
                _ => true,
            };
            if fits {
                Ok(addr.to_string())
            } else {
                Err(format!("address {addr} does not fit {network}"))
            }
        }
        (_, other) => Err(format!("expected an IP socket, found {other:?}")),
    }
}

/// What the handoff gave this process once every descriptor checked out.
#[derive(Debug)]
pub(super) struct Adopted {
    pub(super) fds: Vec<Registered>,
    pub(super) parent_pid: u32,
    /// Write end of the ready pipe.
    pub(super) ready: OwnedFd,
    /// Read end of the parent pipe (non-blocking).
    pub(super) alive: OwnedFd,
}

/// Checks every descriptor `m` names (against `survey` where it holds a result) and adopts
/// them all, or none.
pub(super) fn adopt_all(m: Manifest, mut survey: Survey) -> Result<Adopted, HandoffError> {
    // Check every number before touching any: a mismatch leaves all of them as they were.
    check_identity(&mut survey, m.ready_fd, &"ready pipe", Want::Pipe)?;
    check_identity(&mut survey, m.alive_fd, &"parent pipe", Want::Pipe)?;
    for e in &m.entries {
        let want = match e.key.kind {
            Kind::File => Want::File(e.file),
            Kind::Listener | Kind::Packet => Want::Socket(e.file),
        };
        check_identity(&mut survey, e.fd, &e.key, want)?;
    }

    let mut adopt = |fd: RawFd, what: &dyn std::fmt::Display| {
        survey.adopt(fd).map_err(|e| HandoffError::Fd {
            fd,
            what: what.to_string(),
            reason: e.to_string(),
        })
    };
    let ready = adopt(m.ready_fd, &"ready pipe")?;
    let alive = adopt(m.alive_fd, &"parent pipe")?;
    let mut owned = Vec::with_capacity(m.entries.len());
    for e in &m.entries {
        owned.push(adopt(e.fd, &e.key)?);
    }
    sys::fd::set_nonblocking(alive.as_fd()).map_err(HandoffError::Io)?;

    let mut fds = Vec::with_capacity(owned.len());
    for (e, fd) in m.entries.into_iter().zip(owned) {
        let bad = |reason: String| HandoffError::Fd {
            fd: e.fd,
            what: e.key.to_string(),
            reason,
        };
        if e.key.kind != Kind::File {
            let (info, nonblocking) = survey
                .socket(e.fd)
                .unwrap_or_else(|| (sys::socket::inspect(&fd), false));
            let actual = check_socket(info, &e.key).map_err(bad)?;
            if actual != e.key.address {
                return Err(bad(format!("bound to {actual}, not {}", e.key.address)));
            }
            if !nonblocking {
                sys::fd::set_nonblocking(fd.as_fd()).map_err(|e| bad(e.to_string()))?;
            }
        }
        fds.push(Registered {
            key: e.key,
            fd,
            file: e.file,
        });
    }
    Ok(Adopted {
        fds,
        parent_pid: m.parent_pid,
        ready,
        alive,
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, IntoRawFd};

    use super::*;
    use crate::handoff::{Entry, Token};

    fn manifest(entries: Vec<Entry>) -> Manifest {
        let (r1, w1) = sys::fd::pipe().unwrap();
        let (r2, w2) = sys::fd::pipe().unwrap();
        drop((r1, w2));
        Manifest {
            token: Token::generate().unwrap(),
            parent_pid: 1,
            ready_fd: w1.into_raw_fd(),
            alive_fd: r2.into_raw_fd(),
            entries,
        }
    }

    fn entry(kind: Kind, network: &str, address: &str, fd: &impl AsFd) -> Entry {
        Entry {
            key: Key::new(kind, network, address),
            fd: fd.as_fd().as_raw_fd(),
            file: sys::fd::identity(fd).unwrap().file,
        }
    }

    /// The two ways a handoff is checked: on the spot, and from a survey taken before the
    /// manifest came (as a standby does). Every test runs both.
    fn both_ways(fd: RawFd) -> [Survey; 2] {
        [Survey::default(), Survey::take(fd..fd + 1)]
    }

    #[test]
    fn a_socket_of_the_right_kind_is_adopted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = entry(Kind::Listener, "tcp", &addr, &l);
        let fd = l.into_raw_fd();
        for survey in both_ways(fd) {
            let inherited = adopt_all(manifest(vec![e.clone()]), survey).unwrap();
            assert_eq!(inherited.fds.len(), 1);
            assert_eq!(inherited.fds[0].fd.as_raw_fd(), fd);
            assert_eq!(inherited.fds[0].file, e.file);
            // The second pass adopts the number again.
            std::mem::forget(inherited.fds);
        }
        drop(sys::fd::adopt(fd).unwrap());
    }

    #[test]
    fn a_blocking_socket_is_made_non_blocking() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = entry(Kind::Listener, "tcp", &addr, &l);
        let fd = l.into_raw_fd();
        for survey in both_ways(fd) {
            let blocking = sys::fd::adopt(fd).unwrap();
            nix::fcntl::fcntl(
                &blocking,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
            )
            .unwrap();
            std::mem::forget(blocking);
            let inherited = adopt_all(manifest(vec![e.clone()]), survey).unwrap();
            assert!(sys::fd::is_nonblocking(inherited.fds[0].fd.as_fd()).unwrap());
            std::mem::forget(inherited.fds);
        }
        drop(sys::fd::adopt(fd).unwrap());
    }

    #[test]
    fn a_socket_of_another_kind_is_rejected() {
        for surveyed in [false, true] {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = udp.local_addr().unwrap().to_string();
            let [live, survey] = both_ways(udp.as_raw_fd());
            let survey = if surveyed { survey } else { live };
            let err = adopt_all(
                manifest(vec![entry(Kind::Listener, "tcp", &addr, &udp)]),
                survey,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("socket type"), "{err}");
            std::mem::forget(udp); // adopt_all owned and closed it
        }
    }

    #[test]
    fn a_listener_on_another_address_is_rejected() {
        for surveyed in [false, true] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let [live, survey] = both_ways(l.as_raw_fd());
            let survey = if surveyed { survey } else { live };
            let err = adopt_all(
                manifest(vec![entry(Kind::Listener, "tcp", "127.0.0.1:1", &l)]),
                survey,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("bound to"), "{err}");
            std::mem::forget(l);
        }
    }

    #[test]
    fn a_descriptor_with_another_identity_is_left_untouched() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut e = entry(Kind::Listener, "tcp", &addr, &l);
        e.file.ino += 1;
        for survey in both_ways(l.as_raw_fd()) {
            let err = adopt_all(manifest(vec![e.clone()]), survey)
                .unwrap_err()
                .to_string();
            assert!(err.contains("device/inode"), "{err}");
            // Still open and ours: it was not adopted, so not closed.
            assert!(l.local_addr().is_ok());
        }
    }

    #[test]
    fn a_closed_descriptor_is_rejected() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut e = entry(Kind::Listener, "tcp", &addr, &l);
        e.fd = 1 << 19;
        let err = adopt_all(manifest(vec![e]), Survey::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not open"), "{err}");
    }
}
