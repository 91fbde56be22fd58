//! Binding sockets and checking what an inherited descriptor really is.
//!
//! Every socket flip creates is close-on-exec and non-blocking from the first moment
//! (`SOCK_CLOEXEC | SOCK_NONBLOCK`), so no other child can inherit it and tokio accepts it as is.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrLike,
    SockaddrStorage, UnixAddr, bind, getsockname, getsockopt, listen, setsockopt, socket, sockopt,
};

use crate::error::Error;
use crate::key::Kind;

fn address_error(network: &str, address: &str, reason: impl Into<String>) -> Error {
    Error::Address {
        network: network.to_owned(),
        address: address.to_owned(),
        reason: reason.into(),
    }
}

/// Turns `host:port` into one socket address fitting the network (`tcp4` wants IPv4, `tcp6`
/// IPv6, `tcp` either, preferring IPv4 when a name resolves to both). An empty host means every
/// interface: `0.0.0.0` for `tcp`/`tcp4`, `[::]` for `tcp6`.
pub(crate) fn resolve_inet(network: &str, address: &str) -> Result<SocketAddr, Error> {
    let want_v4 = network.ends_with('4');
    let want_v6 = network.ends_with('6');
    let candidates: Vec<SocketAddr> = if let Ok(addr) = address.parse::<SocketAddr>() {
        vec![addr]
    } else if let Some(port) = address.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| address_error(network, address, "the port is not a number 0-65535"))?;
        let host = if want_v6 { "[::]" } else { "0.0.0.0" };
        vec![
            format!("{host}:{port}")
                .parse()
                .map_err(|_| address_error(network, address, "cannot build a wildcard address"))?,
        ]
    } else {
        if !address.contains(':') {
            return Err(address_error(network, address, "expected host:port"));
        }
        address
            .to_socket_addrs()
            .map_err(|e| address_error(network, address, format!("cannot resolve: {e}")))?
            .collect()
    };
    let fits = |a: &SocketAddr| (!want_v4 || a.is_ipv4()) && (!want_v6 || a.is_ipv6());
    candidates
        .iter()
        .find(|a| fits(a) && (want_v6 || a.is_ipv4()))
        .or_else(|| candidates.iter().find(|a| fits(a)))
        .copied()
        .ok_or_else(|| address_error(network, address, format!("no address fits {network}")))
}

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

/// Checks that an inherited descriptor is the socket a manifest entry says it is, and returns
/// the address it is really bound to (canonical form), or why it is not.
pub(crate) fn inspect(fd: impl AsFd, kind: Kind, network: &str) -> Result<String, String> {
    let fd = fd.as_fd();
    let ty = getsockopt(&fd, sockopt::SockType).map_err(|e| format!("not a socket ({e})"))?;
    let want_ty = match kind {
        Kind::Listener => SockType::Stream,
        Kind::Packet => SockType::Datagram,
        Kind::File => return Err("a file entry cannot be inspected as a socket".into()),
    };
    if ty != want_ty {
        return Err(format!("socket type is {ty:?}, expected {want_ty:?}"));
    }
    if kind == Kind::Listener && !getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false) {
        return Err("the socket is not listening".into());
    }
    let sa: SockaddrStorage =
        getsockname(fd.as_raw_fd()).map_err(|e| format!("getsockname failed ({e})"))?;
    let family = sa.family();
    match network {
        "unix" | "unixgram" => {
            let path = sa
                .as_unix_addr()
                .and_then(|u| u.path())
                .ok_or_else(|| format!("expected a unix socket with a path, found {family:?}"))?;
            path.to_str()
                .map(str::to_owned)
                .ok_or_else(|| "socket path is not UTF-8".into())
        }
        _ => {
            let addr =
                local_inet(fd).map_err(|_| format!("expected an IP socket, found {family:?}"))?;
            let fits = match network.chars().last() {
                Some('4') => addr.is_ipv4(),
                Some('6') => addr.is_ipv6(),
                _ => true,
            };
            if !fits {
                return Err(format!("address {addr} does not fit {network}"));
            }
            Ok(addr.to_string())
        }
    }
}
