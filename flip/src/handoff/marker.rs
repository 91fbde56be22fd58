//! The marker in the environment, and the one-time token it shares with the manifest.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::os::fd::RawFd;

use crate::error::HandoffError;

/// Highest descriptor number a handoff may name.
const MAX_FD: RawFd = 1 << 20;

/// A one-time secret that ties a marker to the manifest of the same spawn.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token(pub(super) [u8; 16]);

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

    pub(crate) fn to_hex(self) -> String {
        self.0.iter().fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    pub(super) fn from_hex(s: &str) -> Option<Token> {
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
    /// The handoff version spoken (see [`super::negotiate`]).
    pub(crate) version: u32,
    pub(crate) control_fd: RawFd,
    pub(crate) pipe_inode: u64,
    pub(crate) token: Token,
}

impl Marker {
    pub(crate) fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.version,
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
        let version = match version.parse::<u32>() {
            Ok(v)
                if (super::OLDEST_VERSION..=super::NEWEST_VERSION).contains(&v)
                    && version.bytes().all(|b| b.is_ascii_digit()) =>
            {
                v
            }
            _ => {
                return Err(HandoffError::Version {
                    theirs: version.chars().take(20).collect(),
                    ours: super::SPOKEN,
                });
            }
        };
        let control_fd = parse_fd(fd).ok_or_else(|| bad("fd is not a number from 3 up"))?;
        let pipe_inode = inode
            .parse::<u64>()
            .ok()
            .filter(|_| inode.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("inode is not a number"))?;
        let token = Token::from_hex(token).ok_or_else(|| bad("token is not 32 hex digits"))?;
        Ok(Marker {
            version,
            control_fd,
            pipe_inode,
            token,
        })
    }
}

/// A descriptor number from 3 (after stdin, stdout, stderr) up to [`MAX_FD`], in plain digits.
pub(super) fn parse_fd(s: &str) -> Option<RawFd> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<RawFd>()
        .ok()
        .filter(|fd| (3..MAX_FD).contains(fd))
}
