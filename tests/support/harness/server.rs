//! A server process under test: started with a scratch directory, its log and events, its
//! generations, and stopped (with every descendant) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::*;

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
        let pid = pid_in(&self.pid_file)?;
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

    /// Upgrade that must succeed: waits until the successor serves and the old one exited.
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
        // after we looked (re-parented to this test process, the subreaper, once its predecessor
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
            // Only our family: a pid file may name anyone (a test writes a foreign pid there).
            pids.retain(|&p| alive(p) && ours(p));
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
