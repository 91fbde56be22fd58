//! The new process's side of an upgrade: receiving the handoff, telling the parent we are
//! ready, and learning when the parent has exited.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::HandoffError;
use crate::handoff::{MARKER_VAR, MAX_MANIFEST_BYTES, Manifest, Marker};
use crate::key::{Key, Kind};
use crate::{socket, sys};

/// The marker, moved out of the environment by [`stash_marker`] before any thread exists.
static STASHED_MARKER: Mutex<Option<Option<OsString>>> = Mutex::new(None);

/// Moves the handoff marker out of the environment now, for [`take_handoff`] to use later.
///
/// `#[flip::main]` calls this before the runtime starts its threads (removing a variable is
/// only safe then), and reads the handoff itself once the runtime is built: a standby process
/// waits for the handoff with its runtime already up, so that work is off the upgrade's path.
pub(crate) fn stash_marker() {
    let mut stash = STASHED_MARKER.lock().unwrap_or_else(|p| p.into_inner());
    if stash.is_none() {
        *stash = Some(sys::env::take_var(MARKER_VAR));
    }
}

/// Whether this process was started by an upgrade (or carries a marker that claims so), without
/// reading the handoff.
pub(crate) fn has_marker() -> bool {
    match &*STASHED_MARKER.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(stashed) => stashed.is_some(),
        None => std::env::var_os(MARKER_VAR).is_some(),
    }
}

fn take_marker() -> Option<OsString> {
    let stashed = STASHED_MARKER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match stashed {
        Some(marker) => marker,
        None => sys::env::take_var(MARKER_VAR),
    }
}

/// What a process started by an upgrade received.
#[derive(Debug)]
pub(crate) struct Inherited {
    pub(crate) fds: Vec<(Key, OwnedFd)>,
    pub(crate) parent: ParentLink,
}

/// The pipes that connect a new process with the one that started it.
#[derive(Debug)]
pub(crate) struct ParentLink {
    pub(crate) pid: u32,
    /// Write end of the ready pipe; `None` once readiness was sent.
    ready: Option<OwnedFd>,
    /// Read end of the pipe the parent holds open until it exits; EOF means it is gone.
    alive: OwnedFd,
}

impl ParentLink {
    /// Tells the parent that this process is ready. Sent once; later calls do nothing.
    pub(crate) fn notify_ready(&mut self) -> io::Result<()> {
        match self.ready.take() {
            Some(fd) => nix::unistd::write(&fd, b"R")
                .map(drop)
                .map_err(io::Error::from),
            None => Ok(()),
        }
    }

    /// Whether the parent has exited, without blocking.
    pub(crate) fn parent_exited(&self) -> io::Result<bool> {
        let mut buf = [0u8; 16];
        loop {
            match nix::unistd::read(self.alive.as_fd(), &mut buf) {
                Ok(0) => return Ok(true),
                Ok(_) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The pipe that reaches EOF when the parent exits (non-blocking), for waiting on it.
    pub(crate) fn alive_fd(&self) -> &OwnedFd {
        &self.alive
    }
}

/// Reads the handoff if this process was started by an upgrade, and removes the marker from the
/// environment so no process we spawn later sees it.
///
/// Returns `Ok(None)` on a first start. Every inherited descriptor that is accepted is made
/// close-on-exec; a descriptor that does not match the manifest is left untouched and the whole
/// handoff is rejected.
pub(crate) fn take_handoff() -> Result<Option<Inherited>, HandoffError> {
    let Some(value) = take_marker() else {
        return Ok(None);
    };
    let marker = Marker::decode(&value)?;
    let not_for_us = |reason: String| HandoffError::NotForUs { reason };

    // Only a pipe with the inode the parent wrote into the marker is read: a process that
    // inherited the variable by accident has another file (or nothing) at that number.
    match sys::fd::identity_raw(marker.control_fd) {
        Ok((_, ino, kind)) if kind == libc::S_IFIFO && ino == marker.pipe_inode => {}
        Ok(_) => {
            return Err(not_for_us(format!(
                "fd {} is not the handoff pipe",
                marker.control_fd
            )));
        }
        Err(e) => {
            return Err(not_for_us(format!(
                "fd {} is not open ({e})",
                marker.control_fd
            )));
        }
    }
    let control = sys::fd::adopt(marker.control_fd).map_err(HandoffError::Io)?;
    let bytes = read_manifest(&control)?;
    drop(control);
    let manifest = Manifest::decode(&bytes)?;
    if manifest.token != marker.token {
        return Err(not_for_us(
            "the token in the manifest differs from the marker's".into(),
        ));
    }
    adopt_all(manifest).map(Some)
}

/// Reads until the manifest's final `end` line, EOF or the size limit.
///
/// There is no deadline: a standby waits here until its parent upgrades, and the parent always
/// either writes the manifest or closes its end (exiting closes it too), so this cannot hang.
fn read_manifest(fd: &OwnedFd) -> Result<Vec<u8>, HandoffError> {
    let mut bytes = Vec::with_capacity(4096);
    let mut buf = [0u8; 8192];
    loop {
        if bytes.ends_with(b"\nend\n") || bytes.len() > MAX_MANIFEST_BYTES {
            return Ok(bytes);
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(HandoffError::Io(e.into())),
        }
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(0) if bytes.is_empty() => return Err(HandoffError::Withdrawn),
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Err(HandoffError::Io(e.into())),
        }
    }
}

fn check_identity(
    fd: RawFd,
    what: &str,
    want: Option<(u64, u64)>,
    want_type: u32,
) -> Result<(), HandoffError> {
    let bad = |reason: String| HandoffError::Fd {
        fd,
        what: what.to_owned(),
        reason,
    };
    let (dev, ino, kind) = sys::fd::identity_raw(fd).map_err(|e| bad(format!("not open ({e})")))?;
    if kind != want_type {
        return Err(bad(format!("file type {kind:o}, expected {want_type:o}")));
    }
    if let Some(want) = want {
        if (dev, ino) != want {
            return Err(bad(format!(
                "device/inode {dev}/{ino}, the parent handed over {}/{}",
                want.0, want.1
            )));
        }
    }
    Ok(())
}

fn adopt_all(m: Manifest) -> Result<Inherited, HandoffError> {
    // Check every number before touching any: a mismatch leaves all of them as they were.
    check_identity(m.ready_fd, "ready pipe", None, libc::S_IFIFO)?;
    check_identity(m.alive_fd, "parent pipe", None, libc::S_IFIFO)?;
    for e in &m.entries {
        let want_type = match e.key.kind {
            Kind::File => sys::fd::identity_raw(e.fd).map(|(_, _, t)| t).unwrap_or(0),
            Kind::Listener | Kind::Packet => libc::S_IFSOCK,
        };
        check_identity(e.fd, &e.key.to_string(), Some((e.dev, e.ino)), want_type)?;
    }

    let adopt = |fd: RawFd, what: &str| {
        sys::fd::adopt(fd).map_err(|e| HandoffError::Fd {
            fd,
            what: what.to_owned(),
            reason: e.to_string(),
        })
    };
    let ready = adopt(m.ready_fd, "ready pipe")?;
    let alive = adopt(m.alive_fd, "parent pipe")?;
    let mut owned = Vec::with_capacity(m.entries.len());
    for e in &m.entries {
        owned.push((e, adopt(e.fd, &e.key.to_string())?));
    }
    sys::fd::set_nonblocking(alive.as_fd()).map_err(HandoffError::Io)?;

    let mut fds = Vec::with_capacity(owned.len());
    for (e, fd) in owned {
        let bad = |reason: String| HandoffError::Fd {
            fd: e.fd,
            what: e.key.to_string(),
            reason,
        };
        if e.key.kind != Kind::File {
            let actual = socket::inspect(&fd, e.key.kind, &e.key.network).map_err(bad)?;
            if actual != e.key.address {
                return Err(bad(format!("bound to {actual}, not {}", e.key.address)));
            }
            sys::fd::set_nonblocking(fd.as_fd()).map_err(|e| bad(e.to_string()))?;
        }
        fds.push((e.key.clone(), fd));
    }
    Ok(Inherited {
        fds,
        parent: ParentLink {
            pid: m.parent_pid,
            ready: Some(ready),
            alive,
        },
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
        let (dev, ino, _) = sys::fd::identity(fd).unwrap();
        Entry {
            key: Key::new(kind, network, address),
            fd: fd.as_fd().as_raw_fd(),
            dev,
            ino,
        }
    }

    #[test]
    fn a_socket_of_the_right_kind_is_adopted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = entry(Kind::Listener, "tcp", &addr, &l);
        let fd = l.into_raw_fd();
        let inherited = adopt_all(manifest(vec![e])).unwrap();
        assert_eq!(inherited.fds.len(), 1);
        assert_eq!(inherited.fds[0].1.as_raw_fd(), fd);
    }

    #[test]
    fn a_socket_of_another_kind_is_rejected() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap().to_string();
        let err = adopt_all(manifest(vec![entry(Kind::Listener, "tcp", &addr, &udp)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("socket type"), "{err}");
        std::mem::forget(udp); // adopt_all owned and closed it
    }

    #[test]
    fn a_listener_on_another_address_is_rejected() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = adopt_all(manifest(vec![entry(
            Kind::Listener,
            "tcp",
            "127.0.0.1:1",
            &l,
        )]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("bound to"), "{err}");
        std::mem::forget(l);
    }

    #[test]
    fn a_descriptor_with_another_identity_is_left_untouched() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut e = entry(Kind::Listener, "tcp", &addr, &l);
        e.ino += 1;
        let err = adopt_all(manifest(vec![e])).unwrap_err().to_string();
        assert!(err.contains("device/inode"), "{err}");
        // Still open and ours: it was not adopted, so not closed.
        assert!(l.local_addr().is_ok());
    }

    #[test]
    fn a_pipe_closed_before_any_manifest_means_the_standby_was_withdrawn() {
        let (r, w) = sys::fd::pipe().unwrap();
        drop(w);
        assert!(matches!(read_manifest(&r), Err(HandoffError::Withdrawn)));

        // A manifest cut short is not a withdrawal: it is returned for decoding to reject.
        let (r, w) = sys::fd::pipe().unwrap();
        nix::unistd::write(&w, b"flip-handoff 1\n").unwrap();
        drop(w);
        assert_eq!(read_manifest(&r).unwrap(), b"flip-handoff 1\n");
    }

    #[test]
    fn a_closed_descriptor_is_rejected() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut e = entry(Kind::Listener, "tcp", &addr, &l);
        e.fd = 1 << 19;
        let err = adopt_all(manifest(vec![e])).unwrap_err().to_string();
        assert!(err.contains("not open"), "{err}");
    }
}
