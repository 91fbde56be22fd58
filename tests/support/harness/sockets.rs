//! Who serves a socket: its inode, the process holding it, and the pid a server answers with.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::time::Duration;

use super::*;

/// Inode of the listening unix socket bound at `path`, from /proc/net/unix.
pub fn unix_socket_inode(path: &Path) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let path = path.to_str()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Flags 00010000 is __SO_ACCEPTCON: the listener, not a connection it accepted (those
        // show the same path).
        (f.len() >= 8 && f[7] == path && f[3] == "00010000")
            .then(|| f[6].parse().ok())
            .flatten()
    })
}

/// Inode of the server side of the TCP connection from `client_port` to `server_port` on
/// loopback, from /proc/net/tcp: which process holds it tells who accepted the connection.
pub fn tcp_server_socket_inode(server_port: u16, client_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || port_of(f[1])? != server_port || port_of(f[2])? != client_port {
            return None;
        }
        f[9].parse().ok().filter(|&inode| inode != 0)
    })
}

/// Whether process `pid` holds the socket with this inode.
pub fn holds_socket(pid: u32, inode: u64) -> bool {
    let needle = format!("socket:[{inode}]");
    fd_links(pid).iter().any(|(_, t)| *t == needle)
}

/// Connects and reads the `pid N` greeting of a test server.
pub fn tcp_pid(addr: &str) -> Option<u32> {
    let addr: SocketAddr = addr.parse().ok()?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    read_pid(s)
}

pub fn unix_pid(path: &Path) -> Option<u32> {
    read_pid(UnixStream::connect(path).ok()?)
}

fn read_pid(s: impl Read) -> Option<u32> {
    let mut line = String::new();
    let mut r = BufReader::new(s);
    r.read_line(&mut line).ok()?;
    parse_pid(line.as_bytes())
}

/// The pid in a test server's `pid <pid>` answer.
fn parse_pid(answer: &[u8]) -> Option<u32> {
    std::str::from_utf8(answer)
        .ok()?
        .trim()
        .strip_prefix("pid ")?
        .parse()
        .ok()
}

pub fn udp_pid(addr: &str) -> Option<u32> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.send_to(b"?", addr).ok()?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    parse_pid(&buf[..n])
}

pub fn unixgram_pid(server: &Path, me: &Path) -> Option<u32> {
    let _ = std::fs::remove_file(me);
    let s = UnixDatagram::bind(me).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.send_to(b"?", server).ok()?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).ok()?;
    parse_pid(&buf[..n])
}

/// Sends `GET /sleep/<ms>` (the examples answer it after `ms`) to `addr`, leaving the
/// connection open for [`whole_answer`].
pub fn slow_request(addr: &str, ms: u64) -> TcpStream {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).expect("connect for a slow request");
    s.write_all(format!("GET /sleep/{ms} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .expect("send a slow request");
    s
}

/// Waits until process `pid` holds the server side of `client`'s connection to `addr`: the
/// request is in that process's hands.
pub fn wait_accepted_by(addr: &str, client: &TcpStream, pid: u32) {
    let server_port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("an address with a port");
    let client_port = client.local_addr().expect("a local address").port();
    wait_for(
        &format!("pid {pid} to accept the request"),
        DEADLINE,
        || tcp_server_socket_inode(server_port, client_port).filter(|&i| holds_socket(pid, i)),
    );
}

/// Everything the server sends on `s` until it closes it (at most [`DEADLINE`]).
pub fn whole_answer(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(DEADLINE)).expect("a read timeout");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}
