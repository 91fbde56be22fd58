//! Directory watches (inotify): which entries of a few directories were put in place, written,
//! or had their attributes changed, without polling.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// One watched directory, as [`Watch::add_dir`] returned it.
pub(crate) type DirId = WatchDescriptor;

/// What happened, as far as someone waiting for a file to be replaced needs to know.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// An entry of a watched directory was renamed into place, closed after writing, had its
    /// attributes changed, or was created. `created` alone: a new regular file may not be
    /// written yet.
    Entry {
        dir: DirId,
        name: OsString,
        created: bool,
    },
    /// A watched directory itself was moved or removed, or events were lost: what was
    /// watched may no longer be what the paths name.
    Lost,
}

/// An inotify instance watching directories; readable (for `epoll`) when changes wait.
#[derive(Debug)]
pub(crate) struct Watch {
    inotify: Inotify,
}

impl Watch {
    pub(crate) fn new() -> io::Result<Watch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(Watch { inotify })
    }

    /// Takes over an inotify instance handed over by the previous process, with the watches it
    /// holds. Fails with `InvalidInput` when `fd` is not one (or `/proc` cannot tell).
    ///
    /// Closing the last descriptor of an instance that ever watched something waits for the
    /// kernel to retire its watches (an SRCU grace period: 8 to 19 ms measured here), so an
    /// instance is kept for as long as possible and handed from process to process.
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Watch> {
        let what = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if what.as_os_str() != "anon_inode:inotify" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not an inotify instance but {}", what.display()),
            ));
        }
        // SAFETY: `fd` is owned, and /proc just said that it is an inotify instance, which is
        // all `Inotify` requires of it.
        let inotify = unsafe { Inotify::from_owned_fd(fd) };
        Ok(Watch { inotify })
    }

    /// Watches `dir` (a symbolic link is followed). A directory added twice gives the same id.
    pub(crate) fn add_dir(&self, dir: &Path) -> io::Result<DirId> {
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        Ok(self.inotify.add_watch(dir, mask)?)
    }

    /// Registers the watch with tokio's reactor, for readiness to read.
    pub(crate) fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<Watch>> {
        // SAFETY: the `Watch` owns its inotify descriptor (an `OwnedFd` inside `Inotify`) and
        // closes it only when dropped, and the `AsyncFd` owns the `Watch`: the descriptor stays
        // open and the same while it is registered.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
                .map_err(io::Error::from)
        }
    }

    /// The changes that wait; fails with `WouldBlock` when there are none.
    pub(crate) fn read(&self) -> io::Result<Vec<Change>> {
        // An errno becomes the matching kind: `WouldBlock`, `Interrupted`.
        let events = self.inotify.read_events()?;
        // Only an event about an entry of a watched directory has a name; the rest are about a
        // directory itself (moved, removed, its watch gone) or the queue (overflowed).
        Ok(events
            .into_iter()
            .map(|event| match event.name {
                Some(name) => Change::Entry {
                    dir: event.wd,
                    name,
                    created: event.mask == AddWatchFlags::IN_CREATE,
                },
                _ => Change::Lost,
            })
            .collect())
    }
}

impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

/// For tokio's `AsyncFd`.
impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_into_a_watched_directory_is_reported_with_its_name() {
        let dir = std::env::temp_dir().join(format!("flip-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let watch = Watch::new().unwrap();
        let id = watch.add_dir(&dir).unwrap();
        assert_eq!(
            watch.read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing happened yet"
        );
        std::fs::write(dir.join("staged"), b"x").unwrap();
        std::fs::rename(dir.join("staged"), dir.join("bin")).unwrap();
        let changes = watch.read().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            changes.contains(&Change::Entry {
                dir: id,
                name: "bin".into(),
                created: false
            }),
            "{changes:?}"
        );
        assert!(
            changes.contains(&Change::Entry {
                dir: id,
                name: "staged".into(),
                created: true
            }),
            "{changes:?}"
        );
    }
}
