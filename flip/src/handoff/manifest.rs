//! The manifest: what the predecessor tells the successor about the descriptors it placed.

use std::os::fd::RawFd;

use super::marker::{Token, parse_fd};
use crate::error::HandoffError;
use crate::key::{Key, Kind};
use crate::sys::fd::FileId;

const MANIFEST_HEADER: &str = "flip-handoff/1";

/// How a manifest ends.
pub(super) const TERMINATOR: &[u8] = b"\nend\n";

/// Upper bound of a manifest; a larger one is rejected before it is parsed.
pub(crate) const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// One handed-over descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: Key,
    pub(crate) fd: RawFd,
    /// The file the predecessor handed over at `fd`.
    pub(crate) file: FileId,
}

/// Everything the predecessor tells the successor besides the descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) token: Token,
    pub(crate) parent_pid: u32,
    /// Write end of the pipe on which the successor says it is ready.
    pub(crate) ready_fd: RawFd,
    /// Read end of the pipe the predecessor holds open until it exits.
    pub(crate) alive_fd: RawFd,
    pub(crate) entries: Vec<Entry>,
}

impl Manifest {
    pub(crate) fn encode(&self) -> String {
        let mut out = crate::percent::Lines::new(MANIFEST_HEADER);
        out.line(format_args!("token {}", self.token.to_hex()))
            .line(format_args!("parent {}", self.parent_pid))
            .line(format_args!("ready {}", self.ready_fd))
            .line(format_args!("alive {}", self.alive_fd));
        for e in &self.entries {
            out.line(format_args!(
                "entry {} {} {} {} {} {}",
                e.key.kind.as_str(),
                e.key.network,
                escape(&e.key.address),
                e.fd,
                e.file.dev,
                e.file.ino
            ));
        }
        out.finish()
    }

    /// Parses and checks a manifest: structure, numbers, kinds, networks, and that no descriptor
    /// number or key appears twice.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Manifest, HandoffError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(HandoffError::Manifest {
                line: 0,
                reason: format!("{} bytes, more than {MAX_MANIFEST_BYTES}", bytes.len()),
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| HandoffError::Manifest {
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            reason: "not UTF-8".into(),
        })?;
        let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
        let mut next = |want: &str| -> Result<(usize, Fields<'_>), HandoffError> {
            let (n, line) = lines.next().ok_or_else(|| HandoffError::Manifest {
                line: 0,
                reason: format!("truncated: expected {want}"),
            })?;
            Ok((n, Fields::split(line)))
        };
        let bad = |line: usize, reason: String| HandoffError::Manifest { line, reason };

        let (n, header) = next("the header")?;
        if header.get() != [MANIFEST_HEADER] {
            return Err(bad(n, format!("expected {MANIFEST_HEADER:?}")));
        }
        let (n, f) = next("token")?;
        let token = match f.get() {
            ["token", hex] => Token::from_hex(hex),
            _ => None,
        }
        .ok_or_else(|| bad(n, "expected `token <32 hex digits>`".into()))?;
        let (n, f) = next("parent")?;
        let parent_pid = match f.get() {
            ["parent", pid] => pid.parse::<u32>().ok().filter(|&p| p > 0),
            _ => None,
        }
        .ok_or_else(|| bad(n, "expected `parent <pid>`".into()))?;
        // Every descriptor number with its line, checked for repeats once all are read.
        let mut fds_seen: Vec<(RawFd, usize)> = Vec::new();
        let mut fd_line = |n: usize, f: &[&str], name: &str| -> Result<RawFd, HandoffError> {
            let fd = match f {
                [word, fd] if *word == name => parse_fd(fd),
                _ => None,
            }
            .ok_or_else(|| bad(n, format!("expected `{name} <fd from 3 up>`")))?;
            fds_seen.push((fd, n));
            Ok(fd)
        };
        let (n, f) = next("ready")?;
        let ready_fd = fd_line(n, f.get(), "ready")?;
        let (n, f) = next("alive")?;
        let alive_fd = fd_line(n, f.get(), "alive")?;

        let mut entries = Vec::new();
        let mut lines_of_entries = Vec::new();
        loop {
            let (n, f) = next("`entry ...` or `end`")?;
            match f.get() {
                ["end"] => break,
                ["entry", kind, network, address, fd, dev, ino] => {
                    let kind = Kind::parse(kind)
                        .ok_or_else(|| bad(n, format!("unknown kind {kind:?}")))?;
                    if !kind.accepts(network) {
                        return Err(bad(n, format!("network {network:?} is not a {kind:?}")));
                    }
                    let address = unescape(address)
                        .ok_or_else(|| bad(n, "address is not percent-encoded UTF-8".into()))?;
                    check_address(network, &address).map_err(|reason| bad(n, reason))?;
                    let fd = fd_line(n, &["fd", fd], "fd")?;
                    let (Ok(dev), Ok(ino)) = (dev.parse(), ino.parse()) else {
                        return Err(bad(n, "device and inode must be numbers".into()));
                    };
                    entries.push(Entry {
                        key: Key {
                            kind,
                            network: (*network).to_owned(),
                            address,
                        },
                        fd,
                        file: FileId { dev, ino },
                    });
                    lines_of_entries.push(n);
                }
                _ => {
                    return Err(bad(
                        n,
                        "expected `entry <kind> <network> <address> <fd> <dev> <ino>` or `end`"
                            .into(),
                    ));
                }
            }
        }
        match lines.next() {
            Some((_, "")) if lines.next().is_none() => {}
            Some((n, _)) => return Err(bad(n, "unexpected text after `end`".into())),
            None => return Err(bad(0, "`end` must be followed by a newline".into())),
        }
        if let Some((fd, n)) = first_repeat(fds_seen) {
            return Err(bad(n, format!("fd {fd} appears twice")));
        }
        let keys = entries
            .iter()
            .zip(lines_of_entries)
            .map(|(e, n)| (&e.key, n));
        if let Some((key, n)) = first_repeat(keys.collect()) {
            return Err(bad(n, format!("{key} appears twice")));
        }
        Ok(Manifest {
            token,
            parent_pid,
            ready_fd,
            alive_fd,
            entries,
        })
    }
}

/// The space-separated fields of a line, without allocating: up to [`Fields::MAX`] of them; a
/// line with more has one field too many, which no pattern of the format matches.
struct Fields<'a> {
    parts: [&'a str; Fields::MAX + 1],
    len: usize,
}

impl<'a> Fields<'a> {
    /// The most fields a line of the format has (an `entry`).
    const MAX: usize = 7;

    fn split(line: &'a str) -> Fields<'a> {
        let mut parts = [""; Fields::MAX + 1];
        let mut len = 0;
        for (slot, part) in parts.iter_mut().zip(line.split(' ')) {
            *slot = part;
            len += 1;
        }
        Fields { parts, len }
    }

    fn get(&self) -> &[&'a str] {
        &self.parts[..self.len]
    }
}

/// The value that appears twice, with the line of its second appearance (the earliest such
/// line), if any: sorting instead of hashing, since a manifest has no repeat but may list
/// thousands of entries.
fn first_repeat<T: Ord + Copy>(mut seen: Vec<(T, usize)>) -> Option<(T, usize)> {
    seen.sort_unstable();
    seen.windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[1])
        .min_by_key(|&(_, line)| line)
}

/// An address must be what the predecessor's registry could have produced for its network: the
/// canonical form of an IP socket address, or a non-empty path or name.
fn check_address(network: &str, address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("empty address".into());
    }
    if network.starts_with("tcp") || network.starts_with("udp") {
        match address.parse::<std::net::SocketAddr>() {
            Ok(a) if a.to_string() == address && a.port() != 0 => {}
            _ => {
                return Err(format!(
                    "{address:?} is not a bound IP address for {network}"
                ));
            }
        }
    }
    Ok(())
}

/// Percent-encodes everything but printable ASCII other than `%` (space included); the empty
/// string is `%`, so that every field has a word.
fn escape(s: &str) -> String {
    if s.is_empty() {
        return "%".to_owned();
    }
    crate::percent::encode(s, |c| !(c.is_ascii_graphic() && c != '%'))
}

fn unescape(s: &str) -> Option<String> {
    if s == "%" {
        return Some(String::new());
    }
    crate::percent::decode(s, |b| b.is_ascii_graphic())
}
