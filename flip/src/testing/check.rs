//! The upgrade check: load, upgrades, and what was lost.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::load::{Load, LoadConfig, Mode, Report};
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

/// What a check saw.
#[derive(Debug)]
pub struct CheckReport {
    /// The process serving when the check began.
    pub first_pid: u32,
    /// How the clients used connections.
    pub mode: Mode,
    /// How upgrades were asked for.
    pub via: Via,
    /// How long the check ran.
    pub duration: Duration,
    /// When it began (the load's timestamps are on the same clock).
    pub started: Instant,
    /// What the clients saw.
    pub load: Report,
    /// Each upgrade.
    pub upgrades: Vec<UpgradeTiming>,
    /// What the gRPC clients saw, with [`Check::grpc`].
    #[cfg(feature = "testing-grpc")]
    pub grpc: Option<super::grpc::GrpcReport>,
}

/// p50 and p99 of `v` (sorted here).
fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort_unstable();
    let at = |p: f64| {
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        v[i.min(v.len() - 1)]
    };
    (at(0.5), at(0.99))
}

impl CheckReport {
    /// Nothing was lost: no request failed, no keep-alive connection was closed under a
    /// request, and every upgrade succeeded.
    pub fn lossless(&self) -> bool {
        #[cfg(feature = "testing-grpc")]
        let grpc_lost = self.grpc.as_ref().is_some_and(|g| g.failed > 0);
        #[cfg(not(feature = "testing-grpc"))]
        let grpc_lost = false;
        self.load.failed == 0
            && self.load.idle_close_races == 0
            && self.failed_upgrades() == 0
            && !grpc_lost
    }

    /// Upgrades that did not succeed.
    pub fn failed_upgrades(&self) -> usize {
        self.upgrades.iter().filter(|u| u.error.is_some()).count()
    }

    /// (start, end) of each upgrade, on the load's clock: from the request to the old
    /// process's exit (or the end of the wait).
    pub fn windows(&self) -> Vec<(Instant, Instant)> {
        self.upgrades
            .iter()
            .map(|u| {
                let start = self.started + u.at;
                let end = u.to_old_exit.or(u.to_ready).unwrap_or(Duration::ZERO);
                (start, start + end)
            })
            .collect()
    }

    /// Latency p50 and p99 of short requests outside upgrades, then during them.
    pub fn latency(&self) -> ((Duration, Duration), (Duration, Duration)) {
        let windows = self.windows();
        let (mut during, mut outside) = (Vec::new(), Vec::new());
        for (start, latency) in &self.load.latencies {
            if windows.iter().any(|(a, b)| start >= a && start <= b) {
                during.push(*latency);
            } else {
                outside.push(*latency);
            }
        }
        (percentiles(&mut outside), percentiles(&mut during))
    }

    /// SIGHUP (or request) to ready, p50 and p99; then to the predecessor's exit.
    pub fn upgrade_times(&self) -> ((Duration, Duration), (Duration, Duration)) {
        let mut ready: Vec<Duration> = self.upgrades.iter().filter_map(|u| u.to_ready).collect();
        let mut exit: Vec<Duration> = self.upgrades.iter().filter_map(|u| u.to_old_exit).collect();
        (percentiles(&mut ready), percentiles(&mut exit))
    }

    /// How the new processes were started, with how many upgrades each (`standby`, `fresh:
    /// <why>`), most first; empty when the server did not say (upgrades by signal).
    pub fn starts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for start in self.upgrades.iter().filter_map(|u| u.started.as_deref()) {
            match counts.iter_mut().find(|(s, _)| s == start) {
                Some((_, n)) => *n += 1,
                None => counts.push((start.to_owned(), 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let f = &self.load.failures;
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
        let ((out50, out99), (dur50, dur99)) = self.latency();
        let ((r50, r99), (e50, e99)) = self.upgrade_times();
        let upgrades: Vec<String> = self
            .upgrades
            .iter()
            .map(|u| {
                format!(
                    "{{\"old_pid\":{},\"new_pid\":{},\"to_ready_ms\":{},\"to_old_exit_ms\":{},\"started\":{},\"error\":{}}}",
                    u.old_pid,
                    u.new_pid.map_or("null".into(), |p| p.to_string()),
                    u.to_ready.map_or("null".into(), ms),
                    u.to_old_exit.map_or("null".into(), ms),
                    u.started.as_deref().map_or("null".into(), json_string),
                    u.error.as_deref().map_or("null".into(), json_string),
                )
            })
            .collect();
        #[cfg(feature = "testing-grpc")]
        let grpc = match &self.grpc {
            Some(g) => format!(
                ",\"grpc\":{{\"answered\":{},\"failed\":{},\"retried_unprocessed\":{}}}",
                g.answered, g.failed, g.retried
            ),
            None => String::new(),
        };
        #[cfg(not(feature = "testing-grpc"))]
        let grpc = String::new();
        format!(
            "{{\"lossless\":{},\"mode\":\"{}\",\"via\":\"{}\",\"duration_ms\":{},\"answered\":{},\"failed\":{},\"failures\":{{\"refused\":{},\"eof_before_response\":{},\"bad_status\":{},\"reset_or_cut\":{}}},\"keepalive_close_races\":{},\"upgrades_succeeded\":{},\"upgrades_failed\":{},\"to_ready_ms\":{{\"p50\":{},\"p99\":{}}},\"to_old_exit_ms\":{{\"p50\":{},\"p99\":{}}},\"latency_outside_ms\":{{\"p50\":{},\"p99\":{}}},\"latency_during_ms\":{{\"p50\":{},\"p99\":{}}},\"upgrades\":[{}]{}}}",
            self.lossless(),
            mode_name(self.mode),
            via_name(self.via),
            ms(self.duration),
            self.load.answered,
            self.load.failed,
            f.connect,
            f.no_response,
            f.bad_status,
            f.other,
            self.load.idle_close_races,
            self.upgrades.len() - self.failed_upgrades(),
            self.failed_upgrades(),
            ms(r50),
            ms(r99),
            ms(e50),
            ms(e99),
            ms(out50),
            ms(out99),
            ms(dur50),
            ms(dur99),
            upgrades.join(","),
            grpc
        )
    }

    /// A timeline a browser shows: latency of each request over time, one mark per upgrade,
    /// failures in red.
    pub fn to_svg(&self) -> String {
        super::plot::svg(self)
    }

    /// Writes [`to_svg`](CheckReport::to_svg) to `path`.
    pub fn write_svg(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_svg())
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Close => "close",
        Mode::KeepAlive => "keepalive",
    }
}

fn via_name(via: Via) -> &'static str {
    match via {
        Via::Control => "control",
        Via::Signal => "signal",
    }
}

/// `s` as a JSON string literal, quoted and escaped.
pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.load;
        let fl = &l.failures;
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        let ((out50, out99), (dur50, dur99)) = self.latency();
        let ((r50, r99), (e50, e99)) = self.upgrade_times();
        writeln!(
            f,
            "{}: {} upgrades ({} failed) in {:.1} s, {} mode, via {}",
            if self.lossless() {
                "LOSSLESS"
            } else {
                "LOST REQUESTS"
            },
            self.upgrades.len(),
            self.failed_upgrades(),
            self.duration.as_secs_f64(),
            mode_name(self.mode),
            via_name(self.via),
        )?;
        writeln!(
            f,
            "requests: {} answered, {} failed (refused {}, EOF before a response {}, bad status {}, reset or cut short {}), {} keep-alive close races",
            l.answered,
            l.failed,
            fl.connect,
            fl.no_response,
            fl.bad_status,
            fl.other,
            l.idle_close_races
        )?;
        writeln!(
            f,
            "upgrade to ready: p50 {} p99 {}; to old process exit: p50 {} p99 {}",
            ms(r50),
            ms(r99),
            ms(e50),
            ms(e99)
        )?;
        let starts = self.starts();
        if !starts.is_empty() {
            let list: Vec<String> = starts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            writeln!(f, "new processes started: {}", list.join(", "))?;
        }
        write!(
            f,
            "latency: outside upgrades p50 {} p99 {}; during upgrades p50 {} p99 {}",
            ms(out50),
            ms(out99),
            ms(dur50),
            ms(dur99)
        )?;
        #[cfg(feature = "testing-grpc")]
        if let Some(g) = &self.grpc {
            write!(
                f,
                "\ngrpc: {} calls answered, {} failed, {} never processed by the server and retried (gRPC transparent retry)",
                g.answered, g.failed, g.retried
            )?;
            for e in &g.errors {
                write!(f, "\ngrpc error: {e}")?;
            }
        }
        for u in self.upgrades.iter().filter(|u| u.error.is_some()) {
            write!(
                f,
                "\nupgrade of {} failed: {}",
                u.old_pid,
                u.error.as_deref().unwrap_or("")
            )?;
        }
        Ok(())
    }
}
