//! Starting the new binary with `posix_spawn`.
//!
//! Why not `fork`: its cost grows with the predecessor's memory (tens of milliseconds for a 1 GiB
//! server, see BENCHMARKS.md), while `posix_spawn` costs the same at any size. Why not std's `Command`: it
//! cannot place extra descriptors in the successor, and a `pre_exec` closure silently turns it back
//! into `fork`. Why dup2 file actions: the handed-over descriptors stay close-on-exec in the
//! parent, and only the spawned child receives copies without the flag, so a process that another
//! thread spawns at the same moment inherits none of them.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr;

/// First descriptor number in the successor; 0, 1 and 2 stay stdin, stdout and stderr.
pub(crate) const FIRST_CHILD_FD: RawFd = 3;

/// What to start and what to give it.
pub(crate) struct SpawnRequest<'a> {
    /// Path of the executable (not searched in `PATH`).
    pub(crate) program: &'a CStr,
    /// Arguments, the first being the program name.
    pub(crate) argv: &'a [CString],
    /// The complete environment, as `NAME=value`.
    pub(crate) envp: &'a [CString],
    /// Working directory of the successor.
    pub(crate) cwd: &'a CStr,
    /// Descriptors placed in the successor at 3, 4, 5, ... in this order, without close-on-exec.
    pub(crate) fds: &'a [BorrowedFd<'a>],
    /// The successor's standard error, in place of this process's.
    pub(crate) stderr: Option<BorrowedFd<'a>>,
}

/// Owns a `posix_spawn_file_actions_t` and destroys it on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: the value was initialised by posix_spawn_file_actions_init in `spawn` and is
        // destroyed exactly once, here.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Owns a `posix_spawnattr_t` and destroys it on drop.
struct Attr(libc::posix_spawnattr_t);

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised by posix_spawnattr_init in `spawn`, destroyed exactly once, here.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let err = io::Error::from_raw_os_error(rc);
        Err(io::Error::new(err.kind(), format!("{what}: {err}")))
    }
}

/// Starts the successor and returns its pid.
///
/// The successor starts with SIGHUP blocked: a SIGHUP that arrives before it installed its handler
/// stays pending instead of killing it (`Upgrader` unblocks it once a handler is in place).
/// SIGPIPE and SIGHUP start with their default action, as after a fresh start.
pub(crate) fn spawn(req: &SpawnRequest<'_>) -> io::Result<i32> {
    let count = RawFd::try_from(req.fds.len()).map_err(|_| io::Error::other("too many fds"))?;
    // Descriptors travel through numbers above every source and every target, so that a dup2
    // onto a target never overwrites a source that is still to be placed.
    let highest_source = req
        .fds
        .iter()
        .chain(req.stderr.as_ref())
        .map(|fd| fd.as_raw_fd())
        .max()
        .unwrap_or(0);
    let staging = highest_source.max(FIRST_CHILD_FD + count) + 1;

    let mut actions = {
        let mut raw = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        // SAFETY: init writes a valid value into the storage it is given.
        check(
            unsafe { libc::posix_spawn_file_actions_init(raw.as_mut_ptr()) },
            "posix_spawn_file_actions_init",
        )?;
        // SAFETY: initialised just above.
        FileActions(unsafe { raw.assume_init() })
    };
    let mut attr = {
        let mut raw = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: init writes a valid value into the storage it is given.
        check(
            unsafe { libc::posix_spawnattr_init(raw.as_mut_ptr()) },
            "posix_spawnattr_init",
        )?;
        // SAFETY: initialised just above.
        Attr(unsafe { raw.assume_init() })
    };

    // SAFETY: every call below gets the initialised structures owned above and plain integers or
    // a NUL-terminated string that outlives the call (the library copies the path).
    unsafe {
        check(
            libc::posix_spawn_file_actions_addchdir_np(&mut actions.0, req.cwd.as_ptr()),
            "posix_spawn_file_actions_addchdir_np",
        )?;
        for (i, fd) in (0..).zip(req.fds) {
            check(
                libc::posix_spawn_file_actions_adddup2(&mut actions.0, fd.as_raw_fd(), staging + i),
                "posix_spawn_file_actions_adddup2",
            )?;
        }
        if let Some(stderr) = &req.stderr {
            // Before the staging copies are placed: the source cannot be overwritten yet.
            check(
                libc::posix_spawn_file_actions_adddup2(&mut actions.0, stderr.as_raw_fd(), 2),
                "posix_spawn_file_actions_adddup2",
            )?;
        }
        for i in 0..count {
            check(
                libc::posix_spawn_file_actions_adddup2(
                    &mut actions.0,
                    staging + i,
                    FIRST_CHILD_FD + i,
                ),
                "posix_spawn_file_actions_adddup2",
            )?;
            check(
                libc::posix_spawn_file_actions_addclose(&mut actions.0, staging + i),
                "posix_spawn_file_actions_addclose",
            )?;
        }

        let mut mask = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(mask.as_mut_ptr());
        libc::sigaddset(mask.as_mut_ptr(), libc::SIGHUP);
        check(
            libc::posix_spawnattr_setsigmask(&mut attr.0, mask.as_ptr()),
            "posix_spawnattr_setsigmask",
        )?;
        let mut defaults = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(defaults.as_mut_ptr());
        libc::sigaddset(defaults.as_mut_ptr(), libc::SIGPIPE);
        libc::sigaddset(defaults.as_mut_ptr(), libc::SIGHUP);
        check(
            libc::posix_spawnattr_setsigdefault(&mut attr.0, defaults.as_ptr()),
            "posix_spawnattr_setsigdefault",
        )?;
        let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
        check(
            libc::posix_spawnattr_setflags(&mut attr.0, flags as libc::c_short),
            "posix_spawnattr_setflags",
        )?;
    }

    let argv = null_terminated(req.argv);
    let envp = null_terminated(req.envp);
    let mut pid: libc::pid_t = 0;
    // SAFETY: all pointers are valid for the duration of the call: the structures above, and the
    // argv/envp arrays whose strings are borrowed from `req` and end with a null pointer.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            req.program.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    check(rc, "posix_spawn")?;
    Ok(pid)
}

fn null_terminated(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(ptr::null_mut()))
        .collect()
}
