//! The pid file: always names the process that serves.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Repr};

/// Default mode of a new pid file: readable by all, writable by the owner.
pub const DEFAULT_MODE: u32 = 0o644;

/// The pid the pid file at `path` names, if it names one.
pub(crate) fn read(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes `pid` to `path` atomically: a temporary file in the same directory, renamed over the
/// target, so a reader sees the old pid or the new one, never a partial write.
pub(crate) fn write(path: &Path, pid: u32, mode: u32) -> Result<(), Error> {
    let replaced = prepare_for(path, pid, mode)?.commit()?;
    remove_replaced(replaced);
    Ok(())
}

/// A pid file written ahead of time beside its path, waiting to be put in place by
/// [`commit`](Prepared::commit). A process started by an upgrade prepares it before it reads the
/// handoff, so that declaring itself ready costs one rename. Dropped uncommitted, it is removed.
#[derive(Debug)]
pub(crate) struct Prepared {
    path: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

/// Writes this process's pid to the temporary file that [`Prepared::commit`] moves to `path`.
pub(crate) fn prepare(path: &Path, mode: u32) -> Result<Prepared, Error> {
    prepare_for(path, std::process::id(), mode)
}

fn prepare_for(path: &Path, pid: u32, mode: u32) -> Result<Prepared, Error> {
    let fail = |source: io::Error| {
        Error::from(Repr::PidFile {
            path: path.to_owned(),
            source,
        })
    };
    let tmp = temp_path(path, pid).map_err(fail)?;
    let prepared = Prepared {
        path: path.to_owned(),
        tmp,
        committed: false,
    };
    create(&prepared.tmp, mode)
        .and_then(|mut f| f.write_all(format!("{pid}\n").as_bytes()))
        .map_err(fail)?;
    Ok(prepared)
}

impl Prepared {
    /// Puts the pid file in place. The file it replaced (if any) is returned, to be removed
    /// with [`remove_replaced`] once nobody waits.
    pub(crate) fn commit(mut self) -> Result<Option<PathBuf>, Error> {
        let exchanged = crate::sys::fs::exchange(&self.tmp, &self.path).map_err(|source| {
            Error::from(Repr::PidFile {
                path: self.path.clone(),
                source,
            })
        })?;
        self.committed = true;
        Ok(exchanged.then(|| self.tmp.clone()))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Removes the previous pid file that a commit left at its temporary path.
pub(crate) fn remove_replaced(replaced: Option<PathBuf>) {
    if let Some(old) = replaced {
        // A leftover would harm nobody: the name carries a pid, and the next process with that
        // pid truncates it.
        let _ = std::fs::remove_file(old);
    }
}

/// Removes the temporary file a process `pid` may have prepared and not committed: it was
/// killed (a stale standby, a failed upgrade).
pub(crate) fn remove_prepared_by(path: &Path, pid: u32) {
    if let Ok(tmp) = temp_path(path, pid) {
        let _ = std::fs::remove_file(tmp);
    }
}

/// Checks, at first start, that a pid file can be written at `path`: creates and removes the
/// temporary file that [`write`] would use, with the same content, so that a missing,
/// read-only or full directory is reported before anything starts rather than when the
/// process declares itself ready.
pub(crate) fn check_writable(path: &Path, mode: u32) -> Result<(), Error> {
    let fail = |source: io::Error| {
        Error::from(Repr::PidFile {
            path: path.to_owned(),
            source,
        })
    };
    let pid = std::process::id();
    let tmp = temp_path(path, pid).map_err(fail)?;
    // Write what `write` will write: an empty file fits even on a full file system.
    let written = create(&tmp, mode).and_then(|mut f| f.write_all(format!("{pid}\n").as_bytes()));
    let _ = std::fs::remove_file(&tmp);
    written.map_err(fail)
}

/// The file name of a pid file path, or why the path cannot be one.
fn file_name(path: &Path) -> io::Result<&std::ffi::OsStr> {
    if path.is_symlink() {
        // Renaming over it would replace the link, not write where it points: neither is what
        // whoever made it meant, so say so.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is a symbolic link; give the path it points to",
        ));
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        let what = if kind.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "the path is a directory",
            ));
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else {
            ""
        };
        if !what.is_empty() {
            // The write renames a new file over the path: the device (or pipe, or socket)
            // would be gone, replaced by a regular file.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the path is {what}, not a regular file; refusing to replace it"),
            ));
        }
    }
    path.file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))
}

/// `.<name>.<pid>.tmp` beside the pid file.
fn temp_path(path: &Path, pid: u32) -> io::Result<PathBuf> {
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name(path)?);
    tmp_name.push(format!(".{pid}.tmp"));
    Ok(path.with_file_name(tmp_name))
}

/// Creates (or truncates) the temporary file; never follows a symlink planted in its place.
fn create(tmp: &Path, mode: u32) -> io::Result<std::fs::File> {
    crate::sys::fs::create_nofollow(tmp, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces() {
        let dir = std::env::temp_dir().join(format!("flip-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.pid");
        write(&path, 41, DEFAULT_MODE).unwrap();
        write(&path, 42, DEFAULT_MODE).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "42\n");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temp file left behind"
        );
        assert!(write(&dir, 1, DEFAULT_MODE).is_err());
        assert!(write(&dir.join("missing/app.pid"), 1, DEFAULT_MODE).is_err());
        assert!(check_writable(&dir.join("missing/app.pid"), DEFAULT_MODE).is_err());
        assert!(check_writable(Path::new("/proc/flip-test.pid"), DEFAULT_MODE).is_err());
        assert!(check_writable(&path, DEFAULT_MODE).is_ok());
        let link = dir.join("link.pid");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = check_writable(&link, DEFAULT_MODE)
            .unwrap_err()
            .chain()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(write(&link, 7, DEFAULT_MODE).is_err());
        std::fs::remove_file(&link).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "42\n",
            "the check leaves it alone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_prepared_pid_file_is_put_in_place_by_commit_and_removed_if_dropped() {
        let dir = std::env::temp_dir().join(format!("flip-prepared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.pid");
        let names = || {
            let mut v: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };

        // First commit: nothing to replace.
        let prepared = prepare(&path, DEFAULT_MODE).unwrap();
        assert!(!path.exists(), "nothing is in place before the commit");
        assert_eq!(prepared.commit().unwrap(), None);
        let me = format!("{}\n", std::process::id());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), me);

        // Over an existing file: the old content comes back at the temporary path.
        std::fs::write(&path, "1\n").unwrap();
        let replaced = prepare(&path, DEFAULT_MODE).unwrap().commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), me);
        let old = replaced.clone().expect("the replaced file");
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "1\n");
        remove_replaced(replaced);
        assert_eq!(names(), vec!["app.pid".to_string()]);

        // Dropped without a commit: nothing changes, nothing is left.
        drop(prepare(&path, DEFAULT_MODE).unwrap());
        assert_eq!(names(), vec!["app.pid".to_string()]);
        assert!(prepare(&dir.join("missing/app.pid"), DEFAULT_MODE).is_err());

        // Prepared by a process that was killed: removed by its pid.
        let prepared = prepare(&path, DEFAULT_MODE).unwrap();
        std::mem::forget(prepared);
        assert_eq!(names().len(), 2);
        remove_prepared_by(&path, std::process::id());
        assert_eq!(names(), vec!["app.pid".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
