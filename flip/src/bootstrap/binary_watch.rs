//! Noticing a new binary at the path an upgrade starts as soon as it is in place, so that the
//! standby process is replaced before the reload a deploy sends next, not up to a second later.
//!
//! A deploy puts the new binary in place and asks for the reload right away: a standby started
//! from the previous binary is stale then, and the upgrade would start the successor from
//! scratch. The watch covers every directory on the way to the binary, both along the path as
//! given and along its resolved form, so a switched `current -> release-N` link is seen as
//! well as a file renamed over the binary. Events for other names are ignored; the
//! once-a-second check stays for anything the watch cannot see.
//!
//! The inotify instance is registered as the file [`REGISTRY_NAME`], so it passes from process
//! to process with the sockets: closing the last descriptor of one takes the kernel 8 to 19 ms
//! here, and each old process would otherwise spend that on its way out.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use tokio::io::unix::AsyncFd;

use crate::registry::Fds;
use crate::sys::watch::{Change, DirId, Watch};

/// The name of the watch's inotify instance in the registry ([`Fds::file`]).
pub(crate) const REGISTRY_NAME: &str = "flip.binary-watch";

/// The entries that lead to the binary (directory, name), by the watch on the directory.
type Entries = HashMap<DirId, Vec<(PathBuf, OsString)>>;

pub(super) struct BinaryWatch {
    path: PathBuf,
    watch: AsyncFd<Watch>,
    entries: Entries,
}

impl BinaryWatch {
    /// Claims the instance the previous process handed over, if any: to be called before
    /// readiness, which closes whatever was inherited and not claimed.
    pub(super) fn inherited(fds: &Fds) -> Option<OwnedFd> {
        fds.file(REGISTRY_NAME).ok().flatten().map(OwnedFd::from)
    }

    /// Watches the directories on the way to `path`, with the `inherited` instance or a new
    /// one, registered in `fds` for the next process. Needs a tokio runtime with I/O enabled.
    pub(super) fn new(
        path: &Path,
        fds: &Fds,
        inherited: Option<OwnedFd>,
    ) -> io::Result<BinaryWatch> {
        let adopted = inherited.map(Watch::adopt).transpose().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "the inherited watch on the binary is unusable; starting another");
            None
        });
        let inherited = adopted.is_some();
        let watch = match adopted {
            Some(watch) => watch,
            None => {
                let watch = Watch::new()?;
                fds.add_file(REGISTRY_NAME, &watch)
                    .map_err(io::Error::other)?;
                watch
            }
        };
        let entries = arm(&watch, path)?;
        tracing::debug!(path = %path.display(), inherited, "watching for a new binary");
        Ok(BinaryWatch {
            path: path.to_owned(),
            watch: watch.into_async()?,
            entries,
        })
    }

    /// Resolves when an entry on the way to the binary changed: a new binary may be there.
    pub(super) async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.watch.readable().await?;
            ready.clear_ready();
            drop(ready);
            if self.take_changes()? {
                return Ok(());
            }
        }
    }

    /// Reads the changes that wait, without blocking: whether one of them may have put a new
    /// binary in place. The kernel queues a change before the call that made it returns.
    fn take_changes(&mut self) -> io::Result<bool> {
        let mut relevant = false;
        loop {
            match self.watch.get_ref().read() {
                Ok(changes) => relevant |= changes.iter().any(|c| self.leads_to_binary(c)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if relevant {
            // A switched link leads through other directories now. The watches of
            // directories left behind stay; their events are ignored.
            self.entries = arm(self.watch.get_ref(), &self.path)?;
        }
        Ok(relevant)
    }

    fn leads_to_binary(&self, change: &Change) -> bool {
        let Change::Entry { dir, name, created } = change else {
            return true;
        };
        let Some(entries) = self.entries.get(dir) else {
            return false;
        };
        entries.iter().any(|(parent, entry)| {
            // A regular file just created is still being written: its close comes next.
            entry == name
                && (!created
                    || std::fs::symlink_metadata(parent.join(name))
                        .is_ok_and(|meta| !meta.file_type().is_file()))
        })
    }
}

/// Watches every directory on the way to `path`; returns what to look for in each.
fn arm(watch: &Watch, path: &Path) -> io::Result<Entries> {
    let mut entries = Entries::new();
    let mut last_error = None;
    for (dir, name) in on_the_way(path) {
        match watch.add_dir(&dir) {
            Ok(id) => entries.entry(id).or_default().push((dir, name)),
            // A directory that cannot be watched (gone, not readable): the periodic check
            // covers it.
            Err(e) => last_error = Some(e),
        }
    }
    if entries.is_empty() {
        return Err(last_error.unwrap_or_else(|| io::Error::other("no directory to watch")));
    }
    Ok(entries)
}

/// Every (directory, name) that leads to `path`, as given and resolved.
fn on_the_way(path: &Path) -> Vec<(PathBuf, OsString)> {
    let mut entries = Vec::new();
    for path in [Some(path.to_owned()), path.canonicalize().ok()]
        .into_iter()
        .flatten()
    {
        let mut dir = PathBuf::new();
        for component in path.components() {
            match component {
                Component::RootDir => dir.push(Component::RootDir),
                Component::CurDir => {}
                Component::Normal(name) => {
                    entries.push((dir.clone(), name.to_owned()));
                    dir.push(name);
                }
                // What follows `..` only the resolved path tells.
                Component::ParentDir | Component::Prefix(_) => break,
            }
        }
    }
    entries.retain(|(dir, _)| !dir.as_os_str().is_empty());
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SocketSettings;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flip-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    fn no_fds() -> Fds {
        let settings = SocketSettings {
            backlog: 16,
            unix_mode: 0o600,
        };
        Fds::new(Vec::new(), false, settings)
    }

    #[tokio::test]
    async fn a_file_written_at_the_path_counts_once_closed_and_other_names_never() {
        let dir = scratch("watch-write");
        let binary = dir.join("server");
        std::fs::write(&binary, b"old").unwrap();
        let fds = no_fds();
        let mut watch = BinaryWatch::new(&binary, &fds, None).unwrap();
        assert!(!watch.take_changes().unwrap(), "nothing happened yet");

        std::fs::write(dir.join("server.pid"), b"1").unwrap();
        std::fs::rename(dir.join("server.pid"), dir.join("other")).unwrap();
        assert!(
            !watch.take_changes().unwrap(),
            "other names are not the binary"
        );

        std::fs::remove_file(&binary).unwrap();
        let mut file = std::fs::File::create(&binary).unwrap();
        std::io::Write::write_all(&mut file, b"new").unwrap();
        assert!(
            !watch.take_changes().unwrap(),
            "a regular file still open for writing is not taken"
        );
        drop(file);
        assert!(watch.take_changes().unwrap(), "closed after writing: taken");
        assert!(
            !watch.take_changes().unwrap(),
            "each change is reported once"
        );

        std::fs::write(dir.join("server.new"), b"newer").unwrap();
        assert!(!watch.take_changes().unwrap());
        std::fs::rename(dir.join("server.new"), &binary).unwrap();
        assert!(
            watch.take_changes().unwrap(),
            "renamed over the binary: taken"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_instance_is_registered_for_the_next_process_and_an_inherited_one_is_reused() {
        let dir = scratch("watch-registry");
        let binary = dir.join("server");
        std::fs::write(&binary, b"").unwrap();
        let fds = no_fds();
        let first = BinaryWatch::new(&binary, &fds, None).unwrap();
        let handed = BinaryWatch::inherited(&fds).expect("registered as a file");
        let next = no_fds();
        let mut second = BinaryWatch::new(&binary, &next, Some(handed)).unwrap();
        assert!(
            BinaryWatch::inherited(&next).is_none(),
            "adopted, not made anew: the registry that handed it over holds it already"
        );
        drop(first);
        std::fs::write(dir.join("server.new"), b"").unwrap();
        std::fs::rename(dir.join("server.new"), &binary).unwrap();
        assert!(
            second.take_changes().unwrap(),
            "the same instance still watches"
        );
        // Anything else handed over under that name is refused and replaced.
        let fds = no_fds();
        let not_inotify = OwnedFd::from(std::fs::File::open(&binary).unwrap());
        BinaryWatch::new(&binary, &fds, Some(not_inotify)).unwrap();
        assert!(BinaryWatch::inherited(&fds).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_entries_on_the_way_are_those_of_the_link_and_of_what_it_leads_to() {
        let root = std::env::temp_dir().join(format!("flip-binary-watch-{}", std::process::id()));
        std::fs::create_dir_all(root.join("release-1")).unwrap();
        let root = root.canonicalize().unwrap();
        std::fs::write(root.join("release-1/server"), b"").unwrap();
        let _ = std::fs::remove_file(root.join("current"));
        std::os::unix::fs::symlink("release-1", root.join("current")).unwrap();
        let entries = on_the_way(&root.join("current/server"));
        std::fs::remove_dir_all(&root).unwrap();
        for (dir, name) in [
            (root.clone(), "current"),
            (root.join("current"), "server"),
            (root.clone(), "release-1"),
            (root.join("release-1"), "server"),
        ] {
            assert!(
                entries.contains(&(dir.clone(), name.into())),
                "{name} in {dir:?} missing from {entries:?}"
            );
        }
        let top = root.components().nth(1).unwrap().as_os_str().to_owned();
        assert!(entries.contains(&(PathBuf::from("/"), top)), "{entries:?}");
        assert!(
            entries.iter().all(|(dir, _)| dir.is_absolute()),
            "{entries:?}"
        );
    }
}
