//! The upgrade check: load, upgrades, and what was lost.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::load::{Load, LoadConfig, Mode};
use super::report::CheckReport;
use super::{alive, read_pid};
use crate::control::Client;

/// How the check asks for each upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through the control socket (`flip upgrade`): the server reports when the successor
    /// was ready.
    Control,
    /// `SIGHUP` to the pid the pid file names, then the pid file followed: works for servers
    /// built on anything that writes a pid file, for comparisons.
    Signal,
}

/// What went wrong before the check could measure anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The pid file does not name a running process.
    #[error("the pid file {0} names no running process")]
    NoServer(PathBuf),
    /// Nothing answers HTTP at the address.
    #[error("nothing answers HTTP at {0}")]
    NoHttp(String),
    /// The address is not on loopback.
    #[error("{0} is not a loopback address: the check sends traffic to this machine only")]
    NotLoopback(String),
}

/// One upgrade, as the check saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeTiming {
    /// The process upgraded from.
    pub old_pid: u32,
    /// The successor, when the upgrade succeeded.
    pub new_pid: Option<u32>,
    /// From the request (or `SIGHUP`) to the successor's readiness.
    pub to_ready: Option<Duration>,
    /// From the request to the predecessor's exit.
    pub to_old_exit: Option<Duration>,
    /// Why the upgrade failed, if it did.
    pub error: Option<String>,
    /// When it was asked for, from the start of the check.
    pub at: Duration,
    /// How the server started the successor (`standby`, or `fresh: ` and why), as it said
    /// through the control socket; `None` with [`Via::Signal`].
    pub started: Option<String>,
}

/// The check to run. Defaults: 20 upgrades 200 ms apart, 16 clients, a new connection per
/// request, through the control socket, 60 s for each upgrade.
#[derive(Debug, Clone)]
pub struct Check {
    pid_file: PathBuf,
    http: Option<String>,
    #[cfg(feature = "testing-grpc")]
    grpc: Option<String>,
    upgrades: usize,
    conns: usize,
    mode: Mode,
    slow_path: Option<String>,
    via: Via,
    control: Option<PathBuf>,
    interval: Duration,
    timeout: Duration,
}

impl Check {
    /// A check of the server whose pid file is `pid_file`, serving HTTP at `http`.
    pub fn new(pid_file: impl Into<PathBuf>, http: &str) -> Check {
        Check {
            http: Some(http.to_owned()),
            ..Check::without_http(pid_file)
        }
    }

    /// A check that upgrades the server whose pid file is `pid_file` and drives no HTTP load
    /// (add gRPC load with `grpc`, feature `testing-grpc`).
    pub fn without_http(pid_file: impl Into<PathBuf>) -> Check {
        Check {
            pid_file: pid_file.into(),
            http: None,
            #[cfg(feature = "testing-grpc")]
            grpc: None,
            upgrades: 20,
            conns: 16,
            mode: Mode::Close,
            slow_path: None,
            via: Via::Control,
            control: None,
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(60),
        }
    }

    /// Also drives gRPC load (health checks, plain text) at `addr`, with as many clients as
    /// [`conns`](Check::conns) says.
    #[cfg(feature = "testing-grpc")]
    pub fn grpc(mut self, addr: &str) -> Check {
        self.grpc = Some(addr.to_owned());
        self
    }

    /// How many upgrades.
    pub fn upgrades(mut self, n: usize) -> Check {
        self.upgrades = n;
        self
    }

    /// How many clients of short requests (`GET /`).
    pub fn conns(mut self, n: usize) -> Check {
        self.conns = n;
        self
    }

    /// A new connection per request, or keep-alive.
    pub fn mode(mut self, mode: Mode) -> Check {
        self.mode = mode;
        self
    }

    /// Adds clients (a quarter as many as short ones, at least one) that request `path`, a
    /// slow endpoint, so that requests are in flight at every upgrade.
    pub fn slow_path(mut self, path: &str) -> Check {
        self.slow_path = Some(path.to_owned());
        self
    }

    /// How upgrades are asked for (default [`Via::Control`]).
    pub fn via(mut self, via: Via) -> Check {
        self.via = via;
        self
    }

    /// The control socket, when it is not beside the pid file.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Check {
        self.control = Some(path.into());
        self
    }

    /// Pause between upgrades.
    pub fn interval(mut self, interval: Duration) -> Check {
        self.interval = interval;
        self
    }

    /// How long each upgrade, and the predecessor's exit, may take.
    pub fn timeout(mut self, timeout: Duration) -> Check {
        self.timeout = timeout;
        self
    }

    /// Runs the check. Returns an error only when there is nothing to check; everything that
    /// went wrong during the check is in the report.
    pub fn run(&self) -> Result<CheckReport, CheckError> {
        let mut targets: Vec<&String> = self.http.iter().collect();
        #[cfg(feature = "testing-grpc")]
        targets.extend(self.grpc.iter());
        for addr in &targets {
            let loopback = addr.starts_with("127.")
                || addr.starts_with("[::1]")
                || addr.starts_with("localhost:");
            if !loopback {
                return Err(CheckError::NotLoopback((*addr).clone()));
            }
            if std::net::TcpStream::connect(addr.as_str()).is_err() {
                return Err(CheckError::NoHttp((*addr).clone()));
            }
        }
        let first = read_pid(&self.pid_file)
            .filter(|&p| alive(p))
            .ok_or_else(|| CheckError::NoServer(self.pid_file.clone()))?;
        let per_upgrade = self.interval + self.timeout * 2;
        let limit = per_upgrade * (self.upgrades as u32 + 1) + Duration::from_secs(30);
        let started = Instant::now();
        let load = self.http.as_ref().map(|http| {
            let mut config = LoadConfig::new(http, self.conns, self.mode)
                .limit(limit)
                .record_latencies();
            if let Some(path) = &self.slow_path {
                config = config.slow((self.conns / 4).max(1), path);
            }
            Load::run(config)
        });
        #[cfg(feature = "testing-grpc")]
        let grpc = match &self.grpc {
            Some(addr) => Some(
                super::grpc::GrpcLoad::start(addr, self.conns, limit)
                    .map_err(|e| CheckError::NoHttp(format!("{addr}: {e}")))?,
            ),
            None => None,
        };
        if let Some(load) = &load {
            let _ = load.wait_for_more(100, Duration::from_secs(5));
        }
        let mut upgrades = Vec::with_capacity(self.upgrades);
        for _ in 0..self.upgrades {
            std::thread::sleep(self.interval);
            upgrades.push(self.upgrade(started));
        }
        let load = load.map(Load::finish).unwrap_or_default();
        Ok(CheckReport {
            #[cfg(feature = "testing-grpc")]
            grpc: grpc.map(super::grpc::GrpcLoad::finish),
            first_pid: first,
            mode: self.mode,
            via: self.via,
            duration: started.elapsed(),
            started,
            load,
            upgrades,
        })
    }

    fn upgrade(&self, started: Instant) -> UpgradeTiming {
        let t0 = Instant::now();
        let old = read_pid(&self.pid_file).unwrap_or(0);
        let mut timing = UpgradeTiming {
            old_pid: old,
            new_pid: None,
            to_ready: None,
            to_old_exit: None,
            error: None,
            at: t0 - started,
            started: None,
        };
        match self.via {
            Via::Control => {
                let client = match &self.control {
                    Some(path) => Client::new(path),
                    None => Client::for_pid_file(&self.pid_file),
                };
                match client.upgrade(self.timeout) {
                    Ok(done) => {
                        timing.old_pid = done.old_pid;
                        timing.new_pid = Some(done.new_pid);
                        timing.to_ready = Some(done.ready_after);
                        timing.started = done.started;
                    }
                    Err(e) => timing.error = Some(crate::error::Chain(&e).to_string()),
                }
            }
            Via::Signal => {
                let sent =
                    crate::sys::process::send_signal(old as i32, crate::sys::process::SIGHUP);
                if let Err(e) = sent {
                    timing.error = Some(format!("kill -HUP {old}: {e}"));
                    return timing;
                }
                let mut new = None;
                let changed = super::load::wait_until(self.timeout, || {
                    new = read_pid(&self.pid_file).filter(|&p| p != old);
                    new.is_some()
                });
                if changed {
                    timing.new_pid = new;
                    timing.to_ready = Some(t0.elapsed());
                } else {
                    timing.error = Some(format!(
                        "the pid file still names {old} after {:?}",
                        self.timeout
                    ));
                }
            }
        }
        if timing.error.is_none() && super::load::wait_until(self.timeout, || !alive(old)) {
            timing.to_old_exit = Some(t0.elapsed());
        }
        timing
    }
}
