//! HTTP load: blocking clients, bounded in time, counting every failure by kind. One client per
//! thread, each with its own connection; short requests to `/`, and optionally slow clients on
//! another path. Point it at loopback (or your own test hosts) only.
//!
//! The server answers `GET /` with a body that ends in its pid, as `hello from <pid>` (the
//! examples do): the report says which processes answered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new connection per request (`Connection: close`).
    Close,
    /// One connection for many requests, reconnecting when the server says `Connection: close`.
    KeepAlive,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    addr: String,
    clients: usize,
    mode: Mode,
    slow_clients: usize,
    slow_path: String,
    limit: Duration,
    latencies: bool,
}

impl LoadConfig {
    /// `clients` clients of short requests (`GET /`) at `addr`; no slow clients; a limit of
    /// 120 s; no latency samples.
    pub fn new(addr: &str, clients: usize, mode: Mode) -> LoadConfig {
        LoadConfig {
            addr: addr.to_owned(),
            clients,
            mode,
            slow_clients: 0,
            slow_path: "/sleep/200".into(),
            limit: Duration::from_secs(120),
            latencies: false,
        }
    }

    /// Adds `n` clients that request `path` instead (slow requests, such as `/sleep/200`).
    pub fn slow(mut self, n: usize, path: &str) -> LoadConfig {
        self.slow_clients = n;
        self.slow_path = path.to_owned();
        self
    }

    /// The clients stop by themselves after this long, stopped or not.
    pub fn limit(mut self, limit: Duration) -> LoadConfig {
        self.limit = limit;
        self
    }

    /// Records when each short request started and how long it took.
    pub fn record_latencies(mut self) -> LoadConfig {
        self.latencies = true;
        self
    }
}

/// Failed requests, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    /// The connection was refused (or could not be made).
    pub connect: u64,
    /// The request was sent on a new connection, and it closed without a response.
    pub no_response: u64,
    /// A response whose status was not 200.
    pub bad_status: u64,
    /// A response cut short, or not the server's greeting.
    pub other: u64,
}

impl Failures {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.connect + self.no_response + self.bad_status + self.other
    }

    fn add(&mut self, o: Failures) {
        self.connect += o.connect;
        self.no_response += o.no_response;
        self.bad_status += o.bad_status;
        self.other += o.other;
    }
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests that got a whole `200` response.
    pub answered: u64,
    /// Every failed request (the sum of `failures`).
    pub failed: u64,
    /// Failed requests, by kind.
    pub failures: Failures,
    /// A reused keep-alive connection closed without answering the request sent on it: the
    /// race between a server closing an idle connection and the client's next request, which
    /// HTTP clients retry for idempotent requests. Counted apart from failures.
    pub idle_close_races: u64,
    /// Every pid that answered (`hello from <pid>`), sorted.
    pub pids: Vec<u32>,
    /// (start, latency) of each short request answered, with
    /// [`LoadConfig::record_latencies`].
    pub latencies: Vec<(Instant, Duration)>,
    /// When each failed request started, with [`LoadConfig::record_latencies`].
    pub failure_times: Vec<Instant>,
}

impl Report {
    fn add(&mut self, o: Report) {
        self.answered += o.answered;
        self.failures.add(o.failures);
        self.failed = self.failures.total();
        self.idle_close_races += o.idle_close_races;
        for pid in o.pids {
            if !self.pids.contains(&pid) {
                self.pids.push(pid);
            }
        }
        self.latencies.extend(o.latencies);
        self.failure_times.extend(o.failure_times);
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    paused: AtomicBool,
    /// Clients waiting while paused.
    parked: AtomicUsize,
    answered: AtomicU64,
}

/// Load running in the background until [`Load::finish`].
pub struct Load {
    shared: Arc<Shared>,
    clients: Vec<std::thread::JoinHandle<Report>>,
}

/// How one exchange ended.
enum Outcome {
    Ok { close: bool, pid: Option<u32> },
    NoResponse,
    BadStatus,
    Other,
}

/// Sends `GET path` on `conn` and reads the whole response.
fn exchange(conn: &mut BufReader<TcpStream>, path: &str, keep_alive: bool) -> Outcome {
    let header = if keep_alive { "keep-alive" } else { "close" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {header}\r\n\r\n");
    if conn.get_mut().write_all(request.as_bytes()).is_err() {
        return Outcome::NoResponse;
    }
    let mut status = String::new();
    match conn.read_line(&mut status) {
        Ok(0) | Err(_) => return Outcome::NoResponse,
        Ok(_) if !status.starts_with("HTTP/1.1 200") => return Outcome::BadStatus,
        Ok(_) => {}
    }
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        match conn.read_line(&mut line) {
            Ok(0) | Err(_) => return Outcome::Other,
            Ok(_) => {}
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        close |= line == "connection: close";
    }
    let mut body = vec![0; length];
    if conn.read_exact(&mut body).is_err() {
        return Outcome::Other;
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return Outcome::Other;
    };
    // The pid a server puts at the end of its answer (`hello from <pid>`), if it does.
    let pid = text.trim().rsplit(' ').next().and_then(|p| p.parse().ok());
    Outcome::Ok { close, pid }
}

fn client(addr: String, path: String, config: LoadConfig, shared: Arc<Shared>) -> Report {
    let keep_alive = config.mode == Mode::KeepAlive;
    let short = path == "/";
    let end = Instant::now() + config.limit;
    let mut report = Report::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < end {
        if shared.paused.load(Ordering::SeqCst) {
            conn = None; // a paused client holds no connection
            shared.parked.fetch_add(1, Ordering::SeqCst);
            while shared.paused.load(Ordering::SeqCst) && Instant::now() < end {
                std::thread::park_timeout(Duration::from_millis(1));
            }
            shared.parked.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let started = Instant::now();
        let reused = conn.is_some();
        let mut c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(&addr) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    BufReader::new(s)
                }
                Err(_) => {
                    report.failures.connect += 1;
                    if config.latencies {
                        report.failure_times.push(started);
                    }
                    continue;
                }
            },
        };
        let outcome = exchange(&mut c, &path, keep_alive);
        if config.latencies && !matches!(outcome, Outcome::Ok { .. }) {
            report.failure_times.push(started);
        }
        match outcome {
            Outcome::Ok { close, pid } => {
                report.answered += 1;
                shared.answered.fetch_add(1, Ordering::Relaxed);
                if config.latencies && short {
                    report.latencies.push((started, started.elapsed()));
                }
                if let Some(pid) = pid
                    && !report.pids.contains(&pid)
                {
                    report.pids.push(pid);
                }
                if keep_alive && !close {
                    conn = Some(c);
                }
            }
            Outcome::NoResponse if reused => report.idle_close_races += 1,
            Outcome::NoResponse => report.failures.no_response += 1,
            Outcome::BadStatus => report.failures.bad_status += 1,
            Outcome::Other => report.failures.other += 1,
        }
    }
    report.failed = report.failures.total();
    report
}

impl Load {
    /// `clients` clients of short requests at `addr`.
    pub fn start(addr: &str, clients: usize, mode: Mode) -> Load {
        Load::run(LoadConfig::new(addr, clients, mode))
    }

    /// Starts the clients `config` describes.
    pub fn run(config: LoadConfig) -> Load {
        let shared = Arc::new(Shared::default());
        let paths = std::iter::repeat_n("/".to_owned(), config.clients).chain(std::iter::repeat_n(
            config.slow_path.clone(),
            config.slow_clients,
        ));
        let clients = paths
            .map(|path| {
                let (addr, config, shared) = (config.addr.clone(), config.clone(), shared.clone());
                std::thread::spawn(move || client(addr, path, config, shared))
            })
            .collect();
        Load { shared, clients }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests were answered; `false` if that took longer than
    /// `deadline`.
    pub fn wait_for_more(&self, n: u64, deadline: Duration) -> bool {
        let target = self.answered() + n;
        wait_until(deadline, || self.answered() >= target)
    }

    /// Runs `f` while every client waits with no connection open, and returns what it
    /// returned; `None` (and `f` not run) when the clients did not all pause within
    /// `deadline`.
    pub fn paused<T>(&self, deadline: Duration, f: impl FnOnce() -> T) -> Option<T> {
        self.shared.paused.store(true, Ordering::SeqCst);
        let n = self.clients.len();
        let parked = wait_until(deadline, || self.shared.parked.load(Ordering::SeqCst) == n);
        let out = parked.then(f);
        self.shared.paused.store(false, Ordering::SeqCst);
        out
    }

    /// Stops the clients and adds up what they saw.
    pub fn finish(self) -> Report {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut total = Report::default();
        for c in self.clients {
            // A client that panicked (it cannot: it only counts) adds nothing.
            if let Ok(r) = c.join() {
                total.add(r);
            }
        }
        total.pids.sort_unstable();
        total
    }
}

/// Polls `done` until it holds or `deadline` passed; whether it held.
pub(crate) fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_micros(100);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::park_timeout(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}
