//! The successor's link to the old one: receiving the handoff, checking every descriptor
//! before adopting any, telling the predecessor we are ready, and learning when it has exited.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::adopt::{Survey, adopt_all};
use crate::error::HandoffError;
use crate::handoff::{
    self, ANCESTORS_VAR, COMMIT_BYTE, DRAINED_BYTE, GENERATION_VAR, LAUNCH_PATH_VAR, MARKER_VAR,
    Manifest, Marker, READY_BYTE, STDERR_VAR,
};
use crate::registry::Registered;
use crate::sys;

/// The variables that travel beside the handoff (see [`handoff`]), moved out of the
/// environment together.
const HANDOFF_VARS: [&str; 5] = [
    MARKER_VAR,
    GENERATION_VAR,
    STDERR_VAR,
    ANCESTORS_VAR,
    LAUNCH_PATH_VAR,
];

/// What [`stash_marker`] moved out of the environment, by name; `None` before it ran.
type Stash = Vec<(&'static str, Option<OsString>)>;
static STASHED: Mutex<Option<Stash>> = Mutex::new(None);

/// Moves the handoff marker, and the variables beside it, out of the environment now, for
/// [`take_handoff`] to use later.
///
/// `#[flip::main]` calls this before the runtime starts its threads (removing a variable is
/// only safe then), and reads the handoff itself once the runtime is built: a standby process
/// waits for the handoff with its runtime already up, so that work is off the upgrade's path.
pub(crate) fn stash_marker() {
    let mut stash = crate::sync::lock(&STASHED);
    if stash.is_none() {
        *stash = Some(
            HANDOFF_VARS
                .iter()
                .map(|&name| (name, sys::env::take_var(name)))
                .collect(),
        );
    }
}

/// Takes one of [`HANDOFF_VARS`]: from the stash, or from the environment when nothing was
/// stashed (a program that builds its `Upgrader` without `#[flip::main]`).
fn take_stashed(name: &'static str) -> Option<OsString> {
    match crate::sync::lock(&STASHED).as_mut() {
        Some(stash) => stash
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, value)| value.take()),
        None => sys::env::take_var(name),
    }
}

/// The older generations the process that started this one listed, oldest first, as pid and
/// start time. Taken in every case (the variable must not reach the server's children), but
/// only a caller that verified the handoff may use it.
pub(crate) fn take_ancestors() -> Vec<handoff::ProcessName> {
    take_stashed(ANCESTORS_VAR)
        .and_then(|v| v.into_string().ok())
        .map(|v| handoff::decode_ancestors(&v))
        .unwrap_or_default()
}

/// The real standard error the predecessor passed (see [`handoff::STDERR_VAR`]), adopted.
fn take_real_stderr(taken: &[RawFd]) -> Option<OwnedFd> {
    let value = take_stashed(STDERR_VAR)?;
    let raw: RawFd = value.to_str()?.parse().ok()?;
    if raw < 3 || taken.contains(&raw) {
        return None;
    }
    sys::fd::adopt(raw).ok()
}

/// One of [`HANDOFF_VARS`], left where it is: in the stash, or in the environment when
/// nothing was stashed.
fn peek_stashed(name: &'static str) -> Option<OsString> {
    match crate::sync::lock(&STASHED).as_ref() {
        Some(stash) => stash
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, value)| value.clone()),
        None => std::env::var_os(name),
    }
}

/// The descriptor number of the real standard error, without taking it: the handed-over entries
/// sit below it.
fn peek_real_stderr_fd() -> Option<RawFd> {
    peek_stashed(STDERR_VAR)?.to_str()?.parse().ok()
}

/// The generation number the process that started this one gave it, if any.
/// The deploy path the process that started this one upgrades to (see
/// [`handoff::LAUNCH_PATH_VAR`]): taken in every case, used only beside a verified handoff.
pub(crate) fn take_launch_path() -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(take_stashed(LAUNCH_PATH_VAR)?);
    path.is_absolute().then_some(path)
}

pub(crate) fn take_generation() -> Option<u64> {
    take_stashed(GENERATION_VAR)?.to_str()?.parse().ok()
}

/// Whether this process was started by an upgrade (or carries a marker that claims so), without
/// reading the handoff.
pub(crate) fn has_marker() -> bool {
    peek_stashed(MARKER_VAR).is_some()
}

fn take_marker() -> Option<OsString> {
    take_stashed(MARKER_VAR)
}

/// What a process started by an upgrade received.
#[derive(Debug)]
pub(crate) struct Inherited {
    pub(crate) fds: Vec<Registered>,
    pub(crate) parent: PredecessorLink,
}

/// The pipes that connect a successor with the one that started it.
#[derive(Debug)]
pub(crate) struct PredecessorLink {
    pub(crate) pid: u32,
    /// Write end of the ready pipe: readiness goes there, then (on probation) the commit.
    ready: Option<OwnedFd>,
    /// Whether readiness was sent.
    said_ready: bool,
    /// The handoff version the predecessor speaks with this process.
    version: u32,
    /// Read end of the pipe the predecessor holds open until it exits; EOF means it is gone.
    alive: OwnedFd,
    /// Whether the predecessor said its drain is over (it waits out its probation).
    drained: bool,
    /// The real standard error, put back in place at ready; until then the predecessor relays ours.
    real_stderr: Option<OwnedFd>,
}

/// Where the predecessor stands, as its pipes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PredecessorState {
    /// It drains what it accepted.
    Draining,
    /// Its drain is over; it waits out the probation, ready to take service back.
    OnProbation,
    /// It exited.
    Exited,
}

impl PredecessorLink {
    /// Tells the predecessor that this process is ready. Sent once; later calls do nothing.
    pub(crate) fn notify_ready(&mut self) -> io::Result<()> {
        if let Some(real) = self.real_stderr.take()
            && let Err(e) = sys::fd::set_stderr(real.as_fd())
        {
            tracing::warn!(error = %e, "could not put the real stderr back; the predecessor relays it");
        }
        if self.said_ready {
            return Ok(());
        }
        self.said_ready = true;
        match &self.ready {
            Some(fd) => sys::fd::write_all(fd.as_fd(), READY_BYTE),
            None => Ok(()),
        }
    }

    /// Commits the upgrade that started this process: the predecessor, on probation, will not
    /// take service back and exits. Sent once, after ready.
    pub(crate) fn commit(&mut self) -> io::Result<()> {
        match self.ready.take() {
            // A predecessor that speaks version 1 has no probation, and does not read it.
            Some(fd) if self.said_ready && self.version >= 2 => {
                sys::fd::write_all(fd.as_fd(), &[COMMIT_BYTE])
            }
            _ => Ok(()),
        }
    }

    /// Where the predecessor stands now, without blocking.
    pub(crate) fn state(&mut self) -> io::Result<PredecessorState> {
        let (exited, drained) = read_parent_pipe(self.alive.as_fd())?;
        self.drained |= drained;
        Ok(if exited {
            PredecessorState::Exited
        } else if self.drained {
            PredecessorState::OnProbation
        } else {
            PredecessorState::Draining
        })
    }

    /// A descriptor of the parent pipe registered with tokio, to wait for the predecessor's exit
    /// (readable at EOF). Needs a tokio runtime with I/O enabled.
    pub(crate) fn watch_fd(&self) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
        sys::fd::async_readable(sys::fd::dup(self.alive.as_fd())?)
    }
}

/// Reads the handoff if this process was started by an upgrade, and removes the marker from the
/// environment so no process we spawn later sees it.
///
/// Returns `Ok(None)` on a first start. Every inherited descriptor that is accepted is made
/// close-on-exec; a descriptor that does not match the manifest is left untouched and the whole
/// handoff is rejected.
pub(crate) fn take_handoff() -> Result<Option<Inherited>, HandoffError> {
    let Some(value) = take_marker() else {
        return Ok(None);
    };
    let result = read_handoff(&value);
    // A withdrawn standby (its handoff pipe, checked, reached EOF) may have lost its predecessor,
    // and with it the relay of its stderr: the real one goes back. Other errors leave stderr
    // alone: the marker may not be ours, and neither the descriptor it names.
    if let Err(HandoffError::Withdrawn) = &result
        && let Some(real) = take_real_stderr(&[])
    {
        let _ = sys::fd::set_stderr(real.as_fd());
    }
    result.map(Some)
}

fn read_handoff(value: &std::ffi::OsStr) -> Result<Inherited, HandoffError> {
    let marker = Marker::decode(value)?;
    let not_for_us = |reason: String| HandoffError::NotForUs { reason };

    // Only a pipe with the inode the predecessor wrote into the marker is read: a process that
    // inherited the variable by accident has another file (or nothing) at that number.
    match sys::fd::identity_raw(marker.control_fd) {
        Ok(id) if id.is_pipe() && id.file.ino == marker.pipe_inode => {}
        Ok(_) => {
            return Err(not_for_us(format!(
                "fd {} is not the handoff pipe",
                marker.control_fd
            )));
        }
        Err(e) => {
            return Err(not_for_us(format!(
                "fd {} is not open ({e})",
                marker.control_fd
            )));
        }
    }
    let control = sys::fd::adopt(marker.control_fd).map_err(HandoffError::Io)?;
    // The pipe is ours, so the numbers after it were placed by the process that made it: they
    // can be looked at before the manifest comes, which a standby waits for.
    let survey = peek_real_stderr_fd()
        .map(|end| Survey::take(handoff::entries_below(end)))
        .unwrap_or_default();
    let bytes = read_manifest(control.as_fd())?;
    drop(control);
    let manifest = Manifest::decode(&bytes)?;
    if manifest.token != marker.token {
        return Err(not_for_us(
            "the token in the manifest differs from the marker's".into(),
        ));
    }
    let adopted = adopt_all(manifest, survey)?;
    let mut taken: Vec<RawFd> = adopted.fds.iter().map(|r| r.fd.as_raw_fd()).collect();
    taken.push(marker.control_fd);
    taken.push(adopted.alive.as_raw_fd());
    taken.push(adopted.ready.as_raw_fd());
    let real_stderr = take_real_stderr(&taken);
    Ok(Inherited {
        fds: adopted.fds,
        parent: PredecessorLink {
            pid: adopted.parent_pid,
            ready: Some(adopted.ready),
            said_ready: false,
            version: marker.version,
            alive: adopted.alive,
            drained: false,
            real_stderr,
        },
    })
}

/// Reads until the manifest's final `end` line, EOF or the size limit.
///
/// There is no deadline: a standby waits here until its predecessor upgrades, and the predecessor always
/// either writes the manifest or closes its end (exiting closes it too), so this cannot hang.
fn read_manifest(control: BorrowedFd<'_>) -> Result<Vec<u8>, HandoffError> {
    let mut bytes = Vec::with_capacity(4096);
    let mut buf = [0u8; 8192];
    loop {
        if handoff::manifest_complete(&bytes) {
            return Ok(bytes);
        }
        sys::fd::wait_readable(control).map_err(HandoffError::Io)?;
        match sys::fd::read(control, &mut buf) {
            Ok(0) if bytes.is_empty() => return Err(HandoffError::Withdrawn),
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return Err(HandoffError::Io(e)),
        }
    }
}

/// Reads what the parent pipe holds, without blocking: whether the predecessor exited (EOF),
/// and whether it said its drain is over.
fn read_parent_pipe(alive: BorrowedFd<'_>) -> io::Result<(bool, bool)> {
    let mut buf = [0u8; 16];
    let mut drained = false;
    loop {
        match sys::fd::read(alive, &mut buf) {
            Ok(0) => return Ok((true, drained)),
            Ok(n) => drained |= buf[..n].contains(&DRAINED_BYTE),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, drained)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_closed_before_any_manifest_means_the_standby_was_withdrawn() {
        let (r, w) = sys::fd::pipe().unwrap();
        drop(w);
        assert!(matches!(
            read_manifest(r.as_fd()),
            Err(HandoffError::Withdrawn)
        ));

        // A manifest cut short is not a withdrawal: it is returned for decoding to reject.
        let (r, w) = sys::fd::pipe().unwrap();
        nix::unistd::write(&w, b"flip-handoff 1\n").unwrap();
        drop(w);
        assert_eq!(read_manifest(r.as_fd()).unwrap(), b"flip-handoff 1\n");
    }
}
