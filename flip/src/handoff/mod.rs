//! The handoff protocol between the predecessor (the process that runs) and its successor (the
//! new process), whole and without I/O: what travels, in which layout, and how it is encoded
//! and decoded. Each side owns its own I/O (`upgrader/successor.rs` in the predecessor,
//! `upgrader/predecessor.rs` in the successor) and does nothing else with these bytes.
//!
//! An upgrade hands over four things:
//! - the descriptors, placed by the spawn at fixed numbers: the control pipe at [`CONTROL_FD`],
//!   the ready pipe at [`READY_FD`], the parent pipe at [`ALIVE_FD`], then every socket and file
//!   from [`FIRST_ENTRY_FD`] on;
//! - the marker, in the environment variable [`MARKER_VAR`]: `1:<control fd>:<pipe inode>:<token>`.
//!   The successor checks that the control fd is a pipe with that inode before it reads anything,
//!   so a process that merely inherited the variable never touches a descriptor of its own;
//! - the manifest, a small text document the predecessor writes into the control pipe after the
//!   spawn: at once for a fresh start, at the upgrade for a standby that waits for it. It repeats
//!   the token, so a marker that leaked into some other process (which cannot have that pipe) is
//!   never mistaken for a handoff. The predecessor closing the pipe before any manifest withdraws a
//!   standby;
//! - readiness: the successor writes [`READY_BYTE`] into the ready pipe. The parent pipe
//!   reaches EOF in the successor when the predecessor exits.
//! - probation, after readiness: the predecessor writes [`DRAINED_BYTE`] into the parent pipe
//!   once its drain is over and it only waits, ready to take service back; the successor writes
//!   [`COMMIT_BYTE`] into the ready pipe when it upgrades in turn. Both are single bytes that
//!   a side which does not know them reads past.
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
//! parent saw, which the successor checks with `fstat` before adopting the descriptor. Decoding opens
//! nothing and trusts nothing it parses.

use std::os::fd::RawFd;

use crate::sys::spawn::FIRST_CHILD_FD;

mod layout;
mod manifest;
mod marker;

pub(crate) use layout::{Handing, Layout, entries_below};

use manifest::TERMINATOR;
pub(crate) use manifest::{Entry, MAX_MANIFEST_BYTES, Manifest};
pub(crate) use marker::{Marker, Token};

/// The environment variable that tells a process it was started by an upgrade.
pub const MARKER_VAR: &str = "FLIP_HANDOFF";

/// The environment variable that carries the successor's generation number (1 for the
/// first start). Beside the marker, not in it: a binary that does not know it ignores it.
pub(crate) const GENERATION_VAR: &str = "FLIP_GENERATION";

/// The environment variable that lists the older generations still running when the new
/// process was started (oldest first, its predecessor last), for
/// [`Options::max_draining`](crate::Options::max_draining): `pid:start,pid:start`, each the
/// pid and the start time (clock ticks after boot, `/proc/<pid>/stat`), so that a recycled pid
/// is never taken for a generation. Read only beside a verified marker: on its own it is
/// anyone's text.
pub(crate) const ANCESTORS_VAR: &str = "FLIP_ANCESTORS";

/// A process as [`ANCESTORS_VAR`] names it: pid and start time.
pub(crate) type ProcessName = (i32, u64);

/// [`ANCESTORS_VAR`]'s value for `list`.
pub(crate) fn encode_ancestors(list: &[ProcessName]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|(pid, start)| format!("{pid}:{start}"))
        .collect();
    items.join(",")
}

/// The processes [`ANCESTORS_VAR`]'s value names; an item that is not `pid:start` with a
/// positive pid is skipped (an older flip wrote bare pids, which cannot be told from a
/// recycled one).
pub(crate) fn decode_ancestors(value: &str) -> Vec<ProcessName> {
    value
        .split(',')
        .filter_map(|item| {
            let (pid, start) = item.split_once(':')?;
            let pid: i32 = pid.parse().ok().filter(|&p| p > 0)?;
            Some((pid, start.parse().ok()?))
        })
        .collect()
}

/// The environment variable that names the descriptor of the successor's real standard
/// error. Until it is ready, the successor's standard error is a pipe the predecessor reads:
/// it passes everything on, and keeps the last lines to report a failure with. At ready, the
/// new process puts the real one back (`dup2`). A binary that does not know the variable keeps
/// the pipe.
pub(crate) const STDERR_VAR: &str = "FLIP_STDERR_FD";

/// The environment variable that names the path upgrades start the binary from (the deploy
/// path), as the predecessor knows it: a successor started from another file (a rollback to
/// the pinned previous build) still upgrades to what is deployed there. Optional: without it a
/// successor finds the path from its argv\[0\].
pub(crate) const LAUNCH_PATH_VAR: &str = "FLIP_LAUNCH_PATH";

/// The oldest handoff version this build speaks: version 1 is the protocol of flip up to
/// commit a539953 (marker, manifest, ready byte, parent pipe), which every later build keeps.
pub(crate) const OLDEST_VERSION: u32 = 1;

/// The newest handoff version this build speaks. Version 2 adds, on the same pipes: the
/// predecessor's [`DRAINED_BYTE`] (its drain is over, it waits out a probation), the
/// successor's [`COMMIT_BYTE`], and [`LAUNCH_PATH_VAR`]. Speaking version 1 to a successor,
/// a predecessor sends none of them, and a successor told version 1 sends no commit.
pub(crate) const NEWEST_VERSION: u32 = 2;

/// The versions this build speaks, as errors name them.
pub(crate) const SPOKEN: &str = "1 to 2";

/// The version to speak with a binary that declares `declared` (the lowest and highest it
/// speaks, from its ELF note; `None` when it declares nothing, as flip up to a539953 or a
/// script: version 1): the highest both speak, or `None` when they share none.
pub(crate) fn negotiate(declared: Option<(u32, u32)>) -> Option<u32> {
    let (lowest, highest) = declared.unwrap_or((1, 1));
    let agreed = highest.min(NEWEST_VERSION);
    (lowest <= highest && agreed >= lowest.max(OLDEST_VERSION)).then_some(agreed)
}

/// The control pipe's read end in the successor: the manifest arrives here.
pub(crate) const CONTROL_FD: RawFd = FIRST_CHILD_FD;
/// The ready pipe's write end in the successor.
pub(crate) const READY_FD: RawFd = FIRST_CHILD_FD + 1;
/// The predecessor pipe's read end in the successor: EOF once the predecessor exited.
pub(crate) const ALIVE_FD: RawFd = FIRST_CHILD_FD + 2;
/// The first handed-over socket or file in the successor; the others follow in order.
pub(crate) const FIRST_ENTRY_FD: RawFd = FIRST_CHILD_FD + 3;

/// What the successor writes on the ready pipe.
pub(crate) const READY_BYTE: &[u8] = b"R";

/// What the successor writes on the ready pipe, after [`READY_BYTE`], to commit an upgrade on
/// probation: it is about to upgrade in turn, so its predecessor must not take service back
/// and may exit. A predecessor without probation never reads it.
pub(crate) const COMMIT_BYTE: u8 = b'C';

/// What the predecessor writes on the parent pipe once its drain is over and it only waits
/// out the probation: the successor may start its standby and may commit. A successor that
/// does not know it reads past it, waiting for EOF as before.
pub(crate) const DRAINED_BYTE: u8 = b'D';

/// Whether `bytes` hold a whole manifest (its final `end` line), or more than any manifest
/// may: a reader stops there and lets [`Manifest::decode`] judge.
pub(crate) fn manifest_complete(bytes: &[u8]) -> bool {
    bytes.ends_with(TERMINATOR) || bytes.len() > MAX_MANIFEST_BYTES
}

/// What one read of the ready pipe says, as the predecessor reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadyPipe {
    /// The successor is ready.
    Ready,
    /// EOF (or a broken pipe): the successor exited before it was ready.
    Closed,
    /// Nothing yet.
    Pending,
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

#[cfg(test)]
mod tests;
