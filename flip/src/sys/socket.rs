//! Sockets: binding and listening, and checking what an inherited descriptor really is.
//!
//! Every socket flip creates is close-on-exec and non-blocking from the first moment
//! (`SOCK_CLOEXEC | SOCK_NONBLOCK`), so no other child can inherit it and tokio accepts it as is.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrLike,
    SockaddrStorage, UnixAddr, bind, getsockname, getsockopt, listen, setsockopt, socket, sockopt,
};

fn inet_socket(addr: &SocketAddr, ty: SockType, v6only: bool) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if ty == SockType::Stream {
        // Without SO_REUSEADDR a restart after heavy traffic fails with EADDRINUSE while old
        // connections sit in TIME_WAIT.
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(*a))?,
        SocketAddr::V6(a) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &v6only)?;
            bind(fd.as_raw_fd(), &SockaddrIn6::from(*a))?
        }
    }
    Ok(fd)
}

fn backlog(n: i32) -> io::Result<Backlog> {
    Backlog::new(n).map_err(io::Error::from)
}

/// A listening TCP socket. `tcp6` sockets are IPv6-only; `tcp` on `[::]` takes both families.
pub(crate) fn tcp_listener(network: &str, addr: &SocketAddr, queue: i32) -> io::Result<OwnedFd> {
    let fd = inet_socket(addr, SockType::Stream, network == "tcp6")?;
    listen(&fd, backlog(queue)?)?;
    Ok(fd)
}

/// A bound UDP socket.
pub(crate) fn udp_socket(network: &str, addr: &SocketAddr) -> io::Result<OwnedFd> {
    inet_socket(addr, SockType::Datagram, network == "udp6")
}

/// Binds a unix socket and gives its path `mode` before the socket listens, so nobody can
/// connect while the path still has the umask's mode.
fn unix_socket(path: &Path, ty: SockType, mode: u32) -> io::Result<OwnedFd> {
    use std::os::unix::fs::PermissionsExt;
    let fd = socket(
        AddressFamily::Unix,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(fd)
}

/// A listening unix stream socket at `path`.
pub(crate) fn unix_listener(path: &Path, queue: i32, mode: u32) -> io::Result<OwnedFd> {
    let fd = unix_socket(path, SockType::Stream, mode)?;
    listen(&fd, backlog(queue)?)?;
    Ok(fd)
}

/// A bound unix datagram socket at `path`.
pub(crate) fn unix_datagram(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    unix_socket(path, SockType::Datagram, mode)
}

/// The local address of an IPv4 or IPv6 socket.
pub(crate) fn local_inet(fd: impl AsFd) -> io::Result<SocketAddr> {
    let sa: SockaddrStorage = getsockname(fd.as_fd().as_raw_fd())?;
    if let Some(v4) = sa.as_sockaddr_in() {
        Ok(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else if let Some(v6) = sa.as_sockaddr_in6() {
        Ok(SocketAddr::V6(SocketAddrV6::from(*v6)))
    } else {
        Err(io::Error::other("not an IPv4 or IPv6 socket"))
    }
}

/// The type of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketType {
    /// `SOCK_STREAM`
    Stream,
    /// `SOCK_DGRAM`
    Datagram,
    /// Anything else (`SOCK_SEQPACKET`, raw, ...).
    Other,
}

/// The address a socket is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LocalAddr {
    /// An IPv4 or IPv6 address.
    Inet(SocketAddr),
    /// A unix socket path; `None` when the path is not UTF-8.
    UnixPath(Option<String>),
    /// Another family (or an unnamed or abstract unix socket), as its name.
    Other(String),
}

/// What a descriptor is, as a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketInfo {
    pub(crate) socket_type: SocketType,
    /// Whether `listen` was called on it.
    pub(crate) listening: bool,
    pub(crate) local: LocalAddr,
}

/// Describes a socket; fails (`ENOTSOCK`) when the descriptor is not one.
pub(crate) fn inspect(fd: impl AsFd) -> io::Result<SocketInfo> {
    let fd = fd.as_fd();
    let socket_type = match getsockopt(&fd, sockopt::SockType)? {
        SockType::Stream => SocketType::Stream,
        SockType::Datagram => SocketType::Datagram,
        _ => SocketType::Other,
    };
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
    let sa: SockaddrStorage = getsockname(fd.as_raw_fd())?;
    let local = if let Some(v4) = sa.as_sockaddr_in() {
        LocalAddr::Inet(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else if let Some(v6) = sa.as_sockaddr_in6() {
        LocalAddr::Inet(SocketAddr::V6(SocketAddrV6::from(*v6)))
    } else if let Some(path) = sa.as_unix_addr().and_then(|u| u.path()) {
        LocalAddr::UnixPath(path.to_str().map(str::to_owned))
    } else {
        LocalAddr::Other(format!("{:?}", sa.family()))
    };
    Ok(SocketInfo {
        socket_type,
        listening,
        local,
    })
}

/// An unbound, close-on-exec unix datagram socket, for sending to others.
pub(crate) fn datagram_sender() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// A unix datagram socket bound to the abstract name `name` (Linux), close-on-exec: nothing
/// on the file system to clean up, and gone with the last descriptor.
///
/// Abstract names have no permissions: any process of the network namespace may send here.
/// The kernel attaches each sender's credentials to its datagrams (`SO_PASSCRED`, set before
/// the bind, so that no datagram arrives without them); read them with [`recv_with_sender`].
pub(crate) fn abstract_datagram(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::PassCred, &true)?;
    bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name)?)?;
    Ok(fd)
}

/// Who sent a datagram, as the kernel saw it (`SCM_CREDENTIALS`): only a process with
/// `CAP_SYS_ADMIN` (pid) or `CAP_SETUID` (uid) can make these claim someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sender {
    /// The sender's pid in the receiver's pid namespace; 0 when it is not visible there.
    pub(crate) pid: i32,
    pub(crate) uid: u32,
}

/// One datagram received by [`recv_with_sender`].
#[derive(Debug)]
pub(crate) struct Received {
    /// How many bytes of the buffer it filled.
    pub(crate) len: usize,
    /// Who sent it, by the kernel's word; `None` without credentials.
    pub(crate) sender: Option<Sender>,
    /// The descriptors it carried (`SCM_RIGHTS`), close-on-exec.
    pub(crate) fds: Vec<OwnedFd>,
}

/// Most descriptors one datagram may carry here; the kernel's own limit is 253.
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 16;

/// Receives one datagram without blocking, with its sender's credentials (see
/// [`abstract_datagram`]) and the descriptors it carries: `None` when none is queued. The
/// caller owns the descriptors: whatever it does not keep is closed when dropped.
pub(crate) fn recv_with_sender(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(UnixCredentials, [RawFd; MAX_FDS_PER_MESSAGE]);
    let msg = match recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(msg) => msg,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut sender = None;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        match cmsg {
            ControlMessageOwned::ScmCredentials(creds) => {
                sender = Some(Sender {
                    pid: creds.pid(),
                    uid: creds.uid(),
                })
            }
            ControlMessageOwned::ScmRights(raw) => {
                for r in raw {
                    // SAFETY: the kernel just installed `r` in this process for this message;
                    // nothing else refers to it, so it is ours to own and close.
                    fds.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) });
                }
            }
            _ => {}
        }
    }
    Ok(Some(Received {
        len: msg.bytes,
        sender,
        fds,
    }))
}

/// Where a datagram goes: a socket path, or an abstract name (written `@name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnixTarget {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

/// Sends one datagram to `target` from `fd` (see [`datagram_sender`]).
pub(crate) fn send_to(fd: &OwnedFd, target: &UnixTarget, bytes: &[u8]) -> io::Result<()> {
    send_with_fds(fd, target, bytes, &[])
}

/// Sends one datagram to `target` from `fd`, with copies of `fds` (`SCM_RIGHTS`).
pub(crate) fn send_with_fds(
    fd: &OwnedFd,
    target: &UnixTarget,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let addr = match target {
        UnixTarget::Path(path) => UnixAddr::new(path.as_path())?,
        UnixTarget::Abstract(name) => UnixAddr::new_abstract(name)?,
    };
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [std::io::IoSlice::new(bytes)];
    sendmsg(
        fd.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        Some(&addr),
    )?;
    Ok(())
}

/// Makes a listening TCP socket drop every new connection attempt from now on: a classic BPF
/// filter that drops a segment with SYN set and ACK clear, and keeps every other one. A
/// client's SYN goes unanswered (once the last copy of the socket is closed, its retry is
/// refused), while a handshake already under way completes (its final ACK passes) and joins the
/// accept queue, to be accepted with the connections already there. The filter belongs to the
/// socket, so it holds in every process that has a copy. For a TCP socket the filter sees the
/// segment from its TCP header on: the flags are byte 13.
pub(crate) fn drop_new_connections(fd: impl AsFd) -> io::Result<()> {
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut program = [
        insn(LD_B_ABS, 0, 0, 13),
        insn(AND_K, 0, 0, SYN | ACK),
        // SYN without ACK: skip to the drop.
        insn(JEQ_K, 1, 0, SYN),
        insn(RET_K, 0, 0, u32::MAX),
        insn(RET_K, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sock_fprog>())
        .map_err(|_| io::Error::other("sock_fprog does not fit a socklen_t"))?;
    // SAFETY: `fprog` points to `program`, five valid instructions that outlive the call, and
    // `len` is its exact size; the kernel checks and copies the program during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast::<libc::c_void>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many connections wait in a listening TCP socket's accept queue (`tcpi_unacked` of
/// `TCP_INFO`, which a listener fills with its queue's length).
pub(crate) fn accept_queue_len(fd: impl AsFd) -> io::Result<u32> {
    // SAFETY: tcp_info is plain old data: all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>())
        .map_err(|_| io::Error::other("tcp_info does not fit a socklen_t"))?;
    // SAFETY: `info` is a writable tcp_info of `len` bytes; the kernel writes at most `len`
    // bytes and stores how many in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_that_drops_new_connections_still_gives_out_the_queued_ones() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let fd = tcp_listener("tcp", &addr, 16).unwrap();
        let addr = local_inet(&fd).unwrap();
        let queued = std::net::TcpStream::connect(addr).unwrap();
        drop_new_connections(&fd).unwrap();
        assert_eq!(accept_queue_len(&fd).unwrap(), 1);
        // A new attempt's SYN is dropped: no connection within the timeout (the kernel would
        // retry after a second).
        let attempt =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300));
        assert!(attempt.is_err(), "a new connection got through");
        assert_eq!(
            accept_queue_len(&fd).unwrap(),
            1,
            "the queued one is still there"
        );
        // And the queued one is accepted and talks.
        let listener = std::net::TcpListener::from(fd);
        let (mut server_side, _) = listener.accept().unwrap();
        use std::io::{Read, Write};
        let mut client = queued;
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        server_side.read_exact(&mut buf).unwrap();
        assert_eq!(
            &buf, b"hi",
            "data of an established connection passes the filter"
        );
    }
}
