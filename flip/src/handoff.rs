//! The handoff protocol between the old process and the new one, whole: what travels, in which
//! layout, and how it is read and written. The two sides ([`child`](crate::child) in the old
//! process, [`parent`](crate::parent) in the new one) do nothing else with these bytes.
//!
//! An upgrade hands over four things:
//! - the descriptors, placed by the spawn at fixed numbers: the control pipe at [`CONTROL_FD`],
//!   the ready pipe at [`READY_FD`], the parent pipe at [`ALIVE_FD`], then every socket and file
//!   from [`FIRST_ENTRY_FD`] on;
//! - the marker, in the environment variable [`MARKER_VAR`]: `1:<control fd>:<pipe inode>:<token>`.
//!   The child checks that the control fd is a pipe with that inode before it reads anything,
//!   so a process that merely inherited the variable never touches a descriptor of its own;
//! - the manifest, a small text document the parent writes into the control pipe after the
//!   spawn: at once for a fresh start, at the upgrade for a standby that waits for it. It repeats
//!   the token, so a marker that leaked into some other process (which cannot have that pipe) is
//!   never mistaken for a handoff. The parent closing the pipe before any manifest withdraws a
//!   standby;
//! - readiness: the child writes [`READY_BYTE`] into the ready pipe. The parent pipe is never
//!   written: it reaches EOF in the child when the parent exits.
//!
//! ```text
//! flip-handoff/1
//! token 5f0c...32 hex digits
//! parent 4242
//! ready 4
//! alive 5
//! entry listener tcp 127.0.0.1:8080 6 8 123456
//! entry listener unix /run/app.sock 7 8 123457
//! end
//! ```
//!
//! Each `entry` is kind, network, address (percent-encoded), fd, and the device and inode the
//! parent saw, which the child checks with `fstat` before adopting the descriptor. Decoding opens
//! nothing and trusts nothing it parses.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::os::fd::{BorrowedFd, RawFd};

use crate::error::HandoffError;
use crate::key::{Key, Kind};
use crate::sys;
use crate::sys::fd::FileId;
use crate::sys::spawn::FIRST_CHILD_FD;

/// The environment variable that tells a process it was started by an upgrade.
pub const MARKER_VAR: &str = "FLIP_HANDOFF";

/// The control pipe's read end in the new process: the manifest arrives here.
pub(crate) const CONTROL_FD: RawFd = FIRST_CHILD_FD;
/// The ready pipe's write end in the new process.
pub(crate) const READY_FD: RawFd = FIRST_CHILD_FD + 1;
/// The parent pipe's read end in the new process: EOF once the parent exited.
pub(crate) const ALIVE_FD: RawFd = FIRST_CHILD_FD + 2;
/// The first handed-over socket or file in the new process; the others follow in order.
pub(crate) const FIRST_ENTRY_FD: RawFd = FIRST_CHILD_FD + 3;

/// What the new process writes on the ready pipe.
pub(crate) const READY_BYTE: &[u8] = b"R";

/// How a manifest ends.
const TERMINATOR: &[u8] = b"\nend\n";

const MANIFEST_HEADER: &str = "flip-handoff/1";
const MARKER_VERSION: &str = "1";

/// Upper bound of a manifest; a larger one is rejected before it is parsed.
pub(crate) const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Highest descriptor number a manifest may name.
const MAX_FD: RawFd = 1 << 20;

/// A one-time secret that ties a marker to the manifest of the same spawn.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token([u8; 16]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A fresh random token from the kernel.
    pub(crate) fn generate() -> io::Result<Token> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Token(bytes))
    }

    fn to_hex(self) -> String {
        self.0.iter().fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    fn from_hex(s: &str) -> Option<Token> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Token(bytes))
    }
}

/// The content of [`MARKER_VAR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) control_fd: RawFd,
    pub(crate) pipe_inode: u64,
    pub(crate) token: Token,
}

impl Marker {
    pub(crate) fn encode(&self) -> String {
        format!(
            "{MARKER_VERSION}:{}:{}:{}",
            self.control_fd,
            self.pipe_inode,
            self.token.to_hex()
        )
    }

    pub(crate) fn decode(value: &OsStr) -> Result<Marker, HandoffError> {
        let bad = |reason| HandoffError::Marker {
            value: value.to_string_lossy().chars().take(100).collect(),
            reason,
        };
        let text = value.to_str().ok_or_else(|| bad("not UTF-8"))?;
        let mut parts = text.split(':');
        let (Some(version), Some(fd), Some(inode), Some(token), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("expected <version>:<fd>:<inode>:<token>"));
        };
        if version != MARKER_VERSION {
            return Err(bad("unknown version (this binary speaks version 1)"));
        }
        let control_fd = parse_fd(fd).ok_or_else(|| bad("fd is not a number from 3 up"))?;
        let pipe_inode = inode
            .parse::<u64>()
            .ok()
            .filter(|_| inode.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("inode is not a number"))?;
        let token = Token::from_hex(token).ok_or_else(|| bad("token is not 32 hex digits"))?;
        Ok(Marker {
            control_fd,
            pipe_inode,
            token,
        })
    }
}

/// One handed-over descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: Key,
    pub(crate) fd: RawFd,
    /// The file the parent handed over at `fd`.
    pub(crate) file: FileId,
}

/// Everything the parent tells the child besides the descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) token: Token,
    pub(crate) parent_pid: u32,
    /// Write end of the pipe on which the child says it is ready.
    pub(crate) ready_fd: RawFd,
    /// Read end of the pipe the parent holds open until it exits.
    pub(crate) alive_fd: RawFd,
    pub(crate) entries: Vec<Entry>,
}

impl Manifest {
    pub(crate) fn encode(&self) -> String {
        let mut out = format!(
            "{MANIFEST_HEADER}\ntoken {}\nparent {}\nready {}\nalive {}\n",
            self.token.to_hex(),
            self.parent_pid,
            self.ready_fd,
            self.alive_fd
        );
        for e in &self.entries {
            let _ = writeln!(
                out,
                "entry {} {} {} {} {} {}",
                e.key.kind.as_str(),
                e.key.network,
                escape(&e.key.address),
                e.fd,
                e.file.dev,
                e.file.ino
            );
        }
        out.push_str("end\n");
        out
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
        let mut next = |want: &str| -> Result<(usize, Vec<&str>), HandoffError> {
            let (n, line) = lines.next().ok_or_else(|| HandoffError::Manifest {
                line: 0,
                reason: format!("truncated: expected {want}"),
            })?;
            Ok((n, line.split(' ').collect()))
        };
        let bad = |line: usize, reason: String| HandoffError::Manifest { line, reason };

        let (n, header) = next("the header")?;
        if header != [MANIFEST_HEADER] {
            return Err(bad(n, format!("expected {MANIFEST_HEADER:?}")));
        }
        let (n, f) = next("token")?;
        let token = match f.as_slice() {
            ["token", hex] => Token::from_hex(hex),
            _ => None,
        }
        .ok_or_else(|| bad(n, "expected `token <32 hex digits>`".into()))?;
        let (n, f) = next("parent")?;
        let parent_pid = match f.as_slice() {
            ["parent", pid] => pid.parse::<u32>().ok().filter(|&p| p > 0),
            _ => None,
        }
        .ok_or_else(|| bad(n, "expected `parent <pid>`".into()))?;
        let mut fds_seen = HashSet::new();
        let mut fd_line = |n: usize, f: &[&str], name: &str| -> Result<RawFd, HandoffError> {
            let fd = match f {
                [word, fd] if *word == name => parse_fd(fd),
                _ => None,
            }
            .ok_or_else(|| bad(n, format!("expected `{name} <fd from 3 up>`")))?;
            if !fds_seen.insert(fd) {
                return Err(bad(n, format!("fd {fd} appears twice")));
            }
            Ok(fd)
        };
        let (n, f) = next("ready")?;
        let ready_fd = fd_line(n, &f, "ready")?;
        let (n, f) = next("alive")?;
        let alive_fd = fd_line(n, &f, "alive")?;

        let mut entries = Vec::new();
        let mut keys = HashSet::new();
        loop {
            let (n, f) = next("`entry ...` or `end`")?;
            match f.as_slice() {
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
                    let key = Key::new(kind, network, &address);
                    if !keys.insert(key.clone()) {
                        return Err(bad(n, format!("{key} appears twice")));
                    }
                    entries.push(Entry {
                        key,
                        fd,
                        file: FileId { dev, ino },
                    });
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
        Ok(Manifest {
            token,
            parent_pid,
            ready_fd,
            alive_fd,
            entries,
        })
    }
}

/// Writes a whole manifest into the control pipe, which [`prepare_control`] made room in.
pub(crate) fn write_manifest(control: BorrowedFd<'_>, manifest: &[u8]) -> io::Result<()> {
    sys::fd::write_all(control, manifest)
}

/// Makes the control pipe non-blocking and large enough for the whole manifest, so writing it
/// never waits for the new process to read.
pub(crate) fn prepare_control(control: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    sys::fd::reserve_pipe(control, len)?;
    sys::fd::set_nonblocking(control)
}

/// Reads until the manifest's final `end` line, EOF or the size limit.
///
/// There is no deadline: a standby waits here until its parent upgrades, and the parent always
/// either writes the manifest or closes its end (exiting closes it too), so this cannot hang.
pub(crate) fn read_manifest(control: BorrowedFd<'_>) -> Result<Vec<u8>, HandoffError> {
    let mut bytes = Vec::with_capacity(4096);
    let mut buf = [0u8; 8192];
    loop {
        if bytes.ends_with(TERMINATOR) || bytes.len() > MAX_MANIFEST_BYTES {
            return Ok(bytes);
        }
        sys::fd::wait_readable(control).map_err(HandoffError::Io)?;
        match sys::fd::read(control, &mut buf) {
            Ok(0) if bytes.is_empty() => return Err(HandoffError::Withdrawn),
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if retry(&e) => {}
            Err(e) => return Err(HandoffError::Io(e)),
        }
    }
}

/// Tells the parent that this process is ready.
pub(crate) fn send_ready(ready: BorrowedFd<'_>) -> io::Result<()> {
    sys::fd::write_all(ready, READY_BYTE)
}

/// What one read of the ready pipe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadyPipe {
    /// The new process is ready.
    Ready,
    /// EOF (or a broken pipe): the new process exited before it was ready.
    Closed,
    /// Nothing yet.
    Pending,
}

/// Reads the ready pipe (non-blocking) once.
pub(crate) fn read_ready(ready: BorrowedFd<'_>) -> ReadyPipe {
    let mut buf = [0u8; 8];
    match sys::fd::read(ready, &mut buf) {
        Ok(0) => ReadyPipe::Closed,
        Ok(_) => ReadyPipe::Ready,
        Err(e) if retry(&e) => ReadyPipe::Pending,
        Err(_) => ReadyPipe::Closed,
    }
}

/// Whether the parent pipe says the parent exited (EOF), without blocking.
pub(crate) fn parent_exited(alive: BorrowedFd<'_>) -> io::Result<bool> {
    let mut buf = [0u8; 16];
    loop {
        match sys::fd::read(alive, &mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

/// Entry point of the cargo-fuzz target in `fuzz/` (feature `fuzzing`; not an API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub(crate) mod fuzz {
    /// Decodes `data` as a manifest and as a marker: never a panic, and whatever is accepted
    /// encodes and decodes to itself.
    pub fn decode(data: &[u8]) {
        if let Ok(m) = super::Manifest::decode(data) {
            let again = super::Manifest::decode(m.encode().as_bytes());
            assert_eq!(again.ok(), Some(m));
        }
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = super::Marker::decode(std::ffi::OsStr::new(text));
        }
    }
}

/// An address must be what the parent's registry could have produced for its network: the
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

fn parse_fd(s: &str) -> Option<RawFd> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<RawFd>()
        .ok()
        .filter(|fd| (3..MAX_FD).contains(fd))
}

/// Percent-encodes everything but printable ASCII other than `%` and space.
fn escape(s: &str) -> String {
    if s.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    if s == "%" {
        return Some(String::new());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_graphic() => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            token: Token([7; 16]),
            parent_pid: 42,
            ready_fd: 4,
            alive_fd: 5,
            entries: vec![
                Entry {
                    key: Key::new(Kind::Listener, "tcp", "127.0.0.1:8080"),
                    fd: 6,
                    file: FileId { dev: 8, ino: 99 },
                },
                Entry {
                    key: Key::new(Kind::Listener, "unix", "/tmp/a b%c\u{e9}.sock"),
                    fd: 7,
                    file: FileId { dev: 8, ino: 100 },
                },
                Entry {
                    key: Key::new(Kind::File, "file", "state"),
                    fd: 8,
                    file: FileId { dev: 1, ino: 2 },
                },
            ],
        }
    }

    #[test]
    fn manifest_round_trips() {
        let m = sample();
        let text = m.encode();
        assert!(text.contains("/tmp/a%20b%25c%C3%A9.sock"), "{text}");
        assert_eq!(Manifest::decode(text.as_bytes()).unwrap(), m);
    }

    #[test]
    fn marker_round_trips() {
        let m = Marker {
            control_fd: 3,
            pipe_inode: 12345,
            token: Token::generate().unwrap(),
        };
        assert_eq!(Marker::decode(OsStr::new(&m.encode())).unwrap(), m);
    }

    #[test]
    fn bad_markers_are_rejected() {
        for bad in [
            "",
            "1",
            "1:3",
            "1:3:7",
            "2:3:7:00000000000000000000000000000000",
            "1:2:7:00000000000000000000000000000000",
            "1:-3:7:00000000000000000000000000000000",
            "1:3:-7:00000000000000000000000000000000",
            "1:3:+7:00000000000000000000000000000000",
            "1:3:7:0000",
            "1:3:7:zz000000000000000000000000000000",
            "1:3:7:00000000000000000000000000000000:x",
            "1:99999999999:7:00000000000000000000000000000000",
        ] {
            assert!(Marker::decode(OsStr::new(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let text = sample().encode();
        for cut in 0..text.len() {
            let err = Manifest::decode(&text.as_bytes()[..cut]);
            assert!(err.is_err(), "truncated at {cut} accepted");
        }
    }

    #[test]
    fn duplicates_and_bad_fields_are_rejected() {
        let good = sample().encode();
        let cases = [
            good.replace("entry file file state 8", "entry file file state 7"),
            good.replace("ready 4", "ready 5"),
            good.replace("unix /tmp", "tcp /tmp"),
            good.replace("127.0.0.1:8080", "127.0.0.1:0"),
            good.replace("127.0.0.1:8080", "localhost:8080"),
            good.replace("state", "%"),
            good.replace("listener tcp", "socket tcp"),
            good.replace(" 6 8 99", " 2 8 99"),
            good.replace(" 6 8 99", " 6 x 99"),
            good.replace("parent 42", "parent 0"),
            good.replace("end\n", "end\nentry\n"),
            good.replace("%20", "%2z"),
            good.replace("%C3%A9", "%C3"),
            good.replace("flip-handoff/1", "flip-handoff/2"),
            format!("{good}{good}"),
        ];
        for case in cases {
            assert!(
                Manifest::decode(case.as_bytes()).is_err(),
                "accepted:\n{case}"
            );
        }
        let mut twice = sample();
        twice.entries.push(twice.entries[0].clone());
        twice.entries[3].fd = 9;
        assert!(Manifest::decode(twice.encode().as_bytes()).is_err());
    }

    #[test]
    fn huge_manifest_is_rejected_before_parsing() {
        let big = vec![b'a'; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::decode(&big),
            Err(HandoffError::Manifest { line: 0, .. })
        ));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn entry() -> impl Strategy<Value = Entry> {
            let inet = (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, port)| {
                let addr = std::net::SocketAddr::from((ip, port)).to_string();
                (Kind::Listener, "tcp".to_owned(), addr)
            });
            let unix = "[^\\x00]{1,40}".prop_map(|p| (Kind::Listener, "unix".to_owned(), p));
            let file = "[^\\x00]{1,20}".prop_map(|n| (Kind::File, "file".to_owned(), n));
            (
                prop_oneof![inet, unix, file],
                6..1000i32,
                any::<u64>(),
                any::<u64>(),
            )
                .prop_map(|((kind, network, address), fd, dev, ino)| Entry {
                    key: Key::new(kind, &network, &address),
                    fd,
                    file: FileId { dev, ino },
                })
        }

        fn manifest() -> impl Strategy<Value = Manifest> {
            (
                any::<[u8; 16]>(),
                1u32..,
                proptest::collection::vec(entry(), 0..8),
            )
                .prop_map(|(token, parent_pid, mut entries)| {
                    // Distinct keys and descriptor numbers, as a real registry has.
                    let mut keys = HashSet::new();
                    entries.retain(|e| keys.insert(e.key.clone()));
                    for (i, e) in (0..).zip(entries.iter_mut()) {
                        e.fd = 6 + i;
                    }
                    Manifest {
                        token: Token(token),
                        parent_pid,
                        ready_fd: 4,
                        alive_fd: 5,
                        entries,
                    }
                })
        }

        proptest! {
            #[test]
            fn any_bytes_are_an_error_or_a_manifest_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = Manifest::decode(&bytes);
            }

            #[test]
            fn any_marker_text_is_an_error_or_a_marker(text in ".{0,80}") {
                let _ = Marker::decode(OsStr::new(&text));
            }

            #[test]
            fn manifests_round_trip(m in manifest()) {
                prop_assert_eq!(Manifest::decode(m.encode().as_bytes()).unwrap(), m);
            }

            #[test]
            fn a_mutated_manifest_decodes_consistently_or_fails(
                m in manifest(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                how in 0..3u8,
            ) {
                let mut bytes = m.encode().into_bytes();
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => { bytes.remove(i); }
                }
                if let Ok(decoded) = Manifest::decode(&bytes) {
                    // Whatever is accepted is well formed: it encodes and decodes to itself.
                    prop_assert_eq!(Manifest::decode(decoded.encode().as_bytes()).unwrap(), decoded);
                }
            }
        }
    }
}
