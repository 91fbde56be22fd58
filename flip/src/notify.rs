//! systemd's notification protocol (`sd_notify`), both ends: sending `KEY=value` lines to the
//! socket `NOTIFY_SOCKET` names, and reading them (the supervisor listens on a socket of its
//! own with the same protocol). One datagram is one message; systemd applies its lines at once.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::sys;
use crate::sys::socket::UnixTarget;

/// The environment variable that names the notification socket.
pub const NOTIFY_SOCKET_VAR: &str = "NOTIFY_SOCKET";

/// Where notifications go: `NOTIFY_SOCKET`, a path or an abstract name (`@name`).
#[derive(Debug)]
pub(crate) struct Notifier {
    target: UnixTarget,
    socket: OwnedFd,
    /// The variable's value, for successors.
    value: std::ffi::OsString,
}

impl Notifier {
    /// A notifier for the socket `value` names (`/run/systemd/notify` or `@name`).
    pub(crate) fn new(value: &OsStr) -> io::Result<Notifier> {
        let bytes = value.as_bytes();
        let target = match bytes.first() {
            Some(b'@') => UnixTarget::Abstract(bytes[1..].to_vec()),
            Some(b'/') => UnixTarget::Path(PathBuf::from(value)),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{NOTIFY_SOCKET_VAR}={value:?}: expected an absolute path or @name"),
                ));
            }
        };
        Ok(Notifier {
            target,
            socket: sys::socket::datagram_sender()?,
            value: value.to_owned(),
        })
    }

    /// Sends `lines` (`KEY=value`, one per line) as one datagram.
    pub(crate) fn send(&self, lines: &[String]) -> io::Result<()> {
        sys::socket::send_to(&self.socket, &self.target, lines.join("\n").as_bytes())
    }

    /// Sends `lines` as one datagram with copies of `fds` (`FDSTORE=1`).
    pub(crate) fn send_with_fds(
        &self,
        lines: &[String],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        sys::socket::send_with_fds(&self.socket, &self.target, lines.join("\n").as_bytes(), fds)
    }

    /// The value of `NOTIFY_SOCKET` that leads here, for a successor's environment.
    pub(crate) fn value(&self) -> &OsStr {
        &self.value
    }
}

/// The `KEY=value` lines of a message; lines without `=` are skipped.
pub(crate) fn parse(message: &[u8]) -> Vec<(&str, &str)> {
    std::str::from_utf8(message)
        .unwrap_or("")
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect()
}

/// A `STATUS=` line: one line of text, whatever the input.
pub(crate) fn status(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    format!("STATUS={one_line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_key_value_lines() {
        assert_eq!(
            parse(b"READY=1\nMAINPID=42\nnonsense\nSTATUS=a=b"),
            vec![("READY", "1"), ("MAINPID", "42"), ("STATUS", "a=b")]
        );
        assert_eq!(status("two\nlines"), "STATUS=two lines");
    }

    #[test]
    fn a_relative_or_empty_socket_is_refused() {
        for bad in ["", "run/notify", "notify"] {
            let err = Notifier::new(OsStr::new(bad)).unwrap_err().to_string();
            assert!(err.contains(NOTIFY_SOCKET_VAR), "{err}");
        }
    }

    #[test]
    fn a_message_reaches_an_abstract_socket() {
        let name = format!("flip-notify-test-{}", std::process::id());
        let server = sys::socket::abstract_datagram(name.as_bytes()).unwrap();
        let notifier = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        notifier
            .send(&["READY=1".into(), status("serving")])
            .unwrap();
        let mut buf = [0u8; 256];
        let got = sys::fd::wait_readable(std::os::fd::AsFd::as_fd(&server))
            .and_then(|()| sys::socket::recv_with_sender(&server, &mut buf))
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..got.len], b"READY=1\nSTATUS=serving");
        // The kernel says who sent it.
        let sender = got.sender.expect("credentials on the datagram");
        assert_eq!(sender.pid, std::process::id() as i32);
        assert_eq!(sender.uid, sys::process::own_uid());
        assert_eq!(sender.uid, sys::process::own_uid());

        // A socket goes with FDSTORE=1, and arrives as a descriptor of the same socket.
        let stored = sys::socket::datagram_sender().unwrap();
        notifier
            .send_with_fds(
                &[
                    "FDSTORE=1".into(),
                    "FDNAME=listener tcp 127.0.0.1%3A1".into(),
                ],
                &[std::os::fd::AsFd::as_fd(&stored)],
            )
            .unwrap();
        let got = sys::fd::wait_readable(std::os::fd::AsFd::as_fd(&server))
            .and_then(|()| sys::socket::recv_with_sender(&server, &mut buf))
            .unwrap()
            .unwrap();
        assert_eq!(got.fds.len(), 1);
        assert_eq!(
            sys::fd::identity(&got.fds[0]).unwrap().file,
            sys::fd::identity(&stored).unwrap().file
        );
    }
}
