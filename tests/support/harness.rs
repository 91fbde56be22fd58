//! Scratch directories, real server processes, and waiting for conditions with deadlines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

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

/// Whether `pid` still runs (reaping it if it is our child and has ended).
pub fn alive(pid: u32) -> bool {
    let p = Pid::from_raw(pid as i32);
    match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => true,
        Ok(_) => false,
        Err(_) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| {
                rest.trim_start().starts_with('Z') || rest.trim_start().starts_with('X')
            }),
            Err(_) => false,
        },
    }
}

/// Waits until our child (or re-parented descendant) `pid` exits, and returns its exit code
/// (128 + signal number when killed).
pub fn exit_code(pid: u32, deadline: Duration) -> i32 {
    wait_for(
        &format!("process {pid} to exit"),
        deadline,
        || match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            Ok(_) => None,
            Err(e) => panic!("waitpid({pid}): {e}: not our child, or reaped already"),
        },
    )
}

pub fn wait_exit(pid: u32, deadline: Duration) {
    wait_for(&format!("process {pid} to exit"), deadline, || {
        (!alive(pid)).then_some(())
    });
}

pub fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// Number of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Targets of a process's descriptors (`socket:[123]`, `/dev/null`, ...), by number.
pub fn fd_links(pid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().parse().unwrap_or(-1);
            if let Ok(t) = std::fs::read_link(e.path()) {
                out.push((n, t.to_string_lossy().into_owned()));
            }
        }
    }
    out.sort();
    out
}

/// The environment a process was started with.
pub fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Inode of the listening unix socket bound at `path`, from /proc/net/unix.
pub fn unix_socket_inode(path: &Path) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let path = path.to_str()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Flags 00010000 is __SO_ACCEPTCON: the listener, not a connection it accepted (those
        // show the same path).
        (f.len() >= 8 && f[7] == path && f[3] == "00010000")
            .then(|| f[6].parse().ok())
            .flatten()
    })
}

/// Inode of the server side of the TCP connection from `client_port` to `server_port` on
/// loopback, from /proc/net/tcp: which process holds it tells who accepted the connection.
pub fn tcp_server_socket_inode(server_port: u16, client_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || port_of(f[1])? != server_port || port_of(f[2])? != client_port {
            return None;
        }
        f[9].parse().ok().filter(|&inode| inode != 0)
    })
}

/// Whether process `pid` holds the socket with this inode.
pub fn holds_socket(pid: u32, inode: u64) -> bool {
    let needle = format!("socket:[{inode}]");
    fd_links(pid).iter().any(|(_, t)| *t == needle)
}

/// Connects and reads the `pid N` greeting of a test server.
pub fn tcp_pid(addr: &str) -> Option<u32> {
    let addr: SocketAddr = addr.parse().ok()?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    read_pid(s)
}

pub fn unix_pid(path: &Path) -> Option<u32> {
    read_pid(UnixStream::connect(path).ok()?)
}

fn read_pid(s: impl Read) -> Option<u32> {
    let mut line = String::new();
    let mut r = BufReader::new(s);
    r.read_line(&mut line).ok()?;
    parse_pid(line.as_bytes())
}

/// The pid in a test server's `pid <pid>` answer.
fn parse_pid(answer: &[u8]) -> Option<u32> {
    std::str::from_utf8(answer)
        .ok()?
        .trim()
        .strip_prefix("pid ")?
        .parse()
        .ok()
}

pub fn udp_pid(addr: &str) -> Option<u32> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.send_to(b"?", addr).ok()?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    parse_pid(&buf[..n])
}

pub fn unixgram_pid(server: &Path, me: &Path) -> Option<u32> {
    let _ = std::fs::remove_file(me);
    let s = UnixDatagram::bind(me).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.send_to(b"?", server).ok()?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).ok()?;
    parse_pid(&buf[..n])
}

/// A test server process family (every generation), killed and reaped when dropped.
pub struct Server {
    pub scratch: Scratch,
    pub pid_file: PathBuf,
    pub events: PathBuf,
    pub behaviour: PathBuf,
    pub first_pid: u32,
    log: PathBuf,
    /// Every pid seen in the pid file, for the cleanup.
    seen: Mutex<Vec<u32>>,
}

impl Server {
    /// Starts `program` (first start) with `env`, and waits until it is ready.
    pub fn start(name: &str, program: &Path, env: &[(&str, String)]) -> Server {
        Self::start_in(Scratch::new(name), program, env)
    }

    pub fn start_in(scratch: Scratch, program: &Path, env: &[(&str, String)]) -> Server {
        init();
        let pid_file = env
            .iter()
            .find(|(k, _)| *k == "FLIP_PID_FILE")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| scratch.path("server.pid"));
        let events = scratch.path("events");
        let behaviour = scratch.path("behaviour");
        let log = scratch.path("log");
        std::fs::write(&behaviour, "ok").unwrap();
        let mut cmd = Command::new(program);
        cmd.env("FLIP_PID_FILE", &pid_file)
            .env("BOOT_PID_FILE", &pid_file)
            .env("TS_EVENTS", &events)
            .env("TS_BEHAVIOUR", &behaviour)
            .env("RUST_LOG", "debug")
            .env_remove("FLIP_HANDOFF")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Reaped by pid in `Drop` (with every later generation), not through `Child::wait`.
        #[allow(clippy::zombie_processes)]
        let child = cmd.spawn().expect("start server");
        let first_pid = child.id();
        let server = Server {
            scratch,
            pid_file,
            events,
            behaviour,
            first_pid,
            log,
            seen: Mutex::new(Vec::new()),
        };
        server.wait_pid_file(first_pid);
        server
    }

    pub fn set_behaviour(&self, b: &str) {
        std::fs::write(&self.behaviour, b).unwrap();
    }

    /// The pid in the pid file, if any.
    pub fn pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains(&pid) {
            seen.push(pid);
        }
        Some(pid)
    }

    pub fn wait_pid_file(&self, pid: u32) {
        wait_for(&format!("pid file to name {pid}"), DEADLINE, || {
            assert!(
                alive(pid) || self.pid() == Some(pid),
                "server {pid} died; log:\n{}",
                self.log()
            );
            (self.pid() == Some(pid)).then_some(())
        });
    }

    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for an event line starting with `prefix`, at or after index `from`; returns the
    /// line's index and text.
    pub fn wait_event(&self, from: usize, prefix: &str) -> (usize, String) {
        wait_for(&format!("event {prefix:?}"), DEADLINE, || {
            self.events()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.starts_with(prefix))
        })
    }

    /// Sends SIGHUP to the serving process and waits for the outcome: the pid file naming a new
    /// process, or (test server) an `upgrade-failed` event. Returns the new pid, or the reason.
    pub fn upgrade(&self) -> Result<u32, String> {
        // The pid file may be gone (a test removed its directory): the last pid it named.
        let old = self
            .pid()
            .or_else(|| {
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last()
                    .copied()
            })
            .expect("a serving pid");
        let from = self.events().len();
        signal(old, Signal::SIGHUP);
        wait_for("the upgrade outcome", DEADLINE, || {
            if let Some(new) = self.pid().filter(|&p| p != old) {
                return Some(Ok(new));
            }
            self.events().into_iter().skip(from).find_map(|l| {
                if let Some(rest) = l.strip_prefix(&format!("upgraded {old} ")) {
                    rest.parse().ok().map(Ok)
                } else {
                    l.strip_prefix(&format!("upgrade-failed {old} "))
                        .map(|r| Err(r.to_owned()))
                }
            })
        })
    }

    /// Upgrade that must succeed: waits until the new process serves and the old one exited.
    pub fn upgrade_ok(&self) -> u32 {
        let old = self.pid().expect("serving pid");
        let new = self
            .upgrade()
            .unwrap_or_else(|e| panic!("upgrade failed: {e}\nlog:\n{}", self.log()));
        self.wait_pid_file(new);
        wait_exit(old, DEADLINE);
        new
    }

    /// The server family's log, without terminal colour codes.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every pid this server family reported (servers, new processes, spawned children), and
    /// every pid the pid file named.
    pub fn all_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.first_pid];
        let _ = self.pid();
        pids.extend(
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied(),
        );
        for line in self.events() {
            let w: Vec<&str> = line.split(' ').collect();
            let take = match w.first().copied() {
                Some("upgraded" | "spawned") => 3,
                Some("upgrade-failed") if w.get(2) == Some(&"timeout") => 4,
                _ => 2,
            };
            for (i, word) in w.iter().enumerate().take(take).skip(1) {
                if i == 2 && w[0] == "upgrade-failed" {
                    continue;
                }
                if let Ok(p) = word.parse::<u32>() {
                    pids.push(p);
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// Pids of the processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- server log ---\n{}\n--- events ---\n{}",
                self.log(),
                self.events().join("\n")
            );
        }
        // Every process of this family carries our event log path in its environment: the
        // generations we saw, processes they were starting, and any that an upgrade started
        // after we looked (re-parented to this test process, the subreaper, once its parent
        // is killed). Kill until none is left.
        let marker = format!("TS_EVENTS={}", self.events.display());
        let ours = |pid: u32| environ(pid).contains(&marker);
        let end = Instant::now() + DEADLINE;
        loop {
            let mut pids = self.all_pids();
            let mut i = 0;
            while i < pids.len() {
                for child in children_of(pids[i]) {
                    if !pids.contains(&child) {
                        pids.push(child);
                    }
                }
                i += 1;
            }
            pids.extend(
                children_of(std::process::id())
                    .into_iter()
                    .filter(|&p| ours(p)),
            );
            pids.retain(|&p| alive(p));
            if pids.is_empty() || Instant::now() > end {
                break;
            }
            for &pid in &pids {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            for &pid in &pids {
                while alive(pid) && Instant::now() < end {
                    std::thread::park_timeout(Duration::from_millis(5));
                }
            }
        }
    }
}

/// Writes `line` to a file, for tests that need a marker on disk.
pub fn write_file(path: &Path, line: &str) {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap();
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The descriptor count once it holds still: the same in two looks 20 ms apart. A file the
/// server opens for a moment (its event log) is not counted; a leaked descriptor is.
pub fn settled_fd_count(pid: u32) -> usize {
    let mut last = fd_count(pid);
    wait_for("the descriptor count to settle", DEADLINE, || {
        std::thread::park_timeout(Duration::from_millis(20));
        let now = fd_count(pid);
        let same = now == last;
        last = now;
        same.then_some(now)
    })
}
