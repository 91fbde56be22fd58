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

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use crate::error::HandoffError;
use crate::sys;
use crate::sys::spawn::FIRST_CHILD_FD;

mod manifest;
mod marker;

use manifest::TERMINATOR;
pub(crate) use manifest::{Entry, MAX_MANIFEST_BYTES, Manifest};
pub(crate) use marker::{Marker, Token};

/// The environment variable that tells a process it was started by an upgrade.
pub const MARKER_VAR: &str = "FLIP_HANDOFF";

/// The environment variable that carries the new process's generation number (1 for the
/// first start). Beside the marker, not in it: a binary that does not know it ignores it.
pub(crate) const GENERATION_VAR: &str = "FLIP_GENERATION";

/// The environment variable that lists the older generations still running when the new
/// process was started (oldest first, its parent last), for
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

/// The environment variable that names the descriptor of the new process's real standard
/// error. Until it is ready, the new process's standard error is a pipe the old process reads:
/// it passes everything on, and keeps the last lines to report a failure with. At ready, the
/// new process puts the real one back (`dup2`). A binary that does not know the variable keeps
/// the pipe.
pub(crate) const STDERR_VAR: &str = "FLIP_STDERR_FD";

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

#[cfg(test)]
mod tests;
