//! Where each descriptor sits in the successor, and the variables beside them: what the
//! predecessor's spawn places and what the successor looks for, computed in one place.
//!
//! The spawn passes, in this order from [`CONTROL_FD`] on: the control pipe, the ready pipe,
//! the parent pipe, every handed-over entry, then the predecessor's real standard error
//! (named by [`STDERR_VAR`]).

use std::ops::Range;
use std::os::fd::RawFd;

use super::{
    ALIVE_FD, ANCESTORS_VAR, CONTROL_FD, Entry, FIRST_ENTRY_FD, GENERATION_VAR, MARKER_VAR,
    Manifest, Marker, ProcessName, READY_FD, STDERR_VAR, Token, encode_ancestors,
};
use crate::key::Key;
use crate::sys::fd::FileId;

/// One handoff as the successor will find it: the manifest for the control pipe, and the
/// environment variables that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The encoded manifest, written into the control pipe at the handoff.
    pub(crate) manifest: String,
    /// The variables to add to the successor's environment.
    pub(crate) vars: Vec<(&'static str, String)>,
}

/// What the predecessor knows when it lays out a handoff.
#[derive(Debug)]
pub(crate) struct Handing<'a> {
    /// The entries' keys and files, in the order the spawn passes their descriptors.
    pub(crate) handed: &'a [(Key, FileId)],
    pub(crate) token: Token,
    /// Inode of the control pipe, which the successor checks before reading it.
    pub(crate) pipe_inode: u64,
    pub(crate) parent_pid: u32,
    /// The successor's generation number.
    pub(crate) generation: u64,
    /// The older generations still running, oldest first, the predecessor last.
    pub(crate) ancestors: &'a [ProcessName],
    /// The handoff version spoken with the successor.
    pub(crate) version: u32,
}

impl Layout {
    /// Lays out a handoff.
    pub(crate) fn new(h: &Handing<'_>) -> Layout {
        let entries: Vec<Entry> = (0..)
            .zip(h.handed)
            .map(|(i, (key, file))| Entry {
                key: key.clone(),
                fd: FIRST_ENTRY_FD + i,
                file: *file,
            })
            .collect();
        let real_stderr = stderr_fd(h.handed.len());
        let manifest = Manifest {
            token: h.token,
            parent_pid: h.parent_pid,
            ready_fd: READY_FD,
            alive_fd: ALIVE_FD,
            entries,
        }
        .encode();
        let marker = Marker {
            version: h.version,
            control_fd: CONTROL_FD,
            pipe_inode: h.pipe_inode,
            token: h.token,
        };
        Layout {
            manifest,
            vars: vec![
                (MARKER_VAR, marker.encode()),
                (GENERATION_VAR, h.generation.to_string()),
                (STDERR_VAR, real_stderr.to_string()),
                (ANCESTORS_VAR, encode_ancestors(h.ancestors)),
            ],
        }
    }
}

/// Where the predecessor's real standard error lands, after `entries` entries.
pub(crate) fn stderr_fd(entries: usize) -> RawFd {
    FIRST_ENTRY_FD.saturating_add(RawFd::try_from(entries).unwrap_or(RawFd::MAX))
}

/// The numbers the entries occupy when the real standard error sits at `stderr_fd`: what a
/// successor may look at before the manifest comes.
pub(crate) fn entries_below(stderr_fd: RawFd) -> Range<RawFd> {
    FIRST_ENTRY_FD..stderr_fd.max(FIRST_ENTRY_FD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Kind;

    #[test]
    fn entries_follow_the_three_pipes_and_stderr_follows_the_entries() {
        let file = FileId { dev: 1, ino: 2 };
        let handed = vec![
            (Key::new(Kind::Listener, "tcp", "127.0.0.1:1"), file),
            (Key::new(Kind::Listener, "unix", "/run/a.sock"), file),
        ];
        let token = Token::generate().unwrap();
        let layout = Layout::new(&Handing {
            handed: &handed,
            token,
            pipe_inode: 77,
            parent_pid: 42,
            generation: 3,
            ancestors: &[(40, 9)],
            version: 2,
        });
        let m = Manifest::decode(layout.manifest.as_bytes()).unwrap();
        assert_eq!(m.parent_pid, 42);
        assert_eq!((m.ready_fd, m.alive_fd), (CONTROL_FD + 1, CONTROL_FD + 2));
        let fds: Vec<RawFd> = m.entries.iter().map(|e| e.fd).collect();
        assert_eq!(fds, [CONTROL_FD + 3, CONTROL_FD + 4]);
        let var = |name| {
            layout
                .vars
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let stderr: RawFd = var(STDERR_VAR).unwrap().parse().unwrap();
        assert_eq!(stderr, CONTROL_FD + 5);
        assert_eq!(entries_below(stderr), CONTROL_FD + 3..CONTROL_FD + 5);
        let marker = Marker::decode(std::ffi::OsStr::new(&var(MARKER_VAR).unwrap())).unwrap();
        assert_eq!((marker.control_fd, marker.pipe_inode), (CONTROL_FD, 77));
        assert_eq!(marker.token, token);
        assert_eq!(var(GENERATION_VAR).as_deref(), Some("3"));
        assert_eq!(var(ANCESTORS_VAR).as_deref(), Some("40:9"));
    }
}
