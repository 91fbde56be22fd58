//! The predecessor's end of the ready pipe: readiness, then (on probation) the commit.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use crate::handoff::{COMMIT_BYTE, ReadyPipe};
use crate::sys;

/// Whether the ready pipe said ready (`false`: EOF, the write end is closed everywhere).
pub(super) async fn said_ready(ready: &AsyncFd<OwnedFd>) -> bool {
    loop {
        let Ok(mut guard) = ready.readable().await else {
            return false;
        };
        let read = guard.try_io(|fd| match read_ready(fd.get_ref().as_fd()) {
            ReadyPipe::Pending => Err(io::ErrorKind::WouldBlock.into()),
            other => Ok(other),
        });
        match read {
            Ok(Ok(ReadyPipe::Ready)) => return true,
            Ok(_) => return false,
            Err(_would_block) => {}
        }
    }
}

/// Whether the ready pipe, after readiness, says the successor committed (`false`: EOF).
pub(super) async fn said_commit(ready: &AsyncFd<OwnedFd>) -> bool {
    let mut buf = [0u8; 8];
    loop {
        let Ok(mut guard) = ready.readable().await else {
            return false;
        };
        match guard.try_io(|fd| sys::fd::read(fd.get_ref().as_fd(), &mut buf)) {
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) if buf[..n].contains(&COMMIT_BYTE) => return true,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
}

/// Reads the ready pipe (non-blocking) once.
pub(super) fn read_ready(ready: BorrowedFd<'_>) -> ReadyPipe {
    let mut buf = [0u8; 8];
    match sys::fd::read(ready, &mut buf) {
        Ok(0) => ReadyPipe::Closed,
        Ok(_) => ReadyPipe::Ready,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) =>
        {
            ReadyPipe::Pending
        }
        Err(_) => ReadyPipe::Closed,
    }
}

pub(super) fn async_ready(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    sys::fd::set_nonblocking(fd.as_fd())?;
    sys::fd::async_readable(fd)
}
