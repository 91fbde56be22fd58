//! Scratch directories, real server processes, and waiting for conditions with deadlines.

mod procfs;
mod server;
mod sockets;
mod systembox;

pub use procfs::*;
pub use server::*;
pub use sockets::*;
pub use systembox::*;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Generous deadline for anything a healthy server does; a loaded 2-core machine stays far below.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Becomes the subreaper of every process the tests start, so servers re-parented when their
/// parent exits come back to us to be reaped, not to init.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        // Descriptors this test process inherited without close-on-exec (from whatever started
        // it) would reach every server and make descriptor checks lie.
        for entry in std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .flatten()
        {
            if let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>()
                && fd > 2
            {
                // SAFETY: F_SETFD only changes a flag of the descriptor; on a number that
                // is not open (the directory handle of this very loop, closed since) it
                // fails with EBADF and changes nothing.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    });
}

/// Polls `check` until it returns `Some`, failing the test with `what` at the deadline.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::park_timeout(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A directory that is removed at the end of the test.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flip-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago on 127.0.0.1 (and ::1 when `v6`).
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut taken = TAKEN.lock().unwrap();
        if !taken.contains(&port) && std::net::TcpListener::bind(("::1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
}

/// Path of a binary built from this package (`flip-testserver`) or of an example.
pub fn example_path(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("current_exe");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// Puts an executable with `bytes` at `path` as a deploy puts a binary in place: written aside,
/// then renamed over it. Returns the new file's inode.
pub fn deploy_bytes(path: &Path, bytes: &[u8]) -> u64 {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let staged = path.with_extension("staged");
    std::fs::write(&staged, bytes).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, path).unwrap();
    std::fs::metadata(path).unwrap().ino()
}

/// Writes `line` to a file, for tests that need a marker on disk.
pub fn write_file(path: &Path, line: &str) {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap();
}

/// A binary of the workspace (`flip`, `flip-bootserver`, ...), built by `cargo test
/// --workspace` beside the test binaries.
pub fn workspace_bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("current_exe");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}
