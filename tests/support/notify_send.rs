//! Sends one datagram to a unix socket, as any process on the host can: the tests run it as
//! another user to try to steer a supervisor through its notification socket.
//!
//! `flip-notify-send <@abstract-name|/path> <message>`; exits 0 once the datagram is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(message)) = (args.next(), args.next()) else {
        eprintln!("usage: flip-notify-send <@name|/path> <message>");
        std::process::exit(2);
    };
    let socket = UnixDatagram::unbound()?;
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(message.as_bytes(), &target)?;
        }
    }
    Ok(())
}
