//! Files: replacing one by renaming another over it (without the flush ext4 adds), and telling
//! which file a path leads to.

use std::io;
use std::path::Path;

/// Renames `from` over `to`, atomically for readers: they see the old file or the new one.
///
/// When `to` exists, the two are exchanged (`RENAME_EXCHANGE`): afterwards `to` is the new
/// file, and when this returns `true` the previous one is at `from`, for the caller to remove
/// when it has time. ext4 starts writing back the new file's data when a plain rename replaces a
/// file (`auto_da_alloc`): that made replacing a small file cost many times what an exchange
/// does (BENCHMARKS.md). The callers rewrite files whose content is worthless after a crash,
/// so the durability that flush buys does not matter. Falls back to a plain rename where
/// exchanging is not possible.
pub(crate) fn exchange(from: &Path, to: &Path) -> io::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => return Ok(true),
            // Nothing to exchange with, or a file system or kernel without exchange.
            Err(Errno::ENOENT | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::rename(from, to).map(|()| false)
}

/// Which file `path` leads to now (symbolic links followed).
pub(crate) fn file_id(path: &Path) -> io::Result<super::fd::FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(super::fd::FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Creates (or truncates) a file for writing with `mode`; a symbolic link at `path` is refused
/// (`ELOOP`), not followed.
pub(crate) fn create_nofollow(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}
