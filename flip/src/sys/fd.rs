//! Descriptors: flags, identities, pipes, plain reads and writes, and adoption of descriptors
//! handed over by a parent.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Which file a descriptor or a path leads to: two descriptors with the same id are the same
/// open file (socket, pipe, regular file), whatever their numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    /// Device number (`st_dev`).
    pub(crate) dev: u64,
    /// Inode number (`st_ino`).
    pub(crate) ino: u64,
}

/// A descriptor's file and its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) file: FileId,
    /// The `S_IFMT` bits of `st_mode`.
    pub(crate) file_type: u32,
}

impl Identity {
    pub(crate) fn is_pipe(&self) -> bool {
        self.file_type == libc::S_IFIFO
    }

    pub(crate) fn is_socket(&self) -> bool {
        self.file_type == libc::S_IFSOCK
    }

    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    fn from_stat(st: &libc::stat) -> Identity {
        Identity {
            file: FileId {
                dev: st.st_dev as u64,
                ino: st.st_ino as u64,
            },
            file_type: st.st_mode as u32 & libc::S_IFMT,
        }
    }
}

/// A descriptor number received from the predecessor process that was open and is now
/// close-on-exec, not owned by anything yet: [`Marked::adopt`] takes ownership.
///
/// Not `Clone`: each number is adopted at most once.
#[derive(Debug)]
pub(crate) struct Marked(RawFd);

/// Marks a descriptor number received from the predecessor process close-on-exec, which also checks
/// that it is open: fails with `EBADF` when it is not, so a handoff that names a closed number
/// cannot make us own (and later close) something else.
pub(crate) fn mark(raw: RawFd) -> io::Result<Marked> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_SETFD on an arbitrary number has no memory effects; it fails with EBADF when the
    // number is not an open descriptor, which is exactly the check we need before adoption.
    let rc = unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(Marked(raw))
}

impl Marked {
    /// Takes ownership of the descriptor.
    pub(crate) fn adopt(self) -> OwnedFd {
        // SAFETY: the descriptor was open when `mark` checked it, and nothing in this process
        // owns it to close it since: the handoff protocol places it here for us alone, and a
        // `Marked` (not `Clone`) is made once per number and consumed here.
        unsafe { OwnedFd::from_raw_fd(self.0) }
    }
}

impl AsFd for Marked {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: open since `mark` checked it (see `adopt`), and not closed while `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}

/// Takes ownership of a descriptor number received from the predecessor process, made close-on-exec
/// (see [`mark`]).
pub(crate) fn adopt(raw: RawFd) -> io::Result<OwnedFd> {
    Ok(mark(raw)?.adopt())
}

/// Whether the open file description is non-blocking.
pub(crate) fn is_nonblocking(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?).contains(OFlag::O_NONBLOCK))
}

/// Makes the open file description non-blocking. This flag is shared with every process that
/// holds the same description (our parent, our successor), all of which want it set.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// A new descriptor for the same open file, close-on-exec.
pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// Makes `fd` this process's standard error (the previous one is closed).
pub(crate) fn set_stderr(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(nix::unistd::dup2_stderr(fd)?)
}

/// A new descriptor for this process's standard error, close-on-exec.
pub(crate) fn dup_stderr() -> io::Result<OwnedFd> {
    dup(std::io::stderr().as_fd())
}

/// Creates a pipe whose two ends are close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Makes room for `len` bytes in a pipe, so that writing them never waits for the reader.
pub(crate) fn reserve_pipe(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let capacity = fcntl(fd, FcntlArg::F_GETPIPE_SZ)?;
    if usize::try_from(capacity).unwrap_or(0) < len {
        let want = i32::try_from(len).map_err(|_| io::Error::other("too large for a pipe"))?;
        fcntl(fd, FcntlArg::F_SETPIPE_SZ(want))?;
    }
    Ok(())
}

/// One `read`: `Interrupted` and `WouldBlock` come back as errors of those kinds.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    Ok(nix::unistd::read(fd, buf)?)
}

/// Writes all of `bytes`, retrying after signals.
pub(crate) fn write_all(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Blocks until the descriptor is readable (or at EOF).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<()> {
    wait_any_readable(&[fd]).map(drop)
}

/// Blocks until one of `fds` is readable (or at EOF); returns which are.
pub(crate) fn wait_any_readable(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    loop {
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut polled, PollTimeout::NONE) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => {
                return Ok(polled
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until one of `fds` is readable or `timeout` passed; whether one is.
pub(crate) fn wait_readable_for(
    fds: &[BorrowedFd<'_>],
    timeout: std::time::Duration,
) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if left.is_zero() {
            return Ok(false);
        }
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut polled, PollTimeout::from(ms.max(1))) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Identity of the file behind a descriptor.
pub(crate) fn identity(fd: impl AsFd) -> io::Result<Identity> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    Ok(Identity::from_stat(&st))
}

/// Identity of the file behind a descriptor number that we do not own. Used to check a
/// descriptor before adopting it, so that a number that is not what the handoff says is never
/// touched.
pub(crate) fn identity_raw(raw: RawFd) -> io::Result<Identity> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `struct stat` into the storage it is given and nothing else; on an
    // invalid number it fails with EBADF and writes nothing.
    let rc = unsafe { libc::fstat(raw, st.as_mut_ptr()) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so the structure is initialised.
    let st = unsafe { st.assume_init() };
    Ok(Identity::from_stat(&st))
}

/// Registers a descriptor we own with tokio's reactor, for readiness to read.
pub(crate) fn async_readable(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns a valid descriptor, and the `AsyncFd` owns the `OwnedFd` until it
    // is dropped: nothing closes or replaces the descriptor while it is registered.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            .map_err(io::Error::from)
    }
}
